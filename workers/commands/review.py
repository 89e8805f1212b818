"""`clearmark review`: jobs waiting for a person."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from clearmark.workers.commands.common import needs_database, since_value
from clearmark.workers.commands.deferred import deferred

if TYPE_CHECKING:
    from clearmark.workers import review as reviews
    from clearmark.workers import review_export
else:
    reviews = deferred("clearmark.workers.review")
    review_export = deferred("clearmark.workers.review_export")


@click.group()
def review() -> None:
    """Jobs waiting for a person: residual or confidence in the review band."""


@review.command("list")
@click.option("--tenant", help="Only this tenant's jobs.")
@click.option("--limit", default=50, show_default=True)
@needs_database
def review_list(tenant: str | None, limit: int) -> None:
    """Jobs in needs_review, oldest first: id, confidence, residual, source (the file's name
    as submitted, else its URI), result, and on the next line why the pipeline sent it to
    review."""
    rows = reviews.pending(tenant, limit)
    for job, m in rows:
        scores = f"conf {m.detector_confidence:.2f}  resid {m.residual_score:.2f}" if m else "-"
        click.echo(f"{job.id}  {scores}  {job.display_name}  {job.result_uri or '-'}")
        if job.review_reason:
            click.echo(f"    why: {job.review_reason}")
    click.echo(f"{len(rows)} job(s) need review", err=True)


def _decide(job_ids: tuple[str, ...], decision: reviews.Decision, note: str) -> None:
    for job_id in job_ids:
        try:
            click.echo(f"{job_id}\t{reviews.decide(job_id, decision, getpass.getuser(), note)}")
        except (LookupError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None


@review.command("accept")
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--note", default="", help="Why (kept in the job's events).")
@needs_database
def review_accept(job_ids: tuple[str, ...], note: str) -> None:
    """The result is good: the job becomes succeeded (no_watermark when the result is the
    upload unchanged: nothing was removed, and the event says so)."""
    _decide(job_ids, reviews.Decision.accept, note)


@review.command("reject")
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--note", default="", help="Why (kept as the job's error message).")
@needs_database
def review_reject(job_ids: tuple[str, ...], note: str) -> None:
    """The result is not good: the job fails with rejected_in_review (retry or reprocess)."""
    _decide(job_ids, reviews.Decision.reject, note)


@review.command("no-mark")
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--note", default="", help="Why (kept in the job's events).")
@needs_database
def review_no_mark(job_ids: tuple[str, ...], note: str) -> None:
    """A false alarm: the job becomes no_watermark and delivers the upload unchanged with an
    empty mask, whatever the pipeline changed."""
    _decide(job_ids, reviews.Decision.no_mark, note)


@review.command("export")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--since", help="Decided since: an ISO date or time, or an age (12h, 7d, 2w).")
@click.option("--tenant", help="Only this tenant's jobs.")
@needs_database
def review_export_command(out: Path, since: str | None, tenant: str | None) -> None:
    """Write the reviewed photos (accepted, or no mark) to OUT: each upload with its
    accepted mask and result, and manifest.csv (the format: README, "Learning from
    reviews"). `clearmark eval-real --reviewed OUT` scores the pipeline on them."""
    n = review_export.export_reviews(out, since_value(since) if since else None, tenant)
    click.echo(f"{n} reviewed photo(s) in {out}")
