"""The do-no-harm gate: is what the pipeline changed consistent with lifting an overlay?

A watermark composites as `I = a*W + (1-a)*B` (ARCHITECTURE.md). So wherever the pipeline
changed a pixel, input minus output should be `a * (W - B)`: a move from the restored
background towards one mark colour W. `judge` checks each changed region (a connected
component of the dilated mask) on its own:

- the detector is sure of it (mean probability over its core, `confidence`): on real
  photos its false alarms mostly score lower than marks;
- the fitted opacity is that of a visible overlay (`opacity`, the median over the changed
  pixels), not of a faint shading the remover nudged;
- `blend_fit`: the share of the change's energy that one colour W and per-pixel opacities
  in [0, 1] explain (`explained`). Erasing a face, hair or fabric texture leaves a change
  that goes lighter here and darker there: no single W explains it.
- `continues`: the share of the region's outer ring that has the colour of what was
  removed. An overlay ends where it ends; a strap, a seam or a product edge that the
  detector took for a mark carries on outside the mask.
- `flattened`: the restored region is much smoother than the photo around it (the fill
  lost structure present in the surroundings).

A region that fails is put back exactly as it was (`revert`): on clean photos these are
the detector's false alarms. What that means for the job's status is `pipeline.verdict`'s:
a region put back while the detector still scores it at its low limit or above sends the
job to `needs_review`, never to `no_watermark`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from clearmark.models.blend import blend_fit
from clearmark.pipeline.verdict import as_compared

FIT_PIXELS = 20_000  # pixels sampled per region for the blend fit
MIN_CHANGE = 3.0  # grey levels: a smaller move is JPEG noise, not a change
RING_PX = 3  # width of the ring outside the region that `continues` looks at
MIN_APART = 30.0  # removed and fill colours closer than this: `continues` is not measured
NO_CHANGE = "no visible change"  # the reason of a region the remover did not visibly move


@dataclass(frozen=True)
class GateLimits:
    min_confidence: float = 0.95  # the detector's mean probability over the region's core
    min_opacity: float = 0.2  # median fitted opacity: a visible overlay, not a shading
    min_explained: float = 0.8  # blend fit must explain this share of the change
    max_continues: float = 0.05  # share of the ring coloured like what was removed
    max_flattened: float = 1.0  # 1 - (restored texture / surrounding texture)
    sure_prior: float = 1.01  # a region the suspect prior scores this high needs only the
    # blend fit and the continuation checks (the detector's confidence and the opacity are
    # the gate's proxies for "is it a mark", which the prior answers better); above 1: off

    def waived(self, v: RegionVerdict) -> bool:
        """Whether the suspect prior's certainty (`v.prior`) lets a failed region stay."""
        return v.prior >= self.sure_prior and not self.failures(
            1.0, 1.0, v.explained, v.continues, v.flattened
        )

    def failures(
        self, confidence: float, opacity: float, explained: float, continues: float, flattened: float
    ) -> list[str]:
        """Why a region with these measurements may not stay changed (empty: it may)."""
        out = []
        if confidence < self.min_confidence:
            out.append(f"the detector is not sure of it ({_vs(confidence, self.min_confidence)})")
        if opacity < self.min_opacity:
            out.append(f"too faint a change for an overlay (opacity {_vs(opacity, self.min_opacity)})")
        if explained < self.min_explained:
            out.append(f"change not explained by one overlay colour ({_vs(explained, self.min_explained)})")
        if continues > self.max_continues:
            out.append(f"removed colour continues outside the region ({_vs(continues, self.max_continues)})")
        if flattened > self.max_flattened:
            out.append(f"restored area lost the surrounding texture ({_vs(flattened, self.max_flattened)})")
        return out


def _vs(value: float, limit: float) -> str:
    """`value < limit` or `value > limit`, with the value as compared, not rounded."""
    return f"{as_compared(value, limit)} {'<' if value < limit else '>'} {limit}"


@dataclass
class RegionVerdict:
    box: tuple[int, int, int, int]
    pixels: int
    explained: float
    opacity: float  # median fitted opacity over the changed pixels
    colour: tuple[int, int, int]
    continues: float
    flattened: float
    confidence: float  # mean detector probability over the region's core
    passed: bool
    reason: str
    prior: float = 0.0  # the highest suspect prior among the detector's suspects it holds

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _texture(gray: np.ndarray, where: np.ndarray) -> float:
    """Mean absolute Laplacian over `where` (0 when empty)."""
    if not where.any():
        return 0.0
    return float(np.abs(cv2.Laplacian(gray, cv2.CV_32F, ksize=3))[where].mean())


def judge_region(
    rgb: np.ndarray,
    restored: np.ndarray,
    region: np.ndarray,
    core_prob: float,
    limits: GateLimits,
    rng: np.random.Generator,
) -> RegionVerdict:
    """The verdict on one region (bool H x W, already cropped with its surroundings)."""
    before, after = rgb.astype(np.float32), restored.astype(np.float32)
    moved = region & (np.abs(before - after).max(axis=2) >= MIN_CHANGE)
    ys, xs = np.nonzero(region)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    if not moved.any():  # nothing lifted: keeping it would only re-encode the photo
        return RegionVerdict(
            box, int(region.sum()), 0.0, 0.0, (0, 0, 0), 0.0, 0.0, core_prob, False, NO_CHANGE
        )
    idx = np.flatnonzero(moved)
    if len(idx) > FIT_PIXELS:
        idx = rng.choice(idx, FIT_PIXELS, replace=False)
    b, a_ = before.reshape(-1, 3)[idx], after.reshape(-1, 3)[idx]
    explained, colour, opacity = blend_fit(b, a_)

    # What was removed, and does it carry on outside the region?
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * RING_PX + 1,) * 2)
    ring = cv2.dilate(region.astype(np.uint8), k).astype(bool) & ~region
    removed = b[opacity >= 0.5] if (opacity >= 0.5).any() else b
    continues = 0.0
    removed_colour, fill_colour = np.median(removed, axis=0), np.median(a_, axis=0)
    apart = float(np.linalg.norm(removed_colour - fill_colour))
    if ring.any() and apart >= MIN_APART:  # else the two colours cannot be told apart
        near_removed = np.linalg.norm(before[ring] - removed_colour, axis=1)
        continues = float((near_removed < 0.35 * apart).mean())

    gray_in = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gray_out = cv2.cvtColor(restored, cv2.COLOR_RGB2GRAY).astype(np.float32)
    wide = (
        cv2.dilate(region.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (17, 17))).astype(
            bool
        )
        & ~region
    )
    around = _texture(gray_in, wide)
    inside = _texture(gray_out, moved)
    flattened = max(0.0, 1.0 - inside / around) if around >= 2.0 else 0.0

    median_opacity = float(np.median(opacity))
    reasons = limits.failures(core_prob, median_opacity, explained, continues, flattened)
    red, green, blue = (int(round(c)) for c in colour)  # the fitted overlay colour W
    return RegionVerdict(
        box,
        int(region.sum()),
        explained,
        median_opacity,
        (red, green, blue),
        continues,
        flattened,
        core_prob,
        not reasons,
        "; ".join(reasons) or "consistent with an overlay",
    )


@dataclass
class Region:
    window: tuple[slice, slice]  # the region's box grown by `pad`, in image coordinates
    pixels: np.ndarray  # bool, the region inside `window`
    verdict: RegionVerdict


def judge(
    rgb: np.ndarray,
    restored: np.ndarray,
    dilated: np.ndarray,
    prob: np.ndarray,
    limits: GateLimits = GateLimits(),
    pad: int = 24,
) -> list[Region]:
    """A verdict on each connected component of `dilated` (bool H x W). `prob` is the
    detector's probability on the mask's core and 0 elsewhere (H x W float): a region's
    confidence is its mean over the core pixels. Deterministic (fixed sampling seed)."""
    rng = np.random.default_rng(0)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(dilated.astype(np.uint8), connectivity=8)
    h, w = dilated.shape
    regions = []
    for i in range(1, n):
        x, y, bw, bh = (int(v) for v in stats[i, :4])
        win = (slice(max(0, y - pad), min(h, y + bh + pad)), slice(max(0, x - pad), min(w, x + bw + pad)))
        region = labels[win] == i
        core = region & (prob[win] > 0)
        conf = float(prob[win][core].mean()) if core.any() else 0.0
        v = judge_region(rgb[win], restored[win], region, conf, limits, rng)
        v.box = (
            v.box[0] + win[1].start,
            v.box[1] + win[0].start,
            v.box[2] + win[1].start,
            v.box[3] + win[0].start,
        )
        regions.append(Region(win, region, v))
    return regions
