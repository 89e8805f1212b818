"""The `clearmark` command line.

Start-up stays light (`clearmark --help` well under a second): torch, the models and the
engines are imported only inside the commands that use them, and the model commands
(train, eval, engines, bench...) are loaded only when one of them runs (LazyGroup).
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import click

from clearmark.settings import get_settings, set_settings

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
# Commands defined with the models and engines (they import torch): name -> (where, the
# one-line help `clearmark --help` shows without importing them; a test keeps it true).
LAZY_COMMANDS = {
    "train": (
        "clearmark.models.cli:train_command",
        "Train the detector or the remover on synthetic watermarks; writes KIND.pt + manifest.",
    ),
    "eval": (
        "clearmark.models.cli:eval_command",
        "Evaluate the shipped models against two baselines on a held-out synthetic set.",
    ),
    "eval-real": (
        "clearmark.models.cli:eval_real_command",
        "Score the pipeline (decode to encode, gate "
        "included) on real product photos, marked and clean, against doing nothing "
        "and true-mask Telea: harm rate, clean photos changed, PSNR/SSIM, PSNR "
        "inside and outside the mark, mask F1, statuses, per style, with bootstrap "
        "95% intervals.",
    ),
    "reproduce": (
        "clearmark.models.cli:reproduce_command",
        "Repeat the training run that made KIND.pt and check the result bit for bit.",
    ),
    "engines": ("clearmark.engine_build.cli:engines_group", "Export ONNX models and build TensorRT engines."),
    "config": (
        "clearmark.workers.commands.config:config_command",
        "Show every setting, its value and its source (default, environment, file, override).",
    ),
    "bench": (
        "clearmark.engine_build.cli:bench_command",
        "Images per second and ms per image for "
        "detection and removal, per backend; with --pipeline, seconds per photo for "
        "the whole pipeline, stage by stage; with --jpeg, what writing a JPEG result "
        "costs and changes.",
    ),
}

UNAVAILABLE_EXIT = 75  # EX_TEMPFAIL: the broker or database is down; try again later


def _exit_when_unavailable(fn):
    """A command that talks to the broker or database: when one is down, one error line
    and exit status 75 instead of a traceback."""
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        from clearmark.errors import ServiceUnavailable

        try:
            return fn(*args, **kwargs)
        except ServiceUnavailable as exc:
            click.echo(f"Error: {exc.message}", err=True)
            sys.exit(UNAVAILABLE_EXIT)

    return run


class LazyGroup(click.Group):
    """A group whose LAZY_COMMANDS are imported on first use, not at start-up."""

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx, name):
        if name in LAZY_COMMANDS and name not in self.commands:
            module, attr = LAZY_COMMANDS[name][0].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        """Bad settings (a CLEARMARK_* variable out of range, contradicting another): one
        error line naming the variable and exit status 2, from whichever command loads them."""
        from clearmark.settings import SettingsError

        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            limit = formatter.width - 6 - len(name)
            if name in LAZY_COMMANDS and name not in self.commands:
                stand_in = click.Command(name, help=LAZY_COMMANDS[name][1])
                rows.append((name, stand_in.get_short_help_str(limit)))
            elif not (cmd := self.get_command(ctx, name)).hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _setup_logging(verbosity: int) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
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


def find_images(
    paths: list[Path], recursive: bool, skipped: list[Path] | None = None
) -> list[tuple[Path, Path]]:
    """(file, path relative to its input root) for every image under the given paths.
    Files left out because their extension is not an image's go into `skipped` (relative
    paths; hidden files and folders are left out silently)."""
    found = []
    for root in paths:
        if root.is_file():
            found.append((root, Path(root.name)))
            continue
        pattern = "**/*" if recursive else "*"
        for path in sorted(root.glob(pattern)):
            rel = path.relative_to(root)
            if not path.is_file() or any(part.startswith(".") for part in rel.parts):
                continue
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                found.append((path, rel))
            elif skipped is not None:
                skipped.append(rel)
    return found


@cli.command()
@click.argument("in_dir", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for the cleaned images (same relative paths and names).",
)
@click.option(
    "--masks",
    "masks_dir",
    type=click.Path(path_type=Path),
    help="Also write each detected mask here as <name>.png.",
)
@click.option("-r", "--recursive", is_flag=True, help="Descend into sub-folders.")
@click.option(
    "-w",
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes (each loads the models once).",
)
def clean(in_dir: Path, out_dir: Path, masks_dir: Path | None, recursive: bool, workers: int) -> None:
    """Clean every image in IN_DIR into --out, in this process (no server needed).

    Each image becomes a job recorded in the database (SQLite by default), so
    `clearmark status` shows what happened afterwards. Files with an image extension that
    cannot be read fail their own job with a reason; the rest of the folder carries on.
    Other files are skipped and listed. Exits 1 when any job failed or did not finish.
    """
    from clearmark.workers.local import clean_folder

    skipped: list[Path] = []
    images = find_images([in_dir], recursive, skipped)
    if not images:
        raise click.ClickException(
            f"no images found in {in_dir}" + ("" if recursive else " (try --recursive)")
        )
    for folder in (out_dir, masks_dir):
        try:
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise click.ClickException(f"cannot create the output folder {folder}: {exc}")
    summary = clean_folder(images, out_dir, masks_dir, workers=workers, skipped=[str(p) for p in skipped])
    click.echo(summary.render())
    if not summary.ok:
        sys.exit(1)


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--tenant", default="local", show_default=True, help="Tenant (storefront) name.")
@click.option("-r", "--recursive", is_flag=True, help="Descend into sub-folders.")
@click.option("--bulk", is_flag=True, help="Use the bulk queue (lower priority than uploads).")
@_exit_when_unavailable
def submit(inputs: tuple[Path, ...], tenant: str, recursive: bool, bulk: bool) -> None:
    """Upload images to storage and enqueue a job for each on the broker.

    Prints one job id per line (tab, then the file). The same file submitted again for the
    same tenant returns its existing job instead of a new one. With the broker or database
    down: one error line and exit status 75; jobs already recorded are sent by the reaper.
    """
    from clearmark.workers.submit import submit_files

    images = find_images(list(inputs), recursive)
    if not images:
        raise click.ClickException("no images found")
    for job_id, path in submit_files([p for p, _ in images], tenant=tenant, bulk=bulk):
        click.echo(f"{job_id}\t{path}")


def default_queues(settings) -> str:
    """What `clearmark worker` consumes without -Q: every queue, so that nothing submitted
    waits for a worker that was never started (webhooks included)."""
    return ",".join([settings.queue_uploads, settings.queue_bulk, settings.queue_webhooks])


@cli.command()
@click.option(
    "-Q", "--queues", help="Comma-separated queues (default: all three, uploads, bulk and webhooks)."
)
@click.option("-c", "--concurrency", type=int, help="Child processes (default from settings).")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option(
    "-P", "--pool", default="prefork", show_default=True, type=click.Choice(["prefork", "solo", "threads"])
)
@click.option("-n", "--hostname", help="Worker node name (default celery@host).")
@click.option(
    "--reap",
    is_flag=True,
    help="Also run the reaper beside the worker (a child process, every "
    "CLEARMARK_REAP_INTERVAL_S), where no Celery beat runs it.",
)
def worker(
    queues: str | None, concurrency: int | None, loglevel: str, pool: str, hostname: str | None, reap: bool
) -> None:
    """Start a Celery worker on the configured broker (Redis by default).

    Refuses to start when only one of CLEARMARK_DATABASE_URL and CLEARMARK_BROKER_URL is
    set, or when the database is not migrated to this code's revision: such a worker
    would take tasks whose jobs it cannot see, and they would stay queued."""
    from clearmark.workers.preflight import describe, worker_problems

    settings = get_settings()
    queues = queues or default_queues(settings)
    click.echo(f"{describe(settings)}\nqueues   {queues}", err=True)
    problems = worker_problems(settings)
    if problems:
        raise click.ClickException("worker not started: " + "; ".join(problems))
    from clearmark.workers.tasks import app

    argv = [
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency or settings.worker_concurrency),
        "-l",
        loglevel,
        "-P",
        pool,
        "-E",
    ]
    if hostname:
        argv += ["-n", hostname]
    reaper = _start_reaper_process() if reap else None
    try:
        app.worker_main(argv)
    finally:
        if reaper is not None:
            reaper.terminate()


def _start_reaper_process():
    """`clearmark reap --every` as a child that dies with this process (even on SIGKILL)."""
    import os
    import signal
    import subprocess

    def die_with_parent() -> None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass

    return subprocess.Popen(
        [sys.executable, "-m", "workers", "reap", "--every", str(get_settings().reap_interval_s)],
        env=dict(os.environ, CLEARMARK_DATABASE_URL=get_settings().database_url),
        preexec_fn=die_with_parent,
    )


@cli.command()
@click.option(
    "--every",
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="Run a pass every SECONDS until stopped (default: one pass).",
)
@_exit_when_unavailable
def reap(every: float | None) -> None:
    """Queue again what would otherwise never finish: running jobs whose lease expired (or
    fail them after the last attempt), queued jobs and due webhooks with no task on the
    broker. Safe to run anywhere, any number of times."""
    from clearmark.workers.reaper import reap as reap_once
    from clearmark.workers.reaper import reap_forever

    settings = get_settings()
    if every:
        reap_forever(settings.replace(reap_interval_s=every))
        return
    click.echo(str(reap_once(settings)))


@cli.command()
@click.option("-l", "--loglevel", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Run Celery beat: sends a reaper pass every CLEARMARK_REAP_INTERVAL_S (run exactly one)."""
    from clearmark.workers.tasks import app

    get_settings().data_dir.mkdir(parents=True, exist_ok=True)
    app.Beat(loglevel=loglevel).run()


@cli.command()
@click.option("--failures", default=10, show_default=True, help="Recent failures to list.")
def status(failures: int) -> None:
    """Counts of jobs by status, the most recent failures, and each queue's waiting tasks
    and the workers consuming it."""
    from clearmark.workers.reports import queues_text, status_text

    click.echo(status_text(get_settings().database_url, failures))
    click.echo(queues_text(get_settings()))


@cli.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION."""
    from clearmark.workers import migrate

    migrate.upgrade(revision=revision)
    click.echo(f"database at {revision}: {get_settings().database_url}")


@db.command("downgrade")
@click.option("--revision", default="-1", show_default=True)
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION ('base' removes everything)."""
    from clearmark.workers import migrate

    migrate.downgrade(revision=revision)


@db.command("current")
def db_current() -> None:
    """Show the database's migration revision."""
    from clearmark.workers import migrate

    migrate.current()


@cli.command()
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
    import uvicorn

    settings = get_settings()
    uvicorn.run(
        "clearmark.workers.api:app",
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=processes,
        proxy_headers=True,
    )


@cli.group()
def tenants() -> None:
    """Tenants (storefronts) and their API keys."""


@tenants.command("create")
@click.argument("name")
@click.option("--webhook", help="URL that receives a signed POST when each job finishes.")
def tenants_create(name: str, webhook: str | None) -> None:
    """Create tenant NAME and print its API key and webhook secret (shown only this once)."""
    from clearmark.errors import BadInput
    from clearmark.workers.db import session_scope
    from clearmark.workers.tenants import TenantExists, create_tenant
    from clearmark.workers.webhooks import check_callback_url

    settings = get_settings()
    try:
        if webhook:
            check_callback_url(webhook, settings)
        with session_scope(settings.database_url) as session:
            tenant, key = create_tenant(session, name, webhook_url=webhook)
            tenant_id, secret = tenant.id, tenant.webhook_secret
    except (BadInput, TenantExists) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"tenant          {name} ({tenant_id})\napi key         {key}\n"
        f"webhook secret  {secret}\nStore both now: they are not shown again."
    )


@tenants.command("list")
def tenants_list() -> None:
    """Tenants with their id and webhook URL (never keys)."""
    from sqlalchemy import select

    from clearmark.workers.db import Tenant, session_scope

    with session_scope(get_settings().database_url) as session:
        for t in session.scalars(select(Tenant).order_by(Tenant.name)):
            click.echo(f"{t.id}\t{t.name}\t{'key' if t.api_key_hash else 'no key'}\t{t.webhook_url or '-'}")


def _since(text: str):
    from clearmark.workers.dates import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


def _follow(items, total: int, desc: str):
    """A progress bar on stderr over an iterator of chunk sizes (or single items)."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="job", file=sys.stderr) as bar:
        for n in items:
            bar.update(n if isinstance(n, int) else 1)
            yield n


@cli.command()
@click.option("--tenant", help="Only this tenant's jobs (name).")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["succeeded", "no_watermark", "needs_review", "failed"]),
    help="Only jobs in this status (repeatable; default: every finished status).",
)
@click.option(
    "--since",
    metavar="DATE|AGE",
    help="Created at or after: an ISO date or time (UTC unless an offset is given) or an age (12h, 7d, 2w).",
)
@click.option("--until", help="Created before (ISO 8601).")
@click.option(
    "--outdated",
    is_flag=True,
    help="Only jobs whose result was made by other pipeline code or model weights "
    "than the current ones (failed jobs without a result: use --status failed).",
)
@click.option("--version", "version", help="Only jobs whose pipeline version starts so.")
@click.option("--batch", help="Only jobs of this batch.")
@click.option(
    "--ids",
    "ids_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Only these jobs: a file of job ids or source URIs, one per line.",
)
@click.option("--dry-run", is_flag=True, help="Print counts by status; queue nothing.")
@click.option(
    "--resume",
    "resume",
    metavar="BATCH",
    help="Continue an interrupted run (its selection is stored in the batch).",
)
@click.option(
    "--chunk", default=500, show_default=True, type=click.IntRange(1, 100_000), help="Jobs per transaction."
)
@click.option(
    "--rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="At most this many jobs enqueued per second (0: no limit).",
)
@_exit_when_unavailable
def reprocess(
    tenant, statuses, since, until, outdated, version, batch, ids_file, dry_run, resume, chunk, rate
) -> None:
    """Queue finished jobs again, as a new batch on the bulk queue.

    Select by tenant, status, creation date, pipeline version (--outdated: not made by the
    current models), batch or a list of ids. Interrupted, run `--resume BATCH`: nothing
    is enqueued twice and nothing is lost.
    """
    from clearmark.workers import reprocess as rp

    settings = get_settings()
    if resume:
        try:
            selection = rp.load(resume)
        except LookupError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        since = since and _since(since).isoformat()  # an age is fixed now, for --resume
        selection = rp.Selection(
            tenant=tenant,
            statuses=statuses,
            since=since,
            until=until,
            outdated=outdated,
            version=version,
            batch=batch,
            ids_file=ids_file and str(Path(ids_file).resolve()),
        )
    try:
        counts = rp.dry_run(selection)
    except ValueError as exc:  # a bad date
        raise click.ClickException(str(exc)) from None
    total = sum(counts.values())
    click.echo(
        "selected: " + (", ".join(f"{s} {n}" for s, n in counts.items()) or "none") + f" (total {total})"
    )
    earlier = None if resume else rp.unfinished(selection)
    if earlier:
        resume, stranded = earlier
        total += stranded
        click.echo(
            f"resuming batch {resume}: its last run stopped with {stranded} jobs queued but not yet sent"
        )
    if dry_run or not (total or resume):
        return
    batch_id = resume or rp.start(selection)
    click.echo(f"batch {batch_id} -> queue {settings.queue_bulk}")
    sent = sum(_follow(rp.run(batch_id, chunk=chunk, rate=rate), total, "enqueue"))
    click.echo(f"queued {sent} jobs in batch {batch_id}; progress: clearmark batches {batch_id}")


@cli.command()
@click.argument("batch_ids", nargs=-1)
@click.option("--tenant", help="Only this tenant's batches.")
@click.option("--limit", default=20, show_default=True, help="Newest batches to show.")
def batches(batch_ids: tuple[str, ...], tenant: str | None, limit: int) -> None:
    """Batches (newest first) with their jobs by status."""
    from clearmark.workers.reports import batch_progress, batches_text

    rows = batch_progress(get_settings().database_url, list(batch_ids), tenant, limit)
    click.echo(batches_text(rows))


@cli.command()
@click.argument("source")
@click.option("--tenant", default="local", show_default=True, help="Tenant (storefront) name.")
@click.option(
    "--chunk", default=500, show_default=True, type=click.IntRange(1, 100_000), help="Jobs per transaction."
)
@_exit_when_unavailable
def bulk(source: str, tenant: str, chunk: int) -> None:
    """Import a folder or bucket prefix (any fsspec URI) as one batch on the bulk queue.

    Local files are copied into storage; bucket objects are processed in place. A source
    already imported for the tenant keeps its job, so an interrupted import can simply
    be run again (the new batch then holds the rest).
    """
    from clearmark.workers.reports import batch_progress, batches_text
    from clearmark.workers.submit import list_uri, submit_sources

    if Path(source).exists():
        sources = [p for p, _ in find_images([Path(source)], recursive=True)]
    else:
        sources = list_uri(source, IMAGE_EXTENSIONS)
    if not sources:
        raise click.ClickException(f"no images found under {source}")
    new, batch_id = 0, None
    for _, _, created, batch_id in _follow(
        submit_sources(sources, tenant, bulk=True, chunk=chunk), len(sources), "submit"
    ):
        new += created
    if not new:
        click.echo(f"all {len(sources)} images are already known: no new batch")
        return
    rows = batch_progress(get_settings().database_url, [batch_id])
    click.echo(f"batch {batch_id}: {len(sources)} images, {new} new jobs, {len(sources) - new} already known")
    click.echo(batches_text(rows))


@cli.group()
def review() -> None:
    """Jobs waiting for a person: residual or confidence in the review band."""


@review.command("list")
@click.option("--tenant", help="Only this tenant's jobs.")
@click.option("--limit", default=50, show_default=True)
def review_list(tenant: str | None, limit: int) -> None:
    """Jobs in needs_review, oldest first: id, confidence, residual, source, result, and
    on the next line why the pipeline sent it to review."""
    from clearmark.workers.review import pending

    rows = pending(tenant, limit)
    for job, m in rows:
        scores = f"conf {m.detector_confidence:.2f}  resid {m.residual_score:.2f}" if m else "-"
        click.echo(f"{job.id}  {scores}  {job.source_uri}  {job.result_uri or '-'}")
        if job.review_reason:
            click.echo(f"    why: {job.review_reason}")
    click.echo(f"{len(rows)} job(s) need review", err=True)


def _decide(job_ids: tuple[str, ...], accept: bool, note: str) -> None:
    import getpass

    from clearmark.workers.review import decide

    for job_id in job_ids:
        try:
            click.echo(f"{job_id}\t{decide(job_id, accept, getpass.getuser(), note)}")
        except (LookupError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None


@review.command("accept")
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--note", default="", help="Why (kept in the job's events).")
def review_accept(job_ids: tuple[str, ...], note: str) -> None:
    """The result is good: the job becomes succeeded."""
    _decide(job_ids, True, note)


@review.command("reject")
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--note", default="", help="Why (kept as the job's error message).")
def review_reject(job_ids: tuple[str, ...], note: str) -> None:
    """The result is not good: the job fails with rejected_in_review (retry or reprocess)."""
    _decide(job_ids, False, note)


@cli.command()
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HTML file to write.",
)
@click.option("--tenant", help="Only this tenant's jobs.")
@click.option(
    "--since",
    metavar="DATE|AGE",
    help="Only jobs created since: an ISO date or time (UTC unless an offset is "
    "given) or an age (12h, 7d, 2w).",
)
@click.option("--sample", default=6, show_default=True, help="Random jobs in the gallery.")
@click.option("--worst", default=6, show_default=True, help="Lowest-confidence jobs shown.")
@click.option("--review", "review_n", default=6, show_default=True, help="needs_review jobs shown.")
def report(out_path: Path, tenant: str | None, since, sample: int, worst: int, review_n: int) -> None:
    """Write a self-contained HTML quality report: counts, failure reasons, latency
    percentiles, confidence and mask-area plots, before/after/mask thumbnails."""
    from clearmark.workers.report_html import build_report

    html = build_report(tenant, since and _since(since), sample=sample, worst=worst, review=review_n)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(html, encoding="utf-8")
    click.echo(f"wrote {out_path} ({len(html) // 1024} KiB)")


@cli.command(context_settings={"ignore_unknown_options": True})
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
    import importlib.util
    import os

    if importlib.util.find_spec("flower") is None:
        raise click.ClickException(
            "Flower is not installed: install the ops extra (.venv/bin/pip install -e '.[ops]')"
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
        "workers.tasks",
        "flower",
        f"--port={port}",
        f"--address={address}",
        *flower_args,
    ]
    os.execve(sys.executable, argv, {**os.environ, "FLOWER_BASIC_AUTH": auth})


def main() -> None:
    cli(prog_name="clearmark")
