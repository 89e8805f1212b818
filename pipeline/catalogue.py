"""Catalogue marks: one seller's mark learned from many photos, and inverted exactly.

Sellers stamp the same mark at the same place on many photos. Over K such photos the
median of the image gradients converges to the mark's own gradient, because the
backgrounds differ and the mark does not (Dekel et al., "On the Effectiveness of Visible
Watermarks", CVPR 2017). From it:

- `estimate`: the mark's support (where the median gradient is strong, holes filled), then
  per pixel of the support the blend `I_k = a*W + (1-a)*B_k` solved across the K photos:
  each photo's background `B_k` is guessed by inpainting the support from its surroundings,
  and `c = a*W` and `s = 1 - a` come from a robust (Cauchy-weighted) linear regression of
  `I_k` on `B_k`. Where the backgrounds hardly differ between photos (a white studio backdrop
  everywhere) `a` and `W` cannot be told apart; there the mark's colour is taken as the one
  found where they can (or black or white, whichever the mark moves towards). A group
  with fewer than MIN_IMAGES photos, or whose photos do not share a mark (weak median
  gradient, or too few photos whose gradients agree with it), is refused with a reason.
- `match`: normalised cross-correlation of an upload's gradient magnitude with the
  template's (|grad a|) over its box, searched a few pixels around the expected place, the
  peak refined to a sub-pixel shift.
- `invert`: `B = (I - c') / (1 - a')` with the template shifted to the match and its
  opacity scaled per photo (`a' = k*a`, `c' = k*c`; k by least squares on the restored
  gradients). Pixels where `a'` reaches ALPHA_SOLID keep too little of the background to
  invert: `residue`, for the remover.

Images are uint8 RGB; inside this module, float32 in 0-255. A template lives in a frame:
the photos' common size (`absolute`: the same pixels on photos of one size) or, for photos
of different sizes, the largest photo's size with every photo resampled to it (`relative`:
the same place relative to the size).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

MIN_IMAGES = 4  # fewer photos: the median does not separate the mark from the backgrounds
MIN_PIXEL_AGREE = 0.6  # share of the photos whose gradient must agree with the median at a mark pixel
SUPPORT_GRAD = 6.0  # grey levels per px: the median gradient of a mark's edge reaches this
MIN_SUPPORT_PX = 40  # a smaller support is noise, not a mark
FILL_LEVEL = 4.0  # grey levels: the integrated median gradient inside a mark reaches this
CLUSTER_PX = 41  # px: pieces of one mark (letters, a logo and its text) lie closer than this
SUPPORT_PAD = 3  # px around the strong gradients that belong to the mark (antialiasing)
BOX_PAD = 12  # px of surroundings kept around the support (inpainting, matching)
AGREE = 0.25  # a photo whose gradient correlates with the median's at least this much carries the mark
MIN_AGREEING = 0.5  # share of the photos that must carry it
MIN_CONDITION = 15.0**2  # grey levels^2: background variance across photos below this cannot
# separate a from W at a pixel
JPEG_NOISE = 3.0  # grey levels: the upload's compression error, before the inversion amplifies it
INPAINT_NOISE = 1.5  # grey levels: inpainting's error over a flat backdrop
ALPHA_SOLID = 0.9  # opacity from which a pixel is left to the remover, not inverted
SEARCH_PX = 4  # how far from the expected place `match` looks
MATCH_EDGE = 0.15  # share of the signature's peak from which a pixel is the mark's edge ...
MATCH_PAD = 3  # ... and this many px around it are what `match` compares
MATCH_SOFT = 20.0  # grey levels per px: an upload's gradient g counts as g / (g + this), so a
# backdrop edge crossing the mark weighs little more than the mark's own edges
# A match scores at least this: chosen on the train split by `evaluate_catalogue.choose_threshold`
# (`clearmark catalogue eval --split train --no-pipeline`: the highest score of a photo
# without the template's mark was 0.320, on one of 6,648 clean-photo tries; + 0.05, up to a
# step of 0.05).
MATCH_THRESHOLD = 0.4
ABSOLUTE, RELATIVE = "absolute", "relative"


class RejectedGroup(ValueError):
    """The photos do not make a template; the message says why."""


@dataclass
class Template:
    """A learned mark in its frame: `alpha` (H x W float32 in [0, 1]) and premultiplied
    colour `premult` (`a*W`, H x W x 3 float32 in 0-255) over `box` (x0, y0, x1, y1) of a
    frame of `frame` (height, width)."""

    alpha: np.ndarray
    premult: np.ndarray
    box: tuple[int, int, int, int]
    frame: tuple[int, int]
    rule: str = ABSOLUTE
    images: int = 0
    quality: float = 0.0  # median correlation of the photos' gradients with the median gradient
    agreeing: list[bool] = field(default_factory=list)  # per photo given: carries the mark

    @property
    def colour(self) -> np.ndarray:
        """W, H x W x 3 in 0-255 (0 where alpha is 0)."""
        a = self.alpha[..., None]
        return np.asarray(np.divide(self.premult, a, out=np.zeros_like(self.premult), where=a > 1e-3))

    def signature(self) -> np.ndarray:
        """What `match` correlates with: the magnitude of the gradient of alpha."""
        return _magnitude(self.alpha * 255.0)

    def placed(self, shape: tuple[int, int]) -> Template | None:
        """The template in the frame of an image of `shape` (height, width): itself for its
        own frame, resampled for a relative rule, None when it does not apply."""
        if shape == self.frame:
            return self
        if self.rule != RELATIVE:
            return None
        sy, sx = shape[0] / self.frame[0], shape[1] / self.frame[1]
        x0, y0, x1, y1 = self.box
        box = (int(np.floor(x0 * sx)), int(np.floor(y0 * sy)), int(np.ceil(x1 * sx)), int(np.ceil(y1 * sy)))
        box = (box[0], box[1], min(box[2], shape[1]), min(box[3], shape[0]))
        size = (box[2] - box[0], box[3] - box[1])
        if min(size) < 2:
            return None
        # the box's own corners map to these in the resampled crop (sub-pixel remainder)
        m = np.array([[sx, 0, x0 * sx - box[0]], [0, sy, y0 * sy - box[1]]], np.float32)
        alpha, premult = self.alpha, self.premult
        if min(sx, sy) < 1:  # shrinking: blur first, as an area average would
            sigma = (max(0.0, 0.5 / sx - 0.5), max(0.0, 0.5 / sy - 0.5))
            alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=sigma[0] or 0.01, sigmaY=sigma[1] or 0.01)
            premult = cv2.GaussianBlur(premult, (0, 0), sigmaX=sigma[0] or 0.01, sigmaY=sigma[1] or 0.01)
        alpha = cv2.warpAffine(alpha, m, size, flags=cv2.INTER_LINEAR)
        premult = cv2.warpAffine(premult, m, size, flags=cv2.INTER_LINEAR)
        return Template(alpha, premult, box, shape, self.rule, self.images, self.quality)


@dataclass
class Match:
    score: float  # normalised cross-correlation at the peak
    shift: tuple[float, float]  # (dx, dy) px from the template's place, sub-pixel
    template: Template  # placed in the image's frame


@dataclass
class Inversion:
    restored: np.ndarray  # uint8 H x W x 3, the input outside the template's box
    alpha: np.ndarray  # float32 H x W, the opacity inverted (shifted, scaled), 0 outside
    residue: np.ndarray  # bool H x W, where alpha >= ALPHA_SOLID: not inverted
    scale: float  # the opacity scale fitted for this photo


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)


def _grad(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward differences (grey levels per px; 0 on the last column and row), the
    operator `integrate` inverts."""
    gray = np.asarray(gray, np.float32)
    gx, gy = np.zeros_like(gray), np.zeros_like(gray)
    gx[:, :-1] = gray[:, 1:] - gray[:, :-1]
    gy[:-1] = gray[1:] - gray[:-1]
    return gx, gy


def integrate(gx: np.ndarray, gy: np.ndarray, pad: int = 16) -> np.ndarray:
    """The map whose forward differences are closest to (gx, gy) in least squares (Poisson,
    solved by FFT on the field zero-padded by `pad`), its border's median at 0."""
    gx, gy = np.pad(gx, pad), np.pad(gy, pad)
    div = gx - np.roll(gx, 1, axis=1) + gy - np.roll(gy, 1, axis=0)
    h, w = div.shape
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    denom = (2 * np.cos(2 * np.pi * fx) - 2) + (2 * np.cos(2 * np.pi * fy) - 2)
    denom[0, 0] = 1.0
    spec = np.fft.fft2(div) / denom
    spec[0, 0] = 0.0
    u = np.real(np.fft.ifft2(spec))[pad:-pad, pad:-pad]
    border = np.concatenate([u[0], u[-1], u[:, 0], u[:, -1]])
    return np.asarray(u - np.median(border), np.float32)


def _magnitude(gray: np.ndarray) -> np.ndarray:
    gx, gy = _grad(gray)
    return np.asarray(np.hypot(gx, gy), np.float32)


def common_frame(images: Sequence[np.ndarray]) -> tuple[str, tuple[int, int], list[np.ndarray]]:
    """(rule, frame, the images in it): photos of one size as they are; else every photo
    resampled to the largest one's size (the mark at the same place relative to the size)."""
    shapes = {im.shape[:2] for im in images}
    big = max(images, key=lambda im: im.shape[0] * im.shape[1])
    frame = (int(big.shape[0]), int(big.shape[1]))
    if len(shapes) == 1:
        return ABSOLUTE, frame, list(images)
    resized = [
        im if im.shape[:2] == frame else cv2.resize(im, frame[::-1], interpolation=cv2.INTER_CUBIC)
        for im in images
    ]
    return RELATIVE, frame, resized


def median_gradient(
    grays: Sequence[np.ndarray], rows: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-pixel median over the photos of the x and y gradients, and the share of the
    photos whose own gradient there agrees with it (projects onto it by at least half its
    length): a mark's edge agrees in nearly every photo, the outline of products that
    overlap in some photos only in those. In strips of `rows` (K full-size gradient
    stacks at once would take gigabytes)."""
    h, w = grays[0].shape
    mx, my, agree = (np.zeros((h, w), np.float32) for _ in range(3))
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        hi = min(h, y1 + 1)  # a row of context for the differences
        gx, gy = (np.stack(g)[:, : y1 - y0] for g in zip(*(_grad(g[y0:hi]) for g in grays)))
        sx, sy = np.median(gx, axis=0), np.median(gy, axis=0)
        norm = sx * sx + sy * sy
        agree[y0:y1] = ((gx * sx + gy * sy) >= 0.5 * norm).mean(0)
        mx[y0:y1], my[y0:y1] = sx, sy
    return mx, my, agree


def find_support(magnitude: np.ndarray, agree: np.ndarray) -> np.ndarray:
    """bool H x W: the strong median gradient where the photos agree with it, closed, its
    holes filled (a letter's or a disc's inside), and grown by SUPPORT_PAD; components under
    MIN_SUPPORT_PX dropped."""
    edges = ((magnitude >= SUPPORT_GRAD) & (agree >= MIN_PIXEL_AGREE)).astype(np.uint8)
    strong = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(strong, connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= MIN_SUPPORT_PX
    support = keep[labels].astype(np.uint8)
    if not support.any():
        return np.zeros(support.shape, bool)
    # One mark: the cluster of pieces (letters CLUSTER_PX apart at most) with the most
    # gradient energy; the rest are outlines of products that some photos share.
    near = cv2.dilate(support, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (CLUSTER_PX, CLUSTER_PX)))
    n, clusters = cv2.connectedComponents(near, connectivity=8)
    energy = np.bincount(clusters.ravel(), weights=(magnitude * support).ravel(), minlength=n)
    energy[0] = 0
    support = (support.astype(bool) & (clusters == int(np.argmax(energy)))).astype(np.uint8)
    # holes: what the border's flood fill does not reach
    padded = np.pad(support, 1)
    outside = padded.copy()
    cv2.floodFill(outside, None, (0, 0), 1)
    support = support | (1 - outside[1:-1, 1:-1])
    k = 2 * SUPPORT_PAD + 1
    return cv2.dilate(support, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))).astype(bool)


def _box(mask: np.ndarray, pad: int) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (
        max(0, int(xs.min()) - pad),
        max(0, int(ys.min()) - pad),
        min(w, int(xs.max()) + 1 + pad),
        min(h, int(ys.max()) + 1 + pad),
    )


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equal-size maps (0 when either is flat)."""
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else 0.0


def estimate(images: Sequence[np.ndarray], min_images: int = MIN_IMAGES) -> Template:
    """The mark the photos (uint8 RGB) share, or RejectedGroup saying why there is none."""
    if len(images) < min_images:
        raise RejectedGroup(f"{len(images)} photos: at least {min_images} are needed")
    rule, frame, photos = common_frame(images)
    grays = [_gray(p) for p in photos]
    mx, my, agree_px = median_gradient(grays)
    magnitude = np.hypot(mx, my)
    support = find_support(magnitude, agree_px)
    if not support.any():
        raise RejectedGroup(
            f"no shared mark: the median gradient over the {len(images)} photos nowhere reaches "
            f"{SUPPORT_GRAD} grey levels per px (strongest {float(magnitude.max()):.1f})"
        )
    x0, y0, x1, y1 = _box(support, BOX_PAD)
    # Inside a wide stroke or a filled shape the gradient is 0: the integrated median
    # gradient (about a*(W - the backgrounds' median)) finds it.
    drawn = np.abs(integrate(mx[y0:y1, x0:x1], my[y0:y1, x0:x1]))
    level = max(FILL_LEVEL, 0.25 * float(np.percentile(drawn[support[y0:y1, x0:x1]], 90)))
    support[y0:y1, x0:x1] |= cv2.dilate((drawn >= level).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    x0, y0, x1, y1 = _box(support, BOX_PAD)
    ref = magnitude[y0:y1, x0:x1]
    agree = [correlation(_magnitude(g[y0:y1, x0:x1]), ref) for g in grays]
    agreeing = [a >= AGREE for a in agree]
    if sum(agreeing) < max(min_images, MIN_AGREEING * len(images)):
        raise RejectedGroup(
            f"no shared mark: {sum(agreeing)} of {len(images)} photos agree with the median gradient "
            f"(correlation >= {AGREE}; median {float(np.median(agree)):.2f}); "
            f"needed {max(min_images, int(np.ceil(MIN_AGREEING * len(images))))}"
        )
    crops = [p[y0:y1, x0:x1] for p, ok in zip(photos, agreeing) if ok]
    alpha, premult = solve_blend(crops, support[y0:y1, x0:x1])
    return Template(
        alpha,
        premult,
        (x0, y0, x1, y1),
        frame,
        rule,
        images=len(crops),
        quality=float(np.median([a for a, ok in zip(agree, agreeing) if ok])),
        agreeing=agreeing,
    )


def solve_blend(
    crops: Sequence[np.ndarray], support: np.ndarray, iters: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, premult) over the crops' box: the per-pixel regression of the module
    docstring, 0 outside `support`."""
    hole = support.astype(np.uint8)
    obs = np.stack([c.astype(np.float32) for c in crops])  # K x H x W x 3
    bg = np.stack([cv2.inpaint(c, hole, 5, cv2.INPAINT_TELEA).astype(np.float32) for c in crops])
    weight = np.ones(obs.shape[:3], np.float32)  # K x H x W
    for _ in range(iters):
        s, c, cond = _regress(obs, bg, weight)
        resid = np.sqrt(((obs - c[None] - s[None, ..., None] * bg) ** 2).mean(-1))
        sigma = np.maximum(np.median(resid, axis=0, keepdims=True) * 1.5, 2.0)
        weight = 1.0 / (1.0 + (resid / sigma) ** 2)
    alpha = np.clip(1.0 - s, 0.0, 1.0)
    colour = np.divide(c, alpha[..., None], out=np.zeros_like(c), where=alpha[..., None] > 0.05)
    sure = support & (cond >= MIN_CONDITION) & (alpha > 0.2)
    if sure.any():
        fallback = np.median(colour[sure], axis=0)
    else:  # no pixel tells a from W: the extreme the mark moves towards
        moved = float(np.median((obs - bg)[:, support].mean(-1)))
        fallback = np.full(3, 255.0 if moved > 0 else 0.0, np.float32)
    # Where the backgrounds do not separate a from W, W is the fallback colour and a the
    # least-squares opacity towards it.
    d = fallback[None, None, None] - bg
    a_fb = np.clip(
        (weight[..., None] * (obs - bg) * d).sum((0, 3))
        / np.maximum((weight[..., None] * d * d).sum((0, 3)), 1e-3),
        0.0,
        1.0,
    )
    weak = cond < MIN_CONDITION
    alpha = np.where(weak, a_fb, alpha)
    colour = np.where(weak[..., None], fallback, np.clip(colour, 0.0, 255.0))
    alpha = np.where(support, np.minimum(alpha, 0.995), 0.0).astype(np.float32)
    return alpha, (alpha[..., None] * colour).astype(np.float32)


def _regress(
    obs: np.ndarray, bg: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel, weighted least squares of obs = c + s*bg over photos and channels: (s,
    c H x W x 3, the weighted background variance that conditions s)."""
    w = weight[..., None]
    total = np.maximum(w.sum(0), 1e-6)
    mo, mb = (w * obs).sum(0) / total, (w * bg).sum(0) / total
    cov = (w * (obs - mo) * (bg - mb)).sum((0, 3))
    var = (w * (bg - mb) ** 2).sum((0, 3))
    s = np.clip(cov / np.maximum(var, 1e-3), 0.0, 1.0)
    c = mo - s[..., None] * mb
    cond = var / np.maximum(total.sum(-1), 1e-6)
    return s, c, cond


def match(rgb: np.ndarray, template: Template) -> Match | None:
    """The template's best fit on `rgb` within SEARCH_PX of its place (None when it does not
    apply to the image's size): the normalised correlation of the upload's gradient
    magnitude (softened by MATCH_SOFT) with the template's, over the mark's edges only
    (MATCH_EDGE, MATCH_PAD), so that the backdrop inside the box does not dilute it."""
    placed = template.placed((int(rgb.shape[0]), int(rgb.shape[1])))
    if placed is None:
        return None
    x0, y0, x1, y1 = placed.box
    h, w = rgb.shape[:2]
    p = SEARCH_PX
    wx0, wy0, wx1, wy1 = max(0, x0 - p), max(0, y0 - p), min(w, x1 + p), min(h, y1 + p)
    sig = placed.signature()
    gray = _gray(rgb[wy0:wy1, wx0:wx1])
    # the template's box cut to what lies inside the search window
    tx0, ty0 = max(0, wx0 - x0), max(0, wy0 - y0)
    sig = sig[ty0 : sig.shape[0] - max(0, y1 - wy1), tx0 : sig.shape[1] - max(0, x1 - wx1)]
    mag = _magnitude(gray)
    if sig.shape[0] > mag.shape[0] or sig.shape[1] > mag.shape[1] or float(sig.std()) == 0:
        return None
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * MATCH_PAD + 1,) * 2)
    edge = cv2.dilate((sig >= MATCH_EDGE * float(sig.max())).astype(np.uint8), k).astype(np.float32)
    scores = cv2.matchTemplate(mag / (mag + MATCH_SOFT), sig, cv2.TM_CCOEFF_NORMED, mask=edge)
    scores = np.nan_to_num(scores, nan=-1.0, posinf=-1.0, neginf=-1.0)  # a flat window
    _, best, _, (bx, by) = cv2.minMaxLoc(scores)
    dx = bx + wx0 - (x0 + tx0) + _peak(scores[by, max(0, bx - 1) : bx + 2], bx)
    dy = by + wy0 - (y0 + ty0) + _peak(scores[max(0, by - 1) : by + 2, bx], by)
    return Match(float(best), (float(dx), float(dy)), placed)


def _peak(values: np.ndarray, at: int) -> float:
    """Sub-pixel offset of a 3-point parabola's vertex (0 at an edge of the map)."""
    if len(values) < 3 or at == 0:
        return 0.0
    left, mid, right = (float(v) for v in values)
    den = left - 2 * mid + right
    return float(np.clip(0.5 * (left - right) / den, -0.5, 0.5)) if den < 0 else 0.0


# RGB -> YCbCr without the chroma offset (the blend is linear, the offset cancels), JPEG's
_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32)
_RGB = np.linalg.inv(_YCC).astype(np.float32)


def _blocks(x: np.ndarray, origin: tuple[int, int]) -> np.ndarray:
    """2 x 2 means of `x` (H x W [x C]) on the grid of the photo whose pixel (0, 0) is
    `origin` (x, y) pixels before x's top-left: what a 4:2:0 JPEG keeps of chroma."""
    oy, ox = origin[1] % 2, origin[0] % 2
    h, w = x.shape[:2]
    hh, ww = (h + oy + 1) // 2 * 2, (w + ox + 1) // 2 * 2
    pad = ((oy, hh - h - oy), (ox, ww - w - ox)) + ((0, 0),) * (x.ndim - 2)
    p = np.pad(x, pad, mode="edge")
    return np.asarray(p.reshape(hh // 2, 2, ww // 2, 2, *x.shape[2:]).mean(axis=(1, 3)), np.float32)


def _unblock(x: np.ndarray, shape: tuple[int, int], origin: tuple[int, int]) -> np.ndarray:
    """`_blocks`' grid back at full resolution (bilinear, as decoders upsample chroma)."""
    oy, ox = origin[1] % 2, origin[0] % 2
    big = cv2.resize(x, (x.shape[1] * 2, x.shape[0] * 2), interpolation=cv2.INTER_LINEAR)
    return big[oy : oy + shape[0], ox : ox + shape[1]]


def unblend(
    obs: np.ndarray, premult: np.ndarray, a: np.ndarray, chroma_halved: bool, origin: tuple[int, int]
) -> np.ndarray:
    """`(I - a*W) / (1 - a)` per pixel (H x W x 3 float, `a` H x W x 1). With
    `chroma_halved` (a 4:2:0 JPEG upload), luma is inverted per pixel and chroma per 2 x 2
    block of the photo's grid (`origin`: the crop's top-left in the photo), where the
    upload's chroma was stored: a thin stroke's colour, smeared over its block by the
    subsampling, is taken out where it went instead of where the stroke is."""
    if not chroma_halved:
        return np.asarray((obs - premult) / (1.0 - a), np.float32)
    i, c = obs @ _YCC.T, premult @ _YCC.T
    luma = (i[..., 0] - c[..., 0]) / (1.0 - a[..., 0])
    chroma = (_blocks(i[..., 1:], origin) - _blocks(c[..., 1:], origin)) / (1.0 - _blocks(a, origin))
    return np.dstack([luma, _unblock(chroma, luma.shape, origin)]) @ _RGB.T


def invert(rgb: np.ndarray, m: Match, chroma_halved: bool = False) -> Inversion:
    """Undo the blend of the matched template on `rgb` (see the module docstring); only the
    template's box changes.

    `chroma_halved`: the upload is a 4:2:0 JPEG, whose chroma is inverted at its own
    resolution (`unblend`). JPEG noise in the upload is amplified by 1 / (1 - a) in the
    inversion, so each pixel is the inversion and the background inpainted from the
    surroundings, weighted by the inverse of their expected error: the inversion's
    JPEG_NOISE / (1 - a), the inpainting's the texture of the surroundings carried in. Over
    a plain backdrop that is the inpainting, over a textured one the inversion."""
    t = m.template
    x0, y0, x1, y1 = t.box
    crop = rgb[y0:y1, x0:x1]
    shift = np.array([[1, 0, m.shift[0]], [0, 1, m.shift[1]]], np.float32)
    size = (x1 - x0, y1 - y0)
    alpha = cv2.warpAffine(t.alpha, shift, size, flags=cv2.INTER_LINEAR)
    premult = cv2.warpAffine(t.premult, shift, size, flags=cv2.INTER_LINEAR)
    on = alpha > 0.01
    hole = cv2.dilate(on.astype(np.uint8), np.ones((3, 3), np.uint8))
    guess = cv2.inpaint(crop, hole, 5, cv2.INPAINT_TELEA).astype(np.float32)
    obs = crop.astype(np.float32)
    scale = opacity_scale(obs, guess, alpha, premult)
    a = np.minimum(alpha * scale, 0.999)[..., None]
    inverted = unblend(obs, premult * scale, a, chroma_halved, (x0, y0))
    texture = cv2.inpaint(_local_var(crop), hole, 5, cv2.INPAINT_TELEA)[..., None]
    w_inv = ((1.0 - a) / JPEG_NOISE) ** 2
    w_guess = 1.0 / (texture + INPAINT_NOISE**2)
    out = (w_inv * inverted + w_guess * guess) / (w_inv + w_guess)
    restored = rgb.copy()
    restored[y0:y1, x0:x1] = np.where(on[..., None], np.clip(np.rint(out), 0, 255).astype(np.uint8), crop)
    full_alpha = np.zeros(rgb.shape[:2], np.float32)
    full_alpha[y0:y1, x0:x1] = a[..., 0]
    return Inversion(restored, full_alpha, full_alpha >= ALPHA_SOLID, float(scale))


def _local_var(rgb: np.ndarray, size: int = 7) -> np.ndarray:
    """Per-pixel variance of the grey levels in a size x size window (float32)."""
    g = _gray(rgb)
    mean = cv2.blur(g, (size, size))
    return np.asarray(np.maximum(cv2.blur(g * g, (size, size)) - mean * mean, 0.0), np.float32)


def opacity_scale(obs: np.ndarray, guess: np.ndarray, alpha: np.ndarray, premult: np.ndarray) -> float:
    """k of `I = k*c + (1 - k*a)*B` by least squares, with B the inpainted guess: the
    mark's contrast on this photo against the template's (clipped to 0.5-1.5)."""
    where = (alpha > 0.05) & (alpha < ALPHA_SOLID)
    if not where.any():
        return 1.0
    d = (obs - guess)[where]
    v = (premult - alpha[..., None] * guess)[where]
    den = float((v * v).sum())
    return float(np.clip((d * v).sum() / den, 0.5, 1.5)) if den > 0 else 1.0


def fill_residue(restored: np.ndarray, residue: np.ndarray) -> np.ndarray:
    """Telea over the pixels the inversion left (the pipeline has the remover do this)."""
    if not residue.any():
        return restored
    hole = cv2.dilate(residue.astype(np.uint8), np.ones((3, 3), np.uint8))
    return np.asarray(cv2.inpaint(restored, hole, 3, cv2.INPAINT_TELEA))
