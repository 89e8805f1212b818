"""What several commands share: finding images, the exit status when a service is down,
`--since`, progress bars, where the synthetic set's photos come from."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import click

from clearmark.errors import ServiceUnavailable
from clearmark.settings import get_settings
from clearmark.workers.commands.deferred import deferred
from clearmark.workers.dates import parse_since

if TYPE_CHECKING:
    import tqdm

    from clearmark.models import scenes
    from clearmark.workers import preflight
else:
    tqdm = deferred("tqdm")
    scenes = deferred("clearmark.models.scenes")
    preflight = deferred("clearmark.workers.preflight")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
UNAVAILABLE_EXIT = 75  # EX_TEMPFAIL: the broker, database or storage is down; try again later


def exit_when_unavailable(fn: Callable[P, R]) -> Callable[P, R]:
    """A command that talks to the broker, database or storage: when one is down, one error
    line and exit status 75 instead of a traceback."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ServiceUnavailable as exc:
            click.echo(f"Error: {exc.message}", err=True)
            sys.exit(UNAVAILABLE_EXIT)

    return run


def needs_database(fn: Callable[P, R]) -> Callable[P, R]:
    """A command on the service's database: one that is not there or not migrated to this
    code is one error line saying what to run (exit 1), one that cannot be reached is
    exit 75 (`exit_when_unavailable`), never a traceback."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        problem = preflight.schema_problem(get_settings())
        if problem:
            raise click.ClickException(problem)
        return fn(*args, **kwargs)

    return exit_when_unavailable(run)


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


def synthetic_photos(data_dir: Path | None, instead: str) -> tuple[Path | None, bool]:
    """Where the synthetic evaluation set's photo backgrounds come from: (data dir, studio
    scenes only). A `data_dir` the user named (--data) must hold the held-out grocery
    photos, else a usage error says so; without one, those beside the checkout
    (../shared/data), or where there are none (a clone), studio scenes alone, which one
    line on stderr says, with what to do `instead`."""
    if data_dir is not None:
        if not scenes.has_grocery_photos(data_dir, "eval"):
            raise click.BadParameter(
                f"no held-out photos in {data_dir}/grocery/iconic and grocery/natural", param_hint="--data"
            )
        return data_dir, False
    if scenes.has_grocery_photos(scenes.DEFAULT_DATA, "eval"):
        return scenes.DEFAULT_DATA, False
    click.echo(
        f"no photos in {scenes.DEFAULT_DATA}/grocery (../shared/data, not in the repository): "
        f"studio scenes only; {instead}",
        err=True,
    )
    return None, True


def photo_folder(folder: Path, n: int) -> list[Path]:
    """The first `n` images under `folder` (--photos, the user's own), a usage error where
    there are none."""
    found = [path for path, _ in find_images([folder], recursive=True)][:n]
    if not found:
        raise click.BadParameter(f"no images in {folder}", param_hint="--photos")
    return found


def since_value(text: str, option: str = "--since") -> datetime:
    """`--since` (or `--until`) as a time: an ISO date or time, or an age (12h, 7d, 2w)
    back from now."""
    try:
        return parse_since(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def follow(items: Iterable[T], total: int, desc: str) -> Iterator[T]:
    """A progress bar on stderr over an iterator of chunk sizes (or single items)."""
    with tqdm.tqdm(total=total, desc=desc, unit="job", file=sys.stderr) as bar:
        for n in items:
            bar.update(n if isinstance(n, int) else 1)
            yield n
