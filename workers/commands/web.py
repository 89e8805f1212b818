"""The HTTP side: `clearmark api` (the storefront API) and `clearmark flower` (operators'
view of the broker). Neither loads the models."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from clearmark.settings import get_settings
from clearmark.workers.commands.deferred import deferred

if TYPE_CHECKING:
    import uvicorn

    from clearmark.workers import slow_clients
else:
    uvicorn = deferred("uvicorn")
    slow_clients = deferred("clearmark.workers.slow_clients")


@click.command()
@click.option("--host", help="Interface to listen on (default CLEARMARK_API_HOST, 127.0.0.1).")
@click.option("--port", type=int, help="Port (default CLEARMARK_API_PORT, 8000).")
@click.option(
    "--workers",
    "processes",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="uvicorn worker processes.",
)
def api(host: str | None, port: int | None, processes: int) -> None:
    """Serve the storefront HTTP API (OpenAPI document at /v1/openapi.json)."""
    settings = get_settings()
    uvicorn.run(
        "clearmark.workers.api:app",
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=processes,
        proxy_headers=True,
        http=slow_clients.DeadlineH11Protocol,
    )


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--port", default=5555, show_default=True)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on (0.0.0.0: every interface; keep Flower internal).",
)
@click.option(
    "--auth-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File whose first line is USER:PASSWORD (else CLEARMARK_FLOWER_AUTH).",
)
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(port: int, address: str, auth_file: Path | None, flower_args: tuple[str, ...]) -> None:
    """Run Flower (live tasks, workers, retry) on the configured broker; needs the `ops`
    extra. Basic auth is required: USER:PASSWORD from --auth-file or CLEARMARK_FLOWER_AUTH,
    handed to Flower in its environment, never on a command line that `ps` shows. Extra
    arguments go to Flower (e.g. --url_prefix=flower)."""
    if importlib.util.find_spec("flower") is None:
        raise click.ClickException(
            "Flower is not installed: install the ops extra "
            "(.venv/bin/pip install -e '.[ops]' -c constraints.txt)"
        )
    if any(arg.startswith("--basic") for arg in flower_args):
        raise click.ClickException(
            "a password on the command line shows in `ps`: use --auth-file or CLEARMARK_FLOWER_AUTH"
        )
    if auth_file:
        lines = auth_file.read_text().splitlines()
        auth = lines[0].strip() if lines else ""
    else:
        auth = os.environ.get("CLEARMARK_FLOWER_AUTH", "")
    if ":" not in auth:
        raise click.ClickException("give USER:PASSWORD in --auth-file or CLEARMARK_FLOWER_AUTH")
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "clearmark.workers.celery_app",
        "flower",
        f"--port={port}",
        f"--address={address}",
        *flower_args,
    ]
    os.execve(sys.executable, argv, {**os.environ, "FLOWER_BASIC_AUTH": auth})
