"""Training crops from photos people reviewed (`clearmark review export`, read by
`models.reviewed`): real uploads with real marks, the mask a reviewer accepted as the
truth and the result they accepted as the clean photo. `clearmark train --reviewed DIR`
puts REVIEWED_SHARE of each batch's crops from them (`replace_some`).

- detector: a window of the upload at the detector's scale; target = the accepted mask's
  mark pixels (>= 128), as `models.train` makes it for synthetic marks;
- remover: a full-resolution crop; input mask = the accepted mask's changed pixels (> 0);
  target = the accepted result; opacity = a blend fit of upload against result over the
  mark's pixels (one overlay colour, per-pixel opacity: `models.blend.blend_fit`).

"There is no mark" decisions are clean photos: all-zero targets (the detector's false
alarms, for it to unlearn); for the remover they carry nothing to restore and are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from clearmark.models.blend import blend_fit
from clearmark.models.networks import remover_input
from clearmark.models.reviewed import read_reviewed, upright

REVIEWED_SHARE = 0.25  # of each batch's crops, when reviewed photos are given
MARK_LEVEL = 128  # mask value from which a pixel is the mark itself (pipeline.process.mask_image)


@dataclass(frozen=True)
class Reviewed:
    upload: np.ndarray  # H x W x 3 uint8, upright
    mark: np.ndarray  # bool H x W: the accepted mask's mark pixels
    changed: np.ndarray  # bool H x W: every pixel the accepted result changed
    result: np.ndarray  # H x W x 3 uint8, the accepted result
    alpha: np.ndarray  # float32 H x W: fitted opacity on `mark`, 0 elsewhere


def opacity(upload: np.ndarray, result: np.ndarray, mark: np.ndarray) -> np.ndarray:
    """Per-pixel overlay opacity over `mark`: `upload = a*W + (1-a)*result` fitted with one
    colour W (0 elsewhere)."""
    alpha = np.zeros(mark.shape, np.float32)
    if mark.any():
        _, _, a = blend_fit(upload[mark].astype(np.float32), result[mark].astype(np.float32))
        alpha[mark] = a
    return alpha


@lru_cache(maxsize=4)
def load(root: str) -> tuple[Reviewed, ...]:
    """Every reviewed photo of an exported folder whose files agree in size (a result of
    another size than its upload is skipped); ValueError when none is left."""
    try:
        listed = read_reviewed(root)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    out = []
    for p in listed:
        img = upright(p.upload.read_bytes())
        mask = upright(p.mask.read_bytes(), "L")
        result = upright(p.result.read_bytes())
        if not (img.shape == result.shape and img.shape[:2] == mask.shape):
            continue
        mark = mask >= MARK_LEVEL
        out.append(Reviewed(img, mark, mask > 0, result, opacity(img, result, mark)))
    if not out:
        raise ValueError(f"{root}: no reviewed photo to train on")
    return tuple(out)


def _window(rng: np.random.Generator, r: Reviewed, size: int) -> tuple[slice, slice]:
    """A square window of `size` (capped by the photo) around a random mark pixel, or
    anywhere on a photo without one."""
    h, w = r.mark.shape
    size = min(size, h, w)
    ys, xs = np.nonzero(r.mark)
    if len(ys):
        k = int(rng.integers(len(ys)))
        cy, cx = int(ys[k]), int(xs[k])
    else:
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y = int(np.clip(cy - size // 2, 0, h - size))
    x = int(np.clip(cx - size // 2, 0, w - size))
    return slice(y, y + size), slice(x, x + size)


def detector_sample(
    rng: np.random.Generator, photos: tuple[Reviewed, ...], crop: int, seen_long_side: int
) -> tuple[np.ndarray, np.ndarray]:
    """(image crop x crop x 3 uint8, target crop x crop float32) at the detector's scale."""
    r = photos[int(rng.integers(len(photos)))]
    win = _window(rng, r, int(round(crop * max(1.0, max(r.mark.shape) / seen_long_side))))
    image = cv2.resize(r.upload[win], (crop, crop), interpolation=cv2.INTER_AREA)
    cov = cv2.resize(r.mark[win].astype(np.float32), (crop, crop), interpolation=cv2.INTER_AREA)
    return image, (cov >= 0.2).astype(np.float32)


def remover_sample(
    rng: np.random.Generator, photos: tuple[Reviewed, ...], crop: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(remover input C x crop x crop, clean crop x crop x 3 uint8, alpha crop x crop) or
    None when no reviewed photo has a mark (or all are smaller than `crop`)."""
    marked = [r for r in photos if r.mark.any() and min(r.mark.shape) >= crop]
    if not marked:
        return None
    r = marked[int(rng.integers(len(marked)))]
    win = _window(rng, r, crop)
    inp = remover_input(np.ascontiguousarray(r.upload[win]), r.changed[win].astype(np.float32))
    return inp, r.result[win], r.alpha[win]


def replace_some(
    rng: np.random.Generator, kind: str, tensors: list[np.ndarray], root: Path, crop: int, seen: int
) -> list[np.ndarray]:
    """The batch's arrays (as `models.train.make_batch` returns them) with about
    REVIEWED_SHARE of its crops swapped for crops of reviewed photos."""
    photos = load(str(root))
    n = tensors[0].shape[0]
    for i in np.flatnonzero(rng.random(n) < REVIEWED_SHARE):
        if kind == "detector":
            image, target = detector_sample(rng, photos, crop, seen)
            tensors[0][i] = image.transpose(2, 0, 1).astype(np.float32) / 255.0
            tensors[1][i, 0] = target
        else:
            sample = remover_sample(rng, photos, crop)
            if sample is None:
                break
            inp, clean, alpha = sample
            tensors[0][i] = inp
            tensors[1][i] = clean.transpose(2, 0, 1).astype(np.float32) / 255.0
            tensors[2][i, 0] = alpha
    return tensors
