"""`clearmark catalogue`: a seller's repeated mark, learned from many photos
(`pipeline.catalogue`), kept per tenant (`workers.templates`), and measured."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from clearmark.settings import get_settings
from clearmark.workers.commands.common import find_images, needs_database
from clearmark.workers.commands.deferred import deferred

if TYPE_CHECKING:
    import cv2
    import numpy as np
    import sqlalchemy as sa

    from clearmark.models import scenes
    from clearmark.pipeline import catalogue as cat
    from clearmark.pipeline import evaluate_catalogue as cat_eval
    from clearmark.pipeline import evaluate_real as real_eval
    from clearmark.pipeline import imaging, process
    from clearmark.workers import db, discover, migrate, templates
else:
    cv2 = deferred("cv2")
    np = deferred("numpy")
    scenes = deferred("clearmark.models.scenes")
    cat = deferred("clearmark.pipeline.catalogue")
    cat_eval = deferred("clearmark.pipeline.evaluate_catalogue")
    real_eval = deferred("clearmark.pipeline.evaluate_real")
    imaging = deferred("clearmark.pipeline.imaging")
    process = deferred("clearmark.pipeline.process")
    db = deferred("clearmark.workers.db")
    discover = deferred("clearmark.workers.discover")
    sa = deferred("sqlalchemy")
    migrate = deferred("clearmark.workers.migrate")
    templates = deferred("clearmark.workers.templates")


@click.group()
def catalogue() -> None:
    """Catalogue marks: learn a seller's repeated mark from many photos, list, show, delete, eval."""


def _embedded_database() -> None:
    """The embedded default (SQLite) is made and migrated here, as `clean` does."""
    url = get_settings().database_url
    if url.startswith("sqlite:///"):
        migrate.upgrade(url)


@catalogue.command("learn")
@click.argument("in_dir", type=click.Path(exists=True, path_type=Path))
@click.option("--tenant", default="local", show_default=True, help="Whose mark it is.")
@click.option("-r", "--recursive", is_flag=True, help="Descend into sub-folders.")
def learn(in_dir: Path, tenant: str, recursive: bool) -> None:
    """Learn the mark the photos in IN_DIR share (at least 4, the mark at the same place, or at
    the same place relative to the size) and keep it as a template of the tenant: later
    uploads of the tenant that match it are cleaned by inverting it. A group that shares no
    mark is refused with the reason (exit 1)."""
    _embedded_database()
    found = find_images([in_dir], recursive)
    settings = get_settings()
    photos = [imaging.decode_image(path.read_bytes(), settings).rgb for path, _ in found]
    try:
        t = cat.estimate(photos)
    except cat.RejectedGroup as exc:
        raise click.ClickException(f"no template: {exc}") from None
    used = [str(rel) for (_, rel), ok in zip(found, t.agreeing) if ok]
    run = needs_database(lambda: _save(tenant, t, used))
    click.echo(run())


def _save(tenant: str, t: cat.Template, used: list[str]) -> str:
    with db.session_scope(get_settings().database_url) as session:
        row = templates.save(session, tenant, t, used)
        return (
            f"template {row.id} for {tenant}: {t.rule}, box {list(t.box)} in "
            f"{t.frame[1]}x{t.frame[0]}, {t.images} photos, quality {t.quality:.2f}"
        )


@catalogue.command("list")
@click.option("--tenant", help="Only this tenant's templates.")
@needs_database
def list_templates(tenant: str | None) -> None:
    """Templates, newest first: id, tenant, rule, box, frame, photos used, quality, created."""
    with db.session_scope(get_settings().database_url) as session:
        rows = templates.listed(session, tenant)
        for t, name in rows:
            click.echo(
                f"{t.id}  {name}  {t.rule}  box {t.box_x0},{t.box_y0},{t.box_x1},{t.box_y1}  "
                f"frame {t.frame_width}x{t.frame_height}  {t.images} photos  quality {t.quality:.2f}  "
                f"{t.created_at:%Y-%m-%d %H:%M}"
            )
    click.echo(f"{len(rows)} template(s)", err=True)


@catalogue.command("show")
@click.argument("template_id")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for <id>-alpha.png (opacity, 0-255) and <id>-colour.png (W, transparent where alpha is 0).",
)
@needs_database
def show(template_id: str, out_dir: Path) -> None:
    """Write a template's opacity and colour as PNGs, and print its record."""
    with db.session_scope(get_settings().database_url) as session:
        row = session.get(db.MarkTemplate, template_id)
        if row is None:
            raise click.ClickException(f"no template {template_id}")
        t = templates.load(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    alpha = np.clip(np.rint(t.alpha * 255), 0, 255).astype(np.uint8)
    colour = np.clip(np.rint(t.colour), 0, 255).astype(np.uint8)
    rgba = np.dstack([colour, np.where(t.alpha > 0, 255, 0).astype(np.uint8)])
    cv2.imwrite(str(out_dir / f"{template_id}-alpha.png"), alpha)
    cv2.imwrite(str(out_dir / f"{template_id}-colour.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    click.echo(
        f"template {row.id}: {row.rule}, box {list(t.box)} in {row.frame_width}x{row.frame_height}, "
        f"{row.images} photos, quality {row.quality:.2f}, max opacity {float(t.alpha.max()):.2f}; "
        f"wrote {out_dir}/{template_id}-alpha.png and -colour.png"
    )


@catalogue.command("delete")
@click.argument("template_ids", nargs=-1, required=True)
@needs_database
def delete(template_ids: tuple[str, ...]) -> None:
    """Delete templates (their arrays in storage too); later uploads no longer match them."""
    with db.session_scope(get_settings().database_url) as session:
        for template_id in template_ids:
            if not templates.delete(session, template_id):
                raise click.ClickException(f"no template {template_id}")
            click.echo(f"deleted {template_id}")


@catalogue.command("discover")
@click.option(
    "--tenant",
    "tenant_names",
    multiple=True,
    help="This tenant's uploads (repeatable; default: every tenant's).",
)
@click.option(
    "--recent",
    default=200,
    show_default=True,
    type=click.IntRange(1),
    help="Uploads looked through per tenant, newest first.",
)
@needs_database
def discover_marks(tenant_names: tuple[str, ...], recent: int) -> None:
    """Find marks that uploads share without naming a group: each tenant's recent uploads that
    were not cleaned (needs_review, no_watermark) are clustered by size, then by aspect ratio;
    a cluster of at least CLEARMARK_TEMPLATE_MIN_GROUP photos that carry one mark at one place
    becomes a found group, its template is learned and its jobs are cleaned again with it.
    Workers do this on their own every CLEARMARK_TEMPLATE_DISCOVER_EVERY uncleaned uploads."""
    settings = get_settings()
    if not tenant_names:
        with db.session_scope(settings.database_url) as session:
            tenant_names = tuple(session.scalars(sa.select(db.Tenant.name).order_by(db.Tenant.name)))
    for name in tenant_names:
        try:
            found = discover.discover(settings, name, recent)
        except LookupError as exc:
            raise click.ClickException(str(exc)) from None
        for f in found:
            if f.learned is not None and f.learned.template_id:
                click.echo(
                    f"{name}: {f.group}: template {f.learned.template_id} from {f.photos} photos; "
                    f"{f.learned.requeued} job(s) queued again (batch {f.learned.batch_id})"
                )
            else:
                click.echo(
                    f"{name}: {f.group}: {f.photos} photos, no template: {f.reason or 'not due a try'}"
                )
        if not found:
            click.echo(f"{name}: no {settings.template_min_group} uncleaned uploads of one size or shape")


def _shared_data() -> Path:
    return Path(scenes.DEFAULT_DATA)


@catalogue.command("eval")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=_shared_data,
    show_default="../shared/data",
    help="directory holding products/",
)
@click.option("--split", type=click.Choice(["train", "dev"]), default="dev", show_default=True)
@click.option("--groups", "n_groups", default=8, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--pipeline/--no-pipeline",
    "with_pipeline",
    default=True,
    show_default=True,
    help="also run the single-image pipeline on each group's K = 8 photos (slow on a CPU)",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="also write every number here")
def eval_command(
    data_dir: Path, split: str, n_groups: int, seed: int, with_pipeline: bool, json_path: Path | None
) -> None:
    """Make catalogue groups from real photos (one held-out mark each, 20 photos, the same or
    a proportional place, opacity 0.15-0.7, JPEG 70-95) and report the templates learned from
    K = 2, 4, 8, 16 of them against the truth, PSNR inside the mark for template inversion,
    the single-image pipeline, true-mask Telea and doing nothing, and false matches on clean
    photos and on the other groups' photos."""
    try:
        groups, clean = cat_eval.build_groups(str(data_dir), split, n_groups, seed)
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    run = None
    if with_pipeline:
        settings = get_settings()
        engines = process.Engines.load(settings)

        def run(upload: bytes) -> np.ndarray:
            out = process.process_image(upload, engines, settings)
            return real_eval.decode_rgb(out.image_bytes)

    res = cat_eval.evaluate(groups, clean, run, progress=lambda name: click.echo(f"{name} done", err=True))
    click.echo(cat_eval.format_report(res))
    if json_path:
        json_path.write_text(json.dumps(res, indent=1, default=float))
        click.echo(f"wrote {json_path}", err=True)
    sys.stdout.flush()
