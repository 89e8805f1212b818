"""What several commands share: finding images, the exit status when a service is down,
`--since`, progress bars."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click
from tqdm import tqdm

from clearmark.errors import ServiceUnavailable
from clearmark.workers.dates import parse_since

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


UNAVAILABLE_EXIT = 75  # EX_TEMPFAIL: the broker or database is down; try again later


def exit_when_unavailable(fn):
    """A command that talks to the broker or database: when one is down, one error line
    and exit status 75 instead of a traceback."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ServiceUnavailable as exc:
            click.echo(f"Error: {exc.message}", err=True)
            sys.exit(UNAVAILABLE_EXIT)

    return run


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


def since_value(text: str):

    try:
        return parse_since(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


def follow(items, total: int, desc: str):
    """A progress bar on stderr over an iterator of chunk sizes (or single items)."""
    with tqdm(total=total, desc=desc, unit="job", file=sys.stderr) as bar:
        for n in items:
            bar.update(n if isinstance(n, int) else 1)
            yield n
