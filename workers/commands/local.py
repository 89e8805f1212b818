"""`clearmark clean`: a folder of images, in this process."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from clearmark.workers.commands.common import find_images
from clearmark.workers.commands.deferred import deferred

if TYPE_CHECKING:
    from clearmark.workers import local
else:
    local = deferred("clearmark.workers.local")


@click.command()
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
    summary = local.clean_folder(
        images, out_dir, masks_dir, workers=workers, skipped=[str(p) for p in skipped]
    )
    click.echo(summary.render())
    if not summary.ok:
        sys.exit(1)
