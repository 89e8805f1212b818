"""Jobs on the service: `submit`, `bulk`, `reprocess`, `batches`, `status`, `report`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from clearmark.errors import BadInput
from clearmark.settings import get_settings
from clearmark.workers.commands.common import (
    IMAGE_EXTENSIONS,
    find_images,
    follow,
    needs_database,
    since_value,
)
from clearmark.workers.commands.deferred import deferred

if TYPE_CHECKING:
    from clearmark.workers import report_html, reports
    from clearmark.workers import reprocess as rp
    from clearmark.workers import submit as submits
else:
    report_html = deferred("clearmark.workers.report_html")
    reports = deferred("clearmark.workers.reports")
    submits = deferred("clearmark.workers.submit")
    rp = deferred("clearmark.workers.reprocess")


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--tenant", default="local", show_default=True, help="Tenant (storefront) name.")
@click.option("-r", "--recursive", is_flag=True, help="Descend into sub-folders.")
@click.option("--bulk", is_flag=True, help="Use the bulk queue (lower priority than uploads).")
@needs_database
def submit(inputs: tuple[Path, ...], tenant: str, recursive: bool, bulk: bool) -> None:
    """Upload images to storage and enqueue a job for each on the broker.

    Prints one job id per line (tab, then the file). The same file submitted again for the
    same tenant returns its existing job instead of a new one. With the broker, database or
    storage down: one error line and exit status 75; jobs already recorded are sent by the
    reaper.
    """
    images = find_images(list(inputs), recursive)
    if not images:
        raise click.ClickException("no images found")
    for job_id, path in submits.submit_files([p for p, _ in images], tenant=tenant, bulk=bulk):
        click.echo(f"{job_id}\t{path}")


@click.command()
@click.argument("source")
@click.option("--tenant", default="local", show_default=True, help="Tenant (storefront) name.")
@click.option(
    "--chunk", default=500, show_default=True, type=click.IntRange(1, 100_000), help="Jobs per transaction."
)
@needs_database
def bulk(source: str, tenant: str, chunk: int) -> None:
    """Import a folder or bucket prefix (any fsspec URI) as one batch on the bulk queue.

    Local files are copied into storage; bucket objects are processed in place. A source
    already imported for the tenant keeps its job, so an interrupted import can simply
    be run again (the new batch then holds the rest).
    """
    sources: list[Path | str]
    if Path(source).exists():
        sources = [p for p, _ in find_images([Path(source)], recursive=True)]
    else:
        sources = list(submits.list_uri(source, IMAGE_EXTENSIONS))
    if not sources:
        raise click.ClickException(f"no images found under {source}")
    new, batch_id = 0, None
    try:
        for _, _, created, batch_id in follow(
            submits.submit_sources(sources, tenant, bulk=True, chunk=chunk), len(sources), "submit"
        ):
            new += created
    except BadInput as exc:  # a source inside storage but outside the tenant's prefix
        raise click.ClickException(exc.message) from None
    if not new or batch_id is None:
        click.echo(f"all {len(sources)} images are already known: no new batch")
        return
    rows = reports.batch_progress(get_settings().database_url, [batch_id])
    click.echo(f"batch {batch_id}: {len(sources)} images, {new} new jobs, {len(sources) - new} already known")
    click.echo(reports.batches_text(rows))


@click.command()
@click.option("--tenant", help="Only this tenant's jobs (name).")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["succeeded", "no_watermark", "needs_review", "failed"]),  # db.FINISHED
    help="Only jobs in this status (repeatable; default: every finished status).",
)
@click.option(
    "--since",
    metavar="DATE|AGE",
    help="Created at or after: an ISO date or time (UTC unless an offset is given) or an age (12h, 7d, 2w).",
)
@click.option(
    "--until",
    metavar="DATE|AGE",
    help="Created before: an ISO date or time (UTC unless an offset is given) or an age (12h, 7d, 2w).",
)
@click.option(
    "--outdated",
    is_flag=True,
    help="Only jobs whose result was made by other pipeline code or model weights "
    "than the current ones (failed jobs without a result: use --status failed).",
)
@click.option("--version", "version", help="Only jobs whose pipeline version starts so.")
@click.option("--batch", help="Only jobs of this batch.")
@click.option("--group", help="Only uploads of this catalogue group (the API's `group`).")
@click.option(
    "--method",
    help="Only results made so (the job's metrics `method`): `template:` for any catalogue "
    "template, `template:ID` for one, `single-image` for none.",
)
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
@needs_database
def reprocess(
    tenant: str | None,
    statuses: tuple[str, ...],
    since: str | None,
    until: str | None,
    outdated: bool,
    version: str | None,
    batch: str | None,
    group: str | None,
    method: str | None,
    ids_file: str | None,
    dry_run: bool,
    resume: str | None,
    chunk: int,
    rate: float,
) -> None:
    """Queue finished jobs again, as a new batch on the bulk queue.

    Select by tenant, status, creation date, pipeline version (--outdated: not made by the
    current models), batch, catalogue group, how the result was made (--method) or a list
    of ids. A batch is one tenant's: jobs of several
    tenants make one batch per tenant. Interrupted, run the same command again, or
    `--resume BATCH`: nothing is enqueued twice and nothing is lost.
    """
    settings = get_settings()
    runs: list[rp.Run] = []
    if resume:
        try:
            selection = rp.load(resume)
            runs = [rp.resumed(resume)]
        except LookupError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        since = since and since_value(since).isoformat()  # an age is fixed now, for --resume
        until = until and since_value(until, "--until").isoformat()
        selection = rp.Selection(
            tenant=tenant,
            statuses=statuses,
            since=since,
            until=until,
            outdated=outdated,
            version=version,
            batch=batch,
            ids_file=ids_file and str(Path(ids_file).resolve()),
            group=group,
            method=method,
        )
    try:
        counts = rp.dry_run(selection)
        runs = runs or rp.plan(selection)
    except ValueError as exc:  # a bad date
        raise click.ClickException(str(exc)) from None
    total = sum(counts.values())
    click.echo(
        "selected: " + (", ".join(f"{s} {n}" for s, n in counts.items()) or "none") + f" (total {total})"
    )
    if len(runs) > 1:
        click.echo("one batch per tenant: " + ", ".join(f"{r.tenant} {r.selected}" for r in runs))
    for r in runs:
        if r.stranded and not resume:
            stopped = f"its last run stopped with {r.stranded} jobs queued but not yet sent"
            click.echo(f"resuming batch {r.batch_id}: {stopped}")
    if dry_run:
        return
    for r in runs:
        batch_id = r.batch_id or rp.start(replace(selection, tenant=r.tenant))
        click.echo(f"batch {batch_id} (tenant {r.tenant}) -> queue {settings.queue_bulk}")
        sent = sum(follow(rp.run(batch_id, chunk=chunk, rate=rate), r.selected + r.stranded, "enqueue"))
        click.echo(f"queued {sent} jobs in batch {batch_id}; progress: clearmark batches {batch_id}")


@click.command()
@click.argument("batch_ids", nargs=-1)
@click.option("--tenant", help="Only this tenant's batches.")
@click.option("--limit", default=20, show_default=True, help="Newest batches to show.")
@needs_database
def batches(batch_ids: tuple[str, ...], tenant: str | None, limit: int) -> None:
    """Batches (newest first) with their jobs by status."""
    rows = reports.batch_progress(get_settings().database_url, list(batch_ids), tenant, limit)
    click.echo(reports.batches_text(rows))


@click.command()
@click.option("--failures", default=10, show_default=True, help="Recent failures to list.")
@needs_database
def status(failures: int) -> None:
    """Counts of jobs by status, the most recent failures, and (with a broker set) each
    queue's waiting tasks and the workers consuming it."""
    settings = get_settings()
    click.echo(reports.status_text(settings.database_url, failures))
    click.echo(reports.embedded_text(settings) if settings.embedded else reports.queues_text(settings))


@click.command()
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
@needs_database
def report(
    out_path: Path, tenant: str | None, since: str | None, sample: int, worst: int, review_n: int
) -> None:
    """Write a self-contained HTML quality report: counts, failure reasons, latency
    percentiles, confidence and mask-area plots, before/after/mask thumbnails."""
    html = report_html.build_report(
        tenant, since_value(since) if since else None, sample=sample, worst=worst, review=review_n
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(html, encoding="utf-8")
    click.echo(f"wrote {out_path} ({len(html) // 1024} KiB)")
