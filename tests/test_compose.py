"""compose.yaml: the full stack, a start-up order that holds, and clearmark commands that
parse. The API and webhook-worker commands are the ones test_api/test_webhooks run
(through `compose_command`); `db upgrade` is what every migrated test database goes through."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import click
import yaml

from clearmark.workers.cli import cli

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_TEXT = (ROOT / "compose.yaml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def compose_command(service: str, replace: dict[str, str] | None = None) -> list[str]:
    """The service's `clearmark` arguments, with the values of the options named in
    `replace` swapped (a test's own host, port or queue names)."""
    args = list(SERVICES[service]["command"])
    for option, value in (replace or {}).items():
        args[args.index(option) + 1] = value
    return args


def parse(args: list[str]) -> click.Context:
    """Parse a clearmark command line down to its leaf command, without running it."""
    ctx = cli.make_context("clearmark", list(args))
    while isinstance(ctx.command, click.Group):
        name, command, rest = ctx.command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


IMAGES = {"clearmark:latest": "Dockerfile", "clearmark-gpu:latest": "Dockerfile.gpu"}
IMAGE_WORKERS = {"cpu": ("worker-uploads", "worker-bulk"), "gpu": ("worker-uploads-gpu", "worker-bulk-gpu")}
BUILDS = {"cpu": "build-engines", "gpu": "build-engines-gpu"}


def test_the_full_stack_is_there():
    assert {
        "redis",
        "postgres",
        "minio",
        "minio-init",
        "migrate",
        "build-engines",
        "api",
        "worker-uploads",
        "worker-bulk",
        "worker-webhooks",
        "flower",
        "build-engines-gpu",
        "worker-uploads-gpu",
        "worker-bulk-gpu",
    } <= set(SERVICES)
    assert "pgdata:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    assert "local/clearmark" in " ".join(SERVICES["minio-init"]["entrypoint"])
    assert SERVICES["api"]["environment"]["CLEARMARK_STORAGE_URI"] == "s3://clearmark"
    assert "FLOWER_PASSWORD" in SERVICES["flower"]["environment"]["CLEARMARK_FLOWER_AUTH"]
    assert not any("FLOWER_PASSWORD" in arg for arg in SERVICES["flower"]["command"])


def test_start_up_order():
    for name, service in SERVICES.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in SERVICES, (name, dep)
            assert spec["condition"] in CONDITIONS, (name, dep)
            if spec["condition"] == "service_healthy":
                assert "test" in SERVICES[dep].get("healthcheck", {}), f"{dep} has no healthcheck"
            if spec["condition"] == "service_completed_successfully":
                assert SERVICES[dep].get("restart") == "no", dep
    assert set(SERVICES["migrate"]["depends_on"]) == {"postgres", "redis", "minio-init"}
    for name in ("api", "worker-webhooks", "flower", *IMAGE_WORKERS["cpu"], *IMAGE_WORKERS["gpu"]):
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "test" in SERVICES[name]["healthcheck"], name
    # The engines are built once, like the migration, before any worker that loads them.
    for profile, build in BUILDS.items():
        assert SERVICES[build]["command"] == ["engines", "build"] and SERVICES[build]["restart"] == "no"
        for name in IMAGE_WORKERS[profile]:
            assert SERVICES[name]["depends_on"][build]["condition"] == "service_completed_successfully"

    def deps(name, seen=()):
        assert name not in seen, f"dependency cycle through {name}"
        for dep in SERVICES[name].get("depends_on") or {}:
            deps(dep, (*seen, name))

    for name in SERVICES:
        deps(name)


def test_clearmark_commands_parse():
    commands = {
        name: s["command"] for name, s in SERVICES.items() if s.get("image") in IMAGES and "command" in s
    }
    assert set(commands) >= {
        "migrate",
        "build-engines",
        "api",
        "worker-uploads",
        "worker-bulk",
        "worker-webhooks",
        "beat",
        "flower",
        "build-engines-gpu",
        "worker-uploads-gpu",
        "worker-bulk-gpu",
    }
    for name, args in commands.items():
        ctx = parse(args)
        assert ctx.command.name in {"upgrade", "build", "api", "worker", "beat", "flower"}, name
    assert compose_command("migrate") == ["db", "upgrade"]
    for name in ("api", "worker-webhooks", "beat", "flower", *IMAGE_WORKERS["cpu"], *IMAGE_WORKERS["gpu"]):
        assert SERVICES[name]["restart"] == "on-failure", name  # a worker that exits 1 comes back
    webhooks = parse(compose_command("worker-webhooks")).params
    assert webhooks["queues"] == "clearmark.webhooks" and webhooks["pool"] == "threads"
    assert parse(compose_command("api", {"--port": "9999"})).params["port"] == 9999


def test_the_gpu_profile_runs_the_gpu_image_on_a_reserved_gpu():
    """Each profile has its engine build and its image-cleaning workers; only the gpu one
    reserves a GPU, on the image that has TensorRT. What needs no model runs in both."""
    gpu = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    for profile in ("cpu", "gpu"):
        image = "clearmark-gpu:latest" if profile == "gpu" else "clearmark:latest"
        for name in (BUILDS[profile], *IMAGE_WORKERS[profile]):
            service = SERVICES[name]
            assert service["profiles"] == [profile] and service["image"] == image, name
            assert IMAGES[image] == (service["build"]["dockerfile"] if profile == "gpu" else "Dockerfile")
            devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
            assert devices == ([gpu] if profile == "gpu" else None), name
    assert (
        SERVICES["worker-uploads-gpu"]["deploy"]["replicas"]
        == SERVICES["worker-uploads"]["deploy"]["replicas"]
    )
    for name in ("api", "migrate", "worker-webhooks", "beat", "flower"):
        assert "profiles" not in SERVICES[name], name
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    assert "nvidia/cuda:${CUDA_VERSION}-runtime" in dockerfile and '".[gpu,ops,s3]"' in dockerfile


def test_no_default_storage_password_and_no_public_console():
    """MinIO's root password must be given (no default anyone can look up), and its console
    listens on the host's loopback only."""
    assert "clearmark-secret" not in COMPOSE_TEXT
    for env in (SERVICES["minio"]["environment"], SERVICES["minio-init"]["environment"]):
        assert env["MINIO_ROOT_PASSWORD"] == "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD}"
    secret = SERVICES["api"]["environment"]["AWS_SECRET_ACCESS_KEY"]
    assert secret.startswith("${MINIO_ROOT_PASSWORD:?")
    assert all(str(port).startswith("127.0.0.1:") for port in SERVICES["minio"]["ports"])


def readme_compose_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index("### The whole stack with Docker Compose") : text.index("## HTTP API")]


def test_the_readme_compose_commands_get_every_required_password(tmp_path):
    """Run the README's compose block as written, up to each `docker compose` command (in a
    copy of the repository's root holding the script): every variable compose.yaml requires
    (`${NAME:?...}`) is set by then, on the command line or in the .env compose reads."""
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE_TEXT))
    assert required == {"FLOWER_PASSWORD", "MINIO_ROOT_PASSWORD"}
    block = readme_compose_section().split("```sh\n")[1].split("```")[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert sum("docker compose" in c for c in commands) >= 2
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "compose-env.sh", tmp_path / "scripts")
    env_file = tmp_path / ".env"

    def dotenv() -> dict[str, str]:
        lines = env_file.read_text().splitlines() if env_file.exists() else []
        return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))

    for command in commands:
        if "docker compose" in command:
            inline = set(re.findall(r"(\w+)=\S+ ", command.split("docker compose")[0]))
            given = inline | {name for name, value in dotenv().items() if value}
            assert required <= given, (command, sorted(required - given))
        else:
            subprocess.run(command, shell=True, cwd=tmp_path, check=True, capture_output=True)
    first = dotenv()
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert all(len(first[name]) >= 32 for name in required)  # random, not a placeholder

    # Run again: the passwords stay (MinIO's volume keeps its own); one missing is added, and
    # a line someone left without its newline stays whole.
    env_file.write_text(f"FLOWER_PASSWORD={first['FLOWER_PASSWORD']}\nFLOWER_USER=ops")
    subprocess.run(["bash", "scripts/compose-env.sh"], cwd=tmp_path, check=True, capture_output=True)
    again = dotenv()
    assert again["FLOWER_PASSWORD"] == first["FLOWER_PASSWORD"] and again["FLOWER_USER"] == "ops"
    minio = again["MINIO_ROOT_PASSWORD"]
    assert len(minio) >= 32 and minio != first["MINIO_ROOT_PASSWORD"]
    assert "/.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_published_ports_are_loopback_only_as_the_readme_says():
    """The API's and Flower's /metrics answer without a password: no port is published on
    every interface, and the README names exactly the ports compose publishes."""
    published = {name: [str(p) for p in s["ports"]] for name, s in SERVICES.items() if s.get("ports")}
    assert {"api", "flower", "minio"} <= set(published)
    assert all(p.startswith("127.0.0.1:") for ports in published.values() for p in ports), published
    section = readme_compose_section()
    sentence = section[section.index("Every published port") :].split(". ")[0]
    assert "loopback" in sentence
    readme_ports = set(re.findall(r"port (\d+)", sentence))
    assert readme_ports == {p.split(":")[1] for ports in published.values() for p in ports}


def test_the_readme_names_every_service():
    section = readme_compose_section()
    order = section[section.index("It starts, in this order") :]
    named = set(re.findall(r"`([a-z-]+)`", order))
    assert set(SERVICES) <= named, sorted(set(SERVICES) - named)
