"""From a watermark probability map to a mask, and from a mask to removal crops.

All coordinates are full-resolution pixels; boxes are half-open (x0, y0, x1, y1).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[int, int, int, int]


@dataclass
class Mask:
    core: np.ndarray  # bool H x W: thresholded, blobs under min_area removed
    dilated: np.ndarray  # bool H x W: core dilated by mask_dilate_px; nothing outside changes
    alpha: np.ndarray  # uint8 H x W: feathered compositing weight, > 0 exactly on `dilated`,
    # 255 on the core, ramping down across the dilation ring

    @property
    def empty(self) -> bool:
        return not self.dilated.any()

    @property
    def area_fraction(self) -> float:
        return float(self.dilated.mean())


def dilate_disc(mask: np.ndarray, px: int) -> np.ndarray:
    """`mask` (bool or uint8 H x W) grown by `px` pixels with a disc, as uint8 0/1."""
    m = mask.astype(np.uint8)
    if px <= 0 or not m.any():
        return m
    return cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1,) * 2))


def build_mask(prob: np.ndarray, threshold: float, min_area: int, dilate_px: int) -> Mask:
    """Threshold `prob` (H x W float), drop 8-connected blobs smaller than `min_area`
    pixels, dilate by `dilate_px` (disc) and feather across the dilation ring."""
    core = (prob >= threshold).astype(np.uint8)
    if min_area > 1 and core.any():
        n, labels, stats, _ = cv2.connectedComponentsWithStats(core, connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_area
        keep[0] = False
        core = keep[labels].astype(np.uint8)
    dilated = dilate_disc(core, dilate_px)
    alpha = np.zeros(core.shape, np.uint8)
    if dilated.any():
        x0, y0, x1, y1 = bbox(dilated, pad=1)
        sub = dilated[y0:y1, x0:x1]
        # Distance to the nearest pixel outside the mask; the image frame is not "outside".
        dist = cv2.distanceTransform(sub, cv2.DIST_L2, 5)
        ramp = np.clip(dist / float(dilate_px + 1), 0.0, 1.0)
        a = np.where(sub > 0, np.maximum(np.rint(ramp * 255), 1), 0).astype(np.uint8)
        alpha[y0:y1, x0:x1] = a
        alpha[core > 0] = 255
    return Mask(core=core.astype(bool), dilated=dilated.astype(bool), alpha=alpha)


def confirmed(mask: Mask, found: np.ndarray, min_px: int) -> Mask:
    """`mask` without its dilated components that hold fewer than `min_px` pixels of
    `found` (bool H x W); min_px <= 0 keeps every component."""
    if min_px <= 0 or mask.empty:
        return mask
    n, labels = cv2.connectedComponents(mask.dilated.astype(np.uint8), connectivity=8)
    keep = np.bincount(labels[found & mask.dilated], minlength=n) >= min_px
    keep[0] = False
    if keep[1:].all():
        return mask
    sel = keep[labels]
    return Mask(
        core=mask.core & sel, dilated=mask.dilated & sel, alpha=np.where(sel, mask.alpha, 0).astype(np.uint8)
    )


def bbox(mask: np.ndarray, pad: int = 0) -> Box:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (
        max(int(xs[0]) - pad, 0),
        max(int(ys[0]) - pad, 0),
        min(int(xs[-1]) + 1 + pad, w),
        min(int(ys[-1]) + 1 + pad, h),
    )


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def merge_boxes(boxes: list[Box]) -> list[Box]:
    """Union overlapping boxes until none overlap."""
    boxes = list(boxes)
    changed = True
    while changed:
        changed = False
        merged: list[Box] = []
        for b in boxes:
            for i, o in enumerate(merged):
                if _overlap(b, o):
                    merged[i] = (min(b[0], o[0]), min(b[1], o[1]), max(b[2], o[2]), max(b[3], o[3]))
                    changed = True
                    break
            else:
                merged.append(b)
        boxes = merged
    return sorted(boxes, key=lambda b: (b[1], b[0]))


def component_boxes(mask: np.ndarray, margin: int) -> list[Box]:
    """Boxes around the mask's connected components grown by `margin` (clipped to the
    image), overlapping ones merged."""
    m: np.ndarray = mask.astype(np.uint8)
    if margin > 0:  # components closer than 2*margin end up in one box anyway
        m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * margin + 1,) * 2))
    n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    boxes = [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, _ in stats[1:]]
    return merge_boxes(boxes)


def _spans(a0: int, a1: int, size: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Split [a0, a1) into windows of at most `size` overlapping by >= `overlap`.
    Returns (start, end, core_start, core_end); cores partition [a0, a1), seams sit in
    the middle of each overlap."""
    length = a1 - a0
    if length <= size:
        return [(a0, a1, a0, a1)]
    n = -(-(length - overlap) // (size - overlap))
    starts = [a0 + round(i * (length - size) / (n - 1)) for i in range(n)]
    spans = []
    for i, s in enumerate(starts):
        core0 = a0 if i == 0 else (s + starts[i - 1] + size) // 2
        core1 = a1 if i == n - 1 else (starts[i + 1] + s + size) // 2
        spans.append((s, s + size, core0, core1))
    return spans


def _fit(a0: int, a1: int, stride: int, limit: int) -> tuple[int, int]:
    """Grow [a0, a1) to a multiple of `stride` with real pixels where the image allows."""
    want = -(-(a1 - a0) // stride) * stride
    if want >= limit:
        return 0, limit
    extra = want - (a1 - a0)
    a1 = min(a1 + extra, limit)
    return a1 - want, a1


@dataclass(frozen=True)
class Tile:
    box: Box  # pixels fed to the remover (context included)
    core: Box  # pixels this tile writes back (tiles' cores never overlap)


def plan_tiles(
    boxes: list[Box], shape: tuple[int, int], max_crop: int, margin: int, stride: int
) -> list[Tile]:
    """Crops for the remover: each box, tiled when a side exceeds `max_crop` (tiles
    overlap by 2*margin so every seam has `margin` px of context), grown to stride
    multiples inside the image when possible."""
    h, w = shape
    size = max(stride, (max_crop // stride) * stride)
    overlap = min(2 * margin, size // 2)
    tiles = []
    for x0, y0, x1, y1 in boxes:
        for ys, ye, cy0, cy1 in _spans(y0, y1, size, overlap):
            for xs, xe, cx0, cx1 in _spans(x0, x1, size, overlap):
                fy0, fy1 = _fit(ys, ye, stride, h)
                fx0, fx1 = _fit(xs, xe, stride, w)
                tiles.append(Tile(box=(fx0, fy0, fx1, fy1), core=(cx0, cy0, cx1, cy1)))
    return tiles
