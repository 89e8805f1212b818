"""compose.yaml: the full stack, a start-up order that holds, and clearmark commands that
parse. The API and webhook-worker commands are the ones test_api/test_webhooks run
(through `compose_command`); `db upgrade` is what every migrated test database goes through."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from clearmark.workers.cli import cli

COMPOSE = yaml.safe_load((Path(__file__).resolve().parent.parent / "compose.yaml").read_text())
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


def test_the_full_stack_is_there():
    assert {
        "redis",
        "postgres",
        "minio",
        "minio-init",
        "migrate",
        "api",
        "worker-uploads",
        "worker-bulk",
        "worker-webhooks",
        "flower",
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
    for name in ("api", "worker-uploads", "worker-bulk", "worker-webhooks", "flower"):
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "test" in SERVICES[name]["healthcheck"], name

    def deps(name, seen=()):
        assert name not in seen, f"dependency cycle through {name}"
        for dep in SERVICES[name].get("depends_on") or {}:
            deps(dep, (*seen, name))

    for name in SERVICES:
        deps(name)


def test_clearmark_commands_parse():
    commands = {
        name: s["command"]
        for name, s in SERVICES.items()
        if s.get("image") == "clearmark:latest" and "command" in s
    }
    assert set(commands) >= {
        "migrate",
        "api",
        "worker-uploads",
        "worker-bulk",
        "worker-webhooks",
        "beat",
        "flower",
    }
    for name, args in commands.items():
        ctx = parse(args)
        assert ctx.command.name in {"upgrade", "api", "worker", "beat", "flower"}, name
    assert compose_command("migrate") == ["db", "upgrade"]
    for name in ("api", "worker-uploads", "worker-bulk", "worker-webhooks", "beat", "flower"):
        assert SERVICES[name]["restart"] == "on-failure", name  # a worker that exits 1 comes back
    webhooks = parse(compose_command("worker-webhooks")).params
    assert webhooks["queues"] == "clearmark.webhooks" and webhooks["pool"] == "threads"
    assert parse(compose_command("api", {"--port": "9999"})).params["port"] == 9999


def test_no_default_storage_password_and_no_public_console():
    """MinIO's root password must be given (no default anyone can look up), and its console
    listens on the host's loopback only."""
    text = (Path(__file__).resolve().parent.parent / "compose.yaml").read_text()
    assert "clearmark-secret" not in text
    for env in (SERVICES["minio"]["environment"], SERVICES["minio-init"]["environment"]):
        assert env["MINIO_ROOT_PASSWORD"] == "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD}"
    secret = SERVICES["api"]["environment"]["AWS_SECRET_ACCESS_KEY"]
    assert secret.startswith("${MINIO_ROOT_PASSWORD:?")
    assert all(str(port).startswith("127.0.0.1:") for port in SERVICES["minio"]["ports"])
