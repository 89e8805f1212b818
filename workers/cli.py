"""The `clearmark` command line: the root group, with every command loaded on first use.

Start-up stays light (every `--help` well under a second): each command lives in a module
of `workers/commands/`, which imports what the command runs only when it runs
(`commands/deferred.py`), and this root imports a command's module only when that command
is used. `--help` shows the one-line help kept in COMMANDS (a test keeps it equal to each
command's own).
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from clearmark.settings import SettingsError, get_settings, set_settings

# name -> (module:attribute under clearmark.workers.commands, the one-line help).
COMMANDS = {
    "clean": ("local:clean", "Clean every image in IN_DIR into --out, in this process (no server needed)."),
    "submit": ("jobs:submit", "Upload images to storage and enqueue a job for each on the broker."),
    "bulk": (
        "jobs:bulk",
        "Import a folder or bucket prefix (any fsspec URI) as one batch on the bulk queue.",
    ),
    "reprocess": ("jobs:reprocess", "Queue finished jobs again, as a new batch on the bulk queue."),
    "batches": ("jobs:batches", "Batches (newest first) with their jobs by status."),
    "status": (
        "jobs:status",
        "Counts of jobs by status, the most recent failures, and (with a broker set) each "
        "queue's waiting tasks and the workers consuming it.",
    ),
    "report": (
        "jobs:report",
        "Write a self-contained HTML quality report: counts, failure reasons, latency "
        "percentiles, confidence and mask-area plots, before/after/mask thumbnails.",
    ),
    "review": ("review:review", "Jobs waiting for a person: residual or confidence in the review band."),
    "worker": ("service:worker", "Start a Celery worker on the configured broker (Redis by default)."),
    "reap": (
        "service:reap",
        "Queue again what would otherwise never finish: running jobs whose lease expired (or "
        "fail them after the last attempt), queued jobs and due webhooks with no task on the "
        "broker.",
    ),
    "beat": (
        "service:beat",
        "Run Celery beat: sends a reaper pass every CLEARMARK_REAP_INTERVAL_S (run exactly one).",
    ),
    "api": ("web:api", "Serve the storefront HTTP API (OpenAPI document at /v1/openapi.json)."),
    "flower": (
        "web:flower",
        "Run Flower (live tasks, workers, retry) on the configured broker; needs the `ops` extra.",
    ),
    "catalogue": (
        "catalogue:catalogue",
        "Catalogue marks: learn a seller's repeated mark from many photos, list, show, delete, eval.",
    ),
    "db": ("admin:db", "Database schema (Alembic migrations)."),
    "tenants": ("admin:tenants", "Tenants (storefronts), their API keys and reviewer keys."),
    "train": (
        "models:train_command",
        "Train the detector or the remover on synthetic watermarks; writes KIND.pt + manifest.",
    ),
    "eval": (
        "models:eval_command",
        "Evaluate the shipped models against two baselines on a held-out synthetic set.",
    ),
    "eval-real": (
        "models:eval_real_command",
        "Score the pipeline (decode to encode, gate included) on real product photos, marked "
        "and clean, against doing nothing and true-mask Telea: harm rate, clean photos "
        "changed, PSNR/SSIM, PSNR inside and outside the mark, mask F1, statuses, per style, "
        "with bootstrap 95% intervals.",
    ),
    "calibrate-suspects": (
        "models:calibrate_suspects_command",
        "Fit the suspect prior on the TRAIN split (training's mark styles) and choose its limit "
        "there: how likely each region the detector flags is a mark, from the detector's "
        "scores, the remover's second opinion and the gate's measurements (pipeline/calibrate.py).",
    ),
    "reproduce": (
        "models:reproduce_command",
        "Repeat the training run that made KIND.pt and check the result bit for bit.",
    ),
    "engines": ("engines:engines_group", "Export ONNX models and build TensorRT engines."),
    "config": (
        "config:config_command",
        "Show every setting, its value and its source (default, environment, file, override).",
    ),
    "bench": (
        "engines:bench_command",
        "Images per second and ms per image for detection and removal, per backend; with "
        "--pipeline, seconds per photo for the whole pipeline, stage by stage; with --jpeg, "
        "what writing a JPEG result costs and changes.",
    ),
}


class LazyGroup(click.Group):
    """A group whose COMMANDS are imported on first use, not at start-up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS and name not in self.commands:
            module, attr = COMMANDS[name][0].split(":")
            module = f"clearmark.workers.commands.{module}"
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        """Bad settings (a CLEARMARK_* variable out of range, contradicting another): one
        error line naming the variable and exit status 2, from whichever command loads them."""
        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            limit = formatter.width - 6 - len(name)
            if name in COMMANDS and name not in self.commands:
                stand_in = click.Command(name, help=COMMANDS[name][1])
                rows.append((name, stand_in.get_short_help_str(limit)))
            elif (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _setup_logging(verbosity: int) -> None:
    """Normal output is for people: without -v only warnings and errors are logged. The
    libraries' loggers are set too, not only the root's, so that their INFO lines (Alembic's
    "Running upgrade ...") stay away even where something else configured logging first."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("alembic").setLevel(level)
    # Alembic's "setup plugin ..." lines on every run say nothing about this database: -vv.
    logging.getLogger("alembic.runtime.plugins").setLevel(
        logging.DEBUG if verbosity >= 2 else logging.WARNING
    )


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clearmark")
@click.option(
    "--db",
    "database_url",
    envvar="CLEARMARK_DATABASE_URL",
    help="Database URL (default: SQLite under CLEARMARK_DATA_DIR, ./.clearmark).",
)
@click.option("-v", "--verbose", count=True, help="Log what happens (migrations, jobs): -v info, -vv debug.")
def cli(database_url: str | None, verbose: int) -> None:
    """clearmark: find and remove visible watermarks from product photos.

    Runs in-process with SQLite and local files (`clearmark clean`), or as a service:
    `clearmark submit` enqueues jobs on Redis, `clearmark worker` processes them.
    """
    _setup_logging(verbose)
    if database_url:
        set_settings(get_settings().replace(database_url=database_url))


def main() -> None:
    cli(prog_name="clearmark")
