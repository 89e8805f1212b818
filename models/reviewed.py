"""Photos people reviewed, as a data set: what `clearmark review export` writes and
`clearmark eval-real --reviewed` reads (and what training may add to its real photos).

A folder holds `manifest.csv`, one row a photo (`FIELDS`), and three files a photo, named
by its job id:

- `uploads/<job>.<ext>`: the upload as received, byte for byte (an EXIF orientation
  still applies: read it with `upright`);
- `masks/<job>.png`: the accepted mask, 8-bit grey, upright (as the photo is shown):
  0 untouched, 1-127 changed around the mark, >= 128 the mark itself; a mask the reviewer
  painted is 255 on every pixel painted; all 0 for "there is no mark";
- `results/<job>.<ext>`: the result the reviewer accepted (for "no mark", the upload).

`decision` is `accept` or `no_mark`; `masks_painted` counts the reviewer's own masks
(0: the pipeline's mask was accepted as it was); `waited_s` is the time from needs_review
to the decision.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MANIFEST = "manifest.csv"
FIELDS = (
    "job_id",
    "name",
    "decision",
    "status",
    "masks_painted",
    "reviewer",
    "decided_at",
    "waited_s",
    "review_reason",
    "pipeline_version",
    "width",
    "height",
    "upload",
    "mask",
    "result",
)


@dataclass(frozen=True)
class ReviewedPhoto:
    job_id: str
    name: str
    decision: str
    masks_painted: int
    upload: Path
    mask: Path
    result: Path


def read_reviewed(root: Path | str) -> list[ReviewedPhoto]:
    """The photos of an exported folder, in the manifest's order; FileNotFoundError
    naming the manifest when `root` has none."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: make one with `clearmark review export`")
    with path.open(newline="") as f:
        return [
            ReviewedPhoto(
                row["job_id"],
                row["name"],
                row["decision"],
                int(row["masks_painted"] or 0),
                root / row["upload"],
                root / row["mask"],
                root / row["result"],
            )
            for row in csv.DictReader(f)
        ]


def upright(data: bytes, mode: str = "RGB") -> np.ndarray:
    """An image file's pixels as shown (EXIF orientation applied), in `mode`."""
    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert(mode))
