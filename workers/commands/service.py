"""Running the service: `worker`, `reap` and `beat`."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import click

from clearmark.errors import EngineUnavailable
from clearmark.settings import Settings, get_settings
from clearmark.workers.commands.common import needs_database
from clearmark.workers.commands.deferred import deferred

if TYPE_CHECKING:
    from celery import signals as celery_signals

    from clearmark.workers import celery_app, preflight, reaper
else:
    celery_signals = deferred("celery.signals")
    celery_app = deferred("clearmark.workers.celery_app")
    preflight = deferred("clearmark.workers.preflight")
    reaper = deferred("clearmark.workers.reaper")


def default_queues(settings: Settings) -> str:
    """What `clearmark worker` consumes without -Q: every queue, so that nothing submitted
    waits for a worker that was never started (webhooks included)."""
    return ",".join([settings.queue_uploads, settings.queue_bulk, settings.queue_webhooks])


@click.command()
@click.option(
    "-Q", "--queues", help="Comma-separated queues (default: all three, uploads, bulk and webhooks)."
)
@click.option("-c", "--concurrency", type=int, help="Child processes (default from settings).")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option(
    "-P",
    "--pool",
    default=None,
    type=click.Choice(["prefork", "solo", "threads"]),
    help="Default: prefork; threads when CLEARMARK_JOBS_IN_FLIGHT is above 1.",
)
@click.option("-n", "--hostname", help="Worker node name (default celery@host).")
@click.option(
    "--reap",
    is_flag=True,
    help="Also run the reaper beside the worker (a child process, every "
    "CLEARMARK_REAP_INTERVAL_S), where no Celery beat runs it.",
)
def worker(
    queues: str | None,
    concurrency: int | None,
    loglevel: str,
    pool: str | None,
    hostname: str | None,
    reap: bool,
) -> None:
    """Start a Celery worker on the configured broker (Redis by default).

    Refuses to start when only one of CLEARMARK_DATABASE_URL and CLEARMARK_BROKER_URL is
    set, or when the database is not migrated to this code's revision: such a worker
    would take tasks whose jobs it cannot see, and they would stay queued. A worker that
    cleans images also refuses to start when its engines cannot load, and stops (status 1)
    when a child process of it cannot load them. With CLEARMARK_JOBS_IN_FLIGHT above 1 it is
    one process running that many jobs at once (Celery's threads pool) on one set of
    engines, batched across jobs with CLEARMARK_BATCH_MAX."""
    settings = get_settings()
    queues = queues or default_queues(settings)
    if settings.jobs_in_flight > 1:
        if concurrency not in (None, 1) or pool not in (None, "threads"):
            raise click.UsageError(
                f"CLEARMARK_JOBS_IN_FLIGHT={settings.jobs_in_flight}: a worker is one process running that "
                "many jobs (the threads pool); drop -c and -P, and start more workers for more processes"
            )
        pool, concurrency = "threads", settings.jobs_in_flight
    click.echo(f"{preflight.describe(settings)}\nqueues   {queues}", err=True)
    problems = preflight.worker_problems(settings)
    if problems:
        raise click.ClickException("worker not started: " + "; ".join(problems))
    if preflight.runs_images(queues, settings):
        try:
            click.echo(f"engines  {preflight.check_engines(settings)}", err=True)
        except EngineUnavailable as exc:
            raise click.ClickException(
                f"worker not started: {preflight.CANNOT_LOAD}: {exc.message}"
            ) from None
    argv = [
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency or settings.worker_concurrency),
        "-l",
        loglevel,
        "-P",
        pool or "prefork",
        "-E",
    ]
    if hostname:
        argv += ["-n", hostname]
    reaper_process = _start_reaper_process() if reap else None
    try:
        status = _run_worker(argv)
    finally:
        if reaper_process is not None:
            reaper_process.terminate()
    if status:
        sys.exit(status)


def _run_worker(argv: list[str]) -> int:
    """Run a Celery worker in this process and return its exit status (1 when it stopped
    because it cannot run its tasks), which app.worker_main drops."""
    started: list[Any] = []

    def remember(sender: Any, **_kwargs: object) -> None:
        started.append(sender)  # the WorkController

    celery_signals.worker_init.connect(remember)
    try:
        celery_app.app.worker_main(argv)
    finally:
        celery_signals.worker_init.disconnect(remember)
    return int(started[-1].exitcode or 0) if started else 0


def _start_reaper_process() -> subprocess.Popen[bytes]:
    """`clearmark reap --every` as a child that dies with this process (even on SIGKILL)."""

    def die_with_parent() -> None:
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass

    return subprocess.Popen(
        [sys.executable, "-m", "clearmark", "reap", "--every", str(get_settings().reap_interval_s)],
        env=dict(os.environ, CLEARMARK_DATABASE_URL=get_settings().database_url),
        preexec_fn=die_with_parent,
    )


@click.command()
@click.option(
    "--every",
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="Run a pass every SECONDS until stopped (default: one pass).",
)
@needs_database
def reap(every: float | None) -> None:
    """Queue again what would otherwise never finish: running jobs whose lease expired (or
    fail them after the last attempt), queued jobs and due webhooks with no task on the
    broker. Safe to run anywhere, any number of times."""
    settings = get_settings()
    if every:
        reaper.reap_forever(settings.replace(reap_interval_s=every))
        return
    click.echo(str(reaper.reap(settings)))


@click.command()
@click.option("-l", "--loglevel", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Run Celery beat: sends a reaper pass every CLEARMARK_REAP_INTERVAL_S (run exactly one)."""
    get_settings().data_dir.mkdir(parents=True, exist_ok=True)
    celery_app.app.Beat(loglevel=loglevel).run()
