"""Real-world text prior (issue 32): where is there text in a photo, and is each line
OVERLAID (a mark) or PRINTED on the product (keep it)?

- `TextDetector.load(path=None)`: the shipped PP-OCRv4 text detection network
  (weights/text_detector.onnx, see weights/text_detector.NOTICE) run with onnxruntime; the
  DB pre- and post-processing are written here (numpy + cv2), rapidocr is not a dependency.
- `TextDetector.lines(rgb) -> list[TextLine]`: one entry per detected line with its box,
  mask, detection score, `overlay` (0..1, how likely the line is overlaid text rather than
  printed product text) and the evidence behind it.
- `text_probability(rgb)` / `TextDetector.text_probability(rgb)`: the network's text
  probability map at image size.

`overlay` is a logistic regression over per-line evidence (`FEATURES`), with coefficients in
weights/text_prior.json, fitted by `python -m clearmark.models.text_prior --fit` on
synthetic marks composited on the TRAIN split of the real product photos (positives) and
the lines found on the clean TRAIN photos, i.e. real printed product text (negatives).
The same command without `--fit` reports on the DEV split.

Evidence per line (all computed on the network's input scale, long side `MAX_SIDE`):
- blend fit: `blend_corr`, `blend_slope` (glyph intensity following the background under
  it, as `a*C + (1-a)*B` does), `bg_texture` (gradient energy of the background around and
  between the glyphs), `glyph_std` (glyph colour spread relative to the background's);
- `halo` (an outline or halo next to the glyphs), `shadow` (an offset drop shadow);
- `repeats` (log of 1 + how many other lines look alike: tiled marks);
- `backdrop` (share of the line's background that is the photo's plain backdrop) and
  `crossing` (4 p (1 - p) of it: the line spans backdrop and product);
- `diagonal` (|sin 2 theta| of the line's direction), `corner` and `centre` (placement),
  `height` (line height / long side);
- `contrast` (glyph against background, /255) and `score` (mean detection probability).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from clearmark.models import logistic
from clearmark.models.logistic import Logistic
from clearmark.models.products import load_photo, mark_photo, split_paths
from clearmark.models.styles import FAMILIES, TRAIN
from clearmark.models.synth import blend, jpeg, render_watermark, visible_part
from clearmark.models.weights import WEIGHTS_DIR, MissingWeights

DETECTOR_PATH = WEIGHTS_DIR / "text_detector.onnx"
PRIOR_PATH = WEIGHTS_DIR / "text_prior.json"
# The network runs with the long side at most MAX_SIDE (a multiple of 32). PaddleOCR uses
# 960; on this project's 2-core CPU that took ~0.8 s a photo, 640 takes ~0.25 s.
MAX_SIDE = 640
THRESH = 0.3  # probability above which a pixel is text (DB's binarisation threshold)
BOX_THRESH = 0.5  # mean probability a line needs (rapidocr's box_thresh)
UNCLIP = 1.6  # DB's unclip ratio: the shrunk text kernel grows by area * UNCLIP / perimeter
MIN_SIDE = 3  # px at network scale: thinner components are dropped
# Thresholds on `overlay`, chosen on the TRAIN lines by
#   python -m clearmark.models.text_prior --products ../shared/data/products --fit
# (`choose_thresholds`: HIGH, the lowest level at which at most 1.5% of the clean train
# photos have a line; LOW, the level 95% of the train mark lines reach; also recorded in
# weights/text_prior.json). A line at or above OVERLAY_HIGH is taken for a mark, one below
# OVERLAY_LOW for printed product text; between them the pipeline decides by other evidence.
# Fitted on training's own kinds only (text, url, cjk, tiled, corner). On the DEV split
# with the held-out family (184 clean photos, the same 184 with one held-out text-like mark
# each, seed 0; python -m clearmark.models.text_prior --products ../shared/data/products
# --split dev --limit 184 --family heldout): per-line AUC 0.969; clean photos with a line
# >= HIGH 1.6%; marked photos with a mark line >= HIGH 55.4%; marked photos whose every mark
# line is < LOW 9.2%; no line found on the mark 17.9%.
OVERLAY_HIGH = 0.695
OVERLAY_LOW = 0.239

FEATURES = (
    "blend_corr",
    "blend_slope",
    "bg_texture",
    "glyph_std",
    "transmission",
    "halo",
    "shadow",
    "repeats",
    "backdrop",
    "crossing",
    "diagonal",
    "corner",
    "centre",
    "height",
    "contrast",
    "score",
)
# Training's own text-like kinds: never the held-out family's (banner, stamp, diagonal),
# which eval-real keeps unseen by every fitted part of the pipeline.
TEXT_KINDS = ["text", "url", "cjk", "tiled", "corner"]


@dataclass
class TextLine:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels (x1, y1 exclusive)
    # bool, shape (y1 - y0, x1 - x0): the CROP of the image at `box`; True inside the line's
    # (rotated, unclipped) text region
    mask: np.ndarray
    score: float  # mean text probability over the detected kernel
    overlay: float  # 0..1: overlaid text (a mark) rather than printed product text; nan without a prior
    evidence: dict[str, float] = field(default_factory=dict)
    angle: float = 0.0  # degrees of the line's direction from horizontal, in (-90, 90]


@dataclass
class _Raw:
    """A line at network scale, before mapping to the image."""

    rect: tuple[tuple[float, float], tuple[float, float], float]  # unclipped minAreaRect, long side first
    score: float
    feats: dict[str, float]
    desc: np.ndarray  # standardised column profile of the line, for repetition


def _session(path: Path, threads: int = 2) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class TextDetector:
    def __init__(self, session: ort.InferenceSession, prior: dict | None = None, max_side: int = MAX_SIDE):
        self.session = session
        self.input = session.get_inputs()[0].name
        self.prior = prior
        self.model = _model(prior) if prior is not None else None
        self.max_side = max_side

    @classmethod
    def load(
        cls, path: Path | str | None = None, prior: Path | str | None = None, max_side: int = MAX_SIDE
    ) -> TextDetector:
        """The detector from `path` (default: the shipped weights/text_detector.onnx) and the
        overlay prior from `prior` (default: weights/text_prior.json beside the shipped
        detector). A missing detector file is a MissingWeights error, and so is a missing
        prior; `prior=""` loads none (every `overlay` is then nan: for fitting one)."""
        path = Path(path) if path else DETECTOR_PATH
        if not path.exists():
            raise MissingWeights(f"no text detector at {path} (the shipped one is {DETECTOR_PATH})")
        coef = None
        if prior != "":
            ppath = Path(prior) if prior else PRIOR_PATH
            if not ppath.exists():
                raise MissingWeights(
                    f"no text prior at {ppath}: fit one with python -m clearmark.models.text_prior --fit"
                )
            coef = json.loads(ppath.read_text())
        return cls(_session(path), coef, max_side)

    # -- the network ------------------------------------------------------------------
    def _prepare(self, rgb: np.ndarray) -> np.ndarray:
        """The image at network scale (uint8 RGB, both sides multiples of 32)."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 image, got {rgb.shape} {rgb.dtype}")
        h, w = rgb.shape[:2]
        s = min(1.0, self.max_side / max(h, w))
        nh, nw = max(32, int(round(h * s / 32)) * 32), max(32, int(round(w * s / 32)) * 32)
        interp = cv2.INTER_AREA if nh * nw < h * w else cv2.INTER_LINEAR
        return cv2.resize(rgb, (nw, nh), interpolation=interp)

    def _probability(self, small: np.ndarray) -> np.ndarray:
        # rapidocr 1.4.4 (ch_ppocr_det): BGR as cv2 reads it, x / 255, mean 0.5, std 0.5
        x = (small[..., ::-1].astype(np.float32) / 255.0 - 0.5) / 0.5
        out = self.session.run(None, {self.input: x.transpose(2, 0, 1)[None]})[0]
        return np.asarray(out[0, 0], np.float32)

    def text_probability(self, rgb: np.ndarray) -> np.ndarray:
        """H x W float32 text probability at the image's size."""
        prob = self._probability(self._prepare(rgb))
        return cv2.resize(prob, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)

    # -- lines ------------------------------------------------------------------------
    def raw_lines(self, rgb: np.ndarray) -> tuple[np.ndarray, list[_Raw]]:
        """(image at network scale, its lines with their evidence)."""
        small = self._prepare(rgb)
        prob = self._probability(small)
        rects = _components(prob)
        if not rects:
            return small, []
        ctx = _ImageContext(small)
        raws = [_Raw(rect, score, *_line_features(ctx, rect)) for rect, score in rects]
        _repetition(raws)
        return small, raws

    def overlay(self, feats: dict[str, float]) -> float:
        if self.model is None:
            return float("nan")
        return float(self.model.predict(np.array([[feats[k] for k in self.model.features]]))[0])

    def lines(self, rgb: np.ndarray) -> list[TextLine]:
        """The text lines of an H x W x 3 uint8 RGB photo, strongest first. Each line's
        `mask` is the crop at its `box`, not a full-image mask."""
        small, raws = self.raw_lines(rgb)
        h, w = rgb.shape[:2]
        sx, sy = w / small.shape[1], h / small.shape[0]
        out = []
        for r in raws:
            pts = cv2.boxPoints(r.rect) * np.array([sx, sy], np.float32)
            x0, y0 = (int(max(0, math.floor(v))) for v in pts.min(axis=0))
            x1, y1 = int(min(w, math.ceil(pts[:, 0].max()) + 1)), int(min(h, math.ceil(pts[:, 1].max()) + 1))
            if x1 <= x0 or y1 <= y0:
                continue
            mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
            cv2.fillPoly(mask, [np.round(pts - [x0, y0]).astype(np.int32)], 1)
            feats = dict(r.feats)
            out.append(
                TextLine((x0, y0, x1, y1), mask.astype(bool), r.score, self.overlay(feats), feats, r.rect[2])
            )
        out.sort(key=lambda t: -t.score)
        return out


@lru_cache(maxsize=1)
def default_detector() -> TextDetector:
    return TextDetector.load()


def text_probability(rgb: np.ndarray) -> np.ndarray:
    """H x W float32 text probability of the shipped detector at the image's size."""
    return default_detector().text_probability(rgb)


# -- DB post-processing -------------------------------------------------------------------
def _components(
    prob: np.ndarray,
) -> list[tuple[tuple[tuple[float, float], tuple[float, float], float], float]]:
    """Unclipped min-area rectangles (long side first) and mean probabilities of the text kernels."""
    seg = cv2.dilate((prob > THRESH).astype(np.uint8), np.ones((2, 2), np.uint8))
    n, lab, stats, _ = cv2.connectedComponentsWithStats(seg, connectivity=8)
    out = []
    for i in range(1, min(n, 1000)):
        x, y, bw, bh, area = (int(v) for v in stats[i])
        if area < 10 or max(bw, bh) < MIN_SIDE * 2:
            continue
        sub = lab[y : y + bh, x : x + bw] == i
        ys, xs = np.nonzero(sub)
        (cx, cy), (rw, rh), ang = cv2.minAreaRect(np.stack([xs + x, ys + y], 1).astype(np.float32))
        if min(rw, rh) < MIN_SIDE:
            continue
        score = float(prob[y : y + bh, x : x + bw][sub].mean())
        if score < BOX_THRESH:
            continue
        if rw < rh:  # long side first, so the angle is the line's direction
            rw, rh, ang = rh, rw, ang - 90.0
        ang = (ang + 90.0) % 180.0 - 90.0
        if ang <= -90.0:
            ang += 180.0
        d = rw * rh * UNCLIP / (2 * (rw + rh))
        out.append((((cx, cy), (rw + 2 * d, rh + 2 * d), ang), score))
    return out


# -- evidence ------------------------------------------------------------------------------
class _ImageContext:
    """Per-image maps the line features share: grey, gradient, plain-backdrop mask."""

    def __init__(self, small: np.ndarray):
        self.rgb = small.astype(np.float32)
        self.grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
        gx = cv2.Sobel(self.grey, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(self.grey, cv2.CV_32F, 0, 1, ksize=3)
        self.grad = cv2.magnitude(gx, gy)
        h, w = self.grey.shape
        b = max(2, int(0.02 * min(h, w)))
        border = np.concatenate(
            [
                small[:b].reshape(-1, 3),
                small[-b:].reshape(-1, 3),
                small[:, :b].reshape(-1, 3),
                small[:, -b:].reshape(-1, 3),
            ]
        ).astype(np.float32)
        ref = np.median(border, axis=0)
        near = np.abs(border - ref).max(axis=1) < 14
        # a plain backdrop: most of the border is one colour; pixels of that colour that are flat
        if near.mean() > 0.5:
            ref8 = np.full_like(small, 0)
            ref8[:] = np.round(ref).astype(np.uint8)
            dist = cv2.absdiff(small, ref8).max(axis=2)
            flat = cv2.blur(self.grad, (5, 5)) < 12
            self.backdrop = ((dist < 14) & flat).astype(np.uint8)
        else:
            self.backdrop = np.zeros((h, w), np.uint8)
        self.shape = (h, w)


def _warp(img: np.ndarray, rect, margin: float, interp: int = cv2.INTER_LINEAR) -> np.ndarray:
    """The rotated rectangle plus `margin` px each side, turned horizontal."""
    (cx, cy), (rw, rh), ang = rect
    ww, hh = max(4, int(round(rw + 2 * margin))), max(4, int(round(rh + 2 * margin)))
    m = cv2.getRotationMatrix2D((cx, cy), ang, 1.0)
    m[0, 2] += ww / 2 - cx
    m[1, 2] += hh / 2 - cy
    return cv2.warpAffine(img, m, (ww, hh), flags=interp, borderMode=cv2.BORDER_REPLICATE)


def _odd(v: float) -> int:
    return max(3, int(v) | 1)


def _novel_colours(rgb: np.ndarray, core: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Core pixels farther (max over channels) from every ring colour than the core's Otsu
    split of those distances (at least 12 grey levels)."""
    ring_px = rgb[ring]
    if len(ring_px) < 8:
        return np.zeros_like(core)
    ring_px = ring_px[:: max(1, len(ring_px) // 256)]
    ring_px = np.unique(np.round(ring_px / 4), axis=0) * 4  # colours within 4 levels are one
    core_px = rgb[core]
    dist = np.full(len(core_px), np.inf, np.float32)
    for c in ring_px:  # at most a few hundred colours
        np.minimum(dist, np.abs(core_px - c).max(axis=1), out=dist)
    d8 = np.clip(dist, 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(d8.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    out = np.zeros_like(core)
    out[core] = dist > max(float(otsu), 12.0)
    return out


def _line_features(ctx: _ImageContext, rect) -> tuple[dict[str, float], np.ndarray]:
    (cx, cy), (rw, rh), ang = rect
    h, w = ctx.shape
    margin = max(2.0, 0.5 * rh)
    m = int(round(margin))
    grey = _warp(ctx.grey, rect, margin)
    rgb = _warp(ctx.rgb, rect, margin)
    grad = _warp(ctx.grad, rect, margin)
    backdrop = _warp(ctx.backdrop, rect, margin, cv2.INTER_NEAREST)
    hh, ww = grey.shape
    core = np.zeros_like(grey, bool)
    core[m : hh - m, m : ww - m] = True
    if not core.any():
        core[:] = True
    ring = ~core
    # glyphs: the core's pixels whose colour the ring around the line does not show ...
    glyph = _novel_colours(rgb, core, ring)
    if glyph.sum() < max(8, 0.02 * core.sum()):
        # ... or else thin strokes darker (black-hat) or brighter (top-hat) than their surroundings
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(0.45 * rh), _odd(0.45 * rh)))
        dark = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, k)
        bright = cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, k)
        resp = dark if dark[core].mean() >= bright[core].mean() else bright
        glyph = core & (resp >= max(6.0, float(np.percentile(resp[core], 85))))
        if glyph.sum() < 8:
            glyph = core.copy()
    gd = cv2.dilate(glyph.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    around = ~gd
    # the background under the glyphs, continued from around them
    bg = cv2.inpaint(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), gd.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    bg = bg.astype(np.float32)
    # semi-transparency: texture inside the strokes (away from their edges) like around them
    inner = cv2.erode(glyph.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    outer_grad = float(grad[ring & around].mean()) if (ring & around).any() else 0.0
    transmission = float(grad[inner].mean()) / (outer_grad + 8.0) if inner.any() else 0.0
    bg_grey = bg.mean(axis=2)
    ig, bgg = grey[glyph], bg_grey[glyph]
    contrast = float(np.abs(ig - bgg).mean()) / 255.0
    bstd = float(bgg.std())
    if bstd > 1e-3 and ig.std() > 1e-3:
        corr = float(np.corrcoef(ig, bgg)[0, 1])
        slope = float(np.cov(ig, bgg)[0, 1] / bgg.var())
    else:
        corr, slope = 0.0, 0.0
    weight = math.tanh(bstd / 8.0)
    texture = float(grad[around].mean()) / 255.0 if around.any() else 0.0
    glyph_std = float(np.std(rgb[glyph], axis=0).mean()) / (255.0 * contrast + 8.0)
    # halo / outline: right next to the glyphs vs a little further out
    r1 = max(1, int(round(0.06 * rh)))
    near = (
        cv2.dilate(glyph.astype(np.uint8), np.ones((2 * r1 + 1, 2 * r1 + 1), np.uint8)).astype(bool) & ~glyph
    )
    far = cv2.dilate(glyph.astype(np.uint8), np.ones((6 * r1 + 3, 6 * r1 + 3), np.uint8)).astype(
        bool
    ) & ~cv2.dilate(glyph.astype(np.uint8), np.ones((4 * r1 + 1, 4 * r1 + 1), np.uint8)).astype(bool)
    halo = (
        abs(float(np.median(grey[near])) - float(np.median(grey[far]))) / 255.0
        if near.any() and far.any()
        else 0.0
    )
    # drop shadow: one diagonal side of the glyphs differs from the opposite side
    s = max(1, int(round(0.08 * rh)))
    g8 = glyph.astype(np.uint8)
    plus = np.roll(g8, (s, s), (0, 1)).astype(bool) & ~gd
    minus = np.roll(g8, (-s, -s), (0, 1)).astype(bool) & ~gd
    shadow = (
        abs(float(grey[plus].mean()) - float(grey[minus].mean())) / 255.0
        if plus.any() and minus.any()
        else 0.0
    )
    outer = ring & around
    bd = float(backdrop[outer].mean()) if outer.any() else 0.0
    # placement at network scale
    diagonal = abs(math.sin(math.radians(2 * ang)))
    corners = min(math.hypot(cx - a, cy - b) for a in (0, w) for b in (0, h))
    half = math.hypot(w, h) / 2
    feats = {
        "blend_corr": corr * weight,
        "blend_slope": float(np.clip(slope, -1.0, 2.0)) * weight,
        "bg_texture": math.log1p(100 * texture),
        "glyph_std": min(glyph_std, 5.0),
        "transmission": min(transmission, 3.0),
        "halo": halo / (contrast + 0.02),
        "shadow": shadow / (contrast + 0.02),
        "repeats": 0.0,
        "backdrop": bd,
        "crossing": 4 * bd * (1 - bd),
        "diagonal": diagonal,
        "corner": 1 - corners / half,
        "centre": 1 - math.hypot(cx - w / 2, cy - h / 2) / half,
        "height": rh / max(h, w),
        "contrast": contrast,
        "score": 0.0,
    }
    core_crop = grey[m : hh - m, m : ww - m] if hh > 2 * m and ww > 2 * m else grey
    # the line's column profile at a height of 16 px: the same text gives the same profile
    # wherever a tile's crop begins
    ch, cw = core_crop.shape
    d = cv2.resize(core_crop, (max(4, round(cw * 16 / max(1, ch))), 16), interpolation=cv2.INTER_AREA)
    d = d.mean(axis=0)
    d = (d - d.mean()) / (d.std() + 1e-3)
    return feats, d


def _repetition(raws: list[_Raw]) -> None:
    """`repeats`: log(1 + the number of other lines of like size, direction and look)."""
    for r in raws:
        r.feats["score"] = r.score
    n = len(raws)
    if n < 2:
        return
    sizes = np.array([r.rect[1] for r in raws], np.float64)
    angs = np.array([r.rect[2] for r in raws], np.float64)
    for i, r in enumerate(raws):
        hr = sizes[:, 1] / sizes[i, 1]
        da = np.abs((angs - angs[i] + 90) % 180 - 90)
        cand = np.nonzero((hr > 0.8) & (hr < 1.25) & (da < 5))[0]
        r.feats["repeats"] = math.log1p(sum(1 for j in cand if j != i and _same_text(r.desc, raws[j].desc)))


def _same_text(a: np.ndarray, b: np.ndarray, level: float = 0.75) -> bool:
    """Whether the shorter column profile matches part of the longer one (normalised
    cross-correlation at its best shift at least `level`; profiles of 6+ samples)."""
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    if len(short) < 6 or len(short) < 0.3 * len(long):
        return False
    win = np.lib.stride_tricks.sliding_window_view(long, len(short))
    win = win - win.mean(axis=1, keepdims=True)
    num = win @ (short - short.mean())
    den = np.sqrt((win**2).sum(axis=1) * ((short - short.mean()) ** 2).sum()) + 1e-6
    return bool((num / den).max() >= level)


# -- calibration and evaluation on the real product photos -----------------------------------
def _mark(
    rng: np.random.Generator, photo: np.ndarray, family: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A text-like mark of `family` composited on `photo` (JPEG'd): (composite, alpha, kinds)."""
    if family == "train":  # the training palette and kinds
        h, w = photo.shape[:2]
        kinds = [str(rng.choice(TEXT_KINDS))]
        alpha, premult, labels = render_watermark(rng, h, w, max(h, w), kinds, photo.mean() / 255, TRAIN)
        alpha, premult = visible_part(photo, alpha, premult)
        return jpeg(blend(photo, alpha, premult), int(rng.integers(75, 98))), alpha, labels
    _, kinds_all, _ = FAMILIES[family]
    kinds = [str(rng.choice([k for k in kinds_all if k != "logo"]))]
    mp = mark_photo(rng, photo, family, kinds)
    return mp.composite, mp.alpha, mp.kinds


def _mark_share(
    det: TextDetector, small_shape: tuple[int, int], raws: list[_Raw], alpha: np.ndarray
) -> list[float]:
    """Share of each line's region that the mark covers (at network scale)."""
    a = cv2.resize(
        (alpha > 0.02).astype(np.uint8), (small_shape[1], small_shape[0]), interpolation=cv2.INTER_NEAREST
    )
    # glyphs fill only part of a line's box: the mark's pixels grown by a few px (the gaps
    # between letters and lines closed) stand for the region the mark's text takes up
    near = cv2.dilate(a, np.ones((7, 7), np.uint8)) > 0
    out = []
    for r in raws:
        m = np.zeros(small_shape, np.uint8)
        cv2.fillPoly(m, [np.round(cv2.boxPoints(r.rect)).astype(np.int32)], 1)
        inside = m > 0
        out.append(float((inside & near).sum()) / max(1, int(inside.sum())))
    return out


def collect(
    det: TextDetector, data: Path, split: str, limit: int, seed: int, family: str, side: int = 1024
) -> dict:
    """Per-line features of `limit` clean photos of `split` and of the same photos marked."""
    paths = list(split_paths(str(data), split))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))[:limit]
    rows: dict[str, list] = {"x": [], "y": [], "photo": [], "marked": []}
    for j, idx in enumerate(tqdm(order, desc=f"{split} photos", file=sys.stderr)):
        photo = load_photo(paths[int(idx)], side)
        prng = np.random.default_rng([seed, int(idx)])
        clean = jpeg(photo, int(prng.integers(75, 98)))
        _, raws = det.raw_lines(clean)
        for r in raws:
            rows["x"].append([r.feats[k] for k in FEATURES])
            rows["y"].append(0)
            rows["photo"].append(2 * j)
            rows["marked"].append(0)
        comp, alpha, _ = _mark(prng, photo, family)
        small, raws = det.raw_lines(comp)
        for r, share in zip(raws, _mark_share(det, small.shape[:2], raws, alpha)):
            if 0.05 < share < 0.4:  # partly on the mark: neither a clean negative nor a mark line
                continue
            rows["x"].append([r.feats[k] for k in FEATURES])
            rows["y"].append(1 if share >= 0.4 else 0)
            rows["photo"].append(2 * j + 1)
            rows["marked"].append(1)
    return {k: np.array(v, np.float64 if k == "x" else np.int64) for k, v in rows.items()}


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 3000) -> dict:
    """The prior's coefficients (`models.logistic.fit`), in text_prior.json's own keys."""
    m = logistic.fit(x, y, list(FEATURES), l2=l2, steps=steps, lr=1.0, scale_floor=1e-6)
    return {"features": m.features, "mean": m.mean, "std": m.scale, "coef": m.weights, "bias": m.bias}


def _model(prior: dict) -> Logistic:
    """text_prior.json's coefficients as the model that scores with them."""
    return Logistic(prior["features"], prior["mean"], prior["std"], prior["coef"], float(prior["bias"]))


def auc(score: np.ndarray, y: np.ndarray) -> float:
    pos, neg = score[y == 1], score[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    both = np.concatenate([pos, neg])
    order = np.argsort(both, kind="stable")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    _, inv = np.unique(both, return_inverse=True)
    ranks = (np.bincount(inv, ranks) / np.bincount(inv))[inv]  # ties share their mean rank
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def report(rows: dict, prob: np.ndarray, high: float, low: float) -> dict:
    """Per-line AUC and the per-photo shares at `high` / `low`."""
    photo, marked, y = rows["photo"], rows["marked"], rows["y"]
    n_photos = int(photo.max()) + 1 if len(photo) else 0
    clean_ids = range(0, n_photos, 2)
    marked_ids = range(1, n_photos, 2)
    clean_flag = [bool(((photo == i) & (prob >= high)).any()) for i in clean_ids]
    hit, all_low, no_line = [], [], []
    for i in marked_ids:
        sel = (photo == i) & (y == 1)
        no_line.append(not sel.any())
        hit.append(bool((prob[sel] >= high).any()))
        all_low.append(bool(sel.any() and (prob[sel] < low).all()))
    neg_marked = (marked == 1) & (y == 0)
    return {
        "lines": int(len(y)),
        "mark_lines": int(y.sum()),
        "auc": auc(prob, y),
        "auc_clean_negatives": auc(prob[(y == 1) | (marked == 0)], y[(y == 1) | (marked == 0)]),
        "clean_photos": len(clean_flag),
        "clean_any_high": float(np.mean(clean_flag)) if clean_flag else float("nan"),
        "marked_photos": len(hit),
        "marked_some_high": float(np.mean(hit)) if hit else float("nan"),
        "marked_all_low": float(np.mean(all_low)) if all_low else float("nan"),
        "marked_no_mark_line": float(np.mean(no_line)) if no_line else float("nan"),
        "printed_lines_on_marked_high": float((prob[neg_marked] >= high).mean())
        if neg_marked.any()
        else float("nan"),
    }


def choose_thresholds(rows: dict, prob: np.ndarray, clean_rate: float = 0.015) -> tuple[float, float]:
    """On the TRAIN lines: OVERLAY_HIGH, the lowest overlay at which at most `clean_rate` of
    the clean photos have a line; OVERLAY_LOW, the level 95% of the mark lines reach."""
    high = 0.995
    for q in np.arange(0.5, 0.996, 0.005):
        if report(rows, prob, float(q), 0.0)["clean_any_high"] <= clean_rate:
            high = float(q)
            break
    marks = prob[rows["y"] == 1]
    low = float(np.percentile(marks, 5)) if len(marks) else 0.5
    return round(high, 3), round(min(low, high), 3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m clearmark.models.text_prior", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--products", type=Path, default=Path("../shared/data/products"), help="the products folder"
    )
    ap.add_argument("--split", choices=("train", "dev"), default="dev", help="split to report on")
    ap.add_argument("--limit", type=int, default=184, help="photos of the split (each also marked once)")
    ap.add_argument(
        "--family", choices=("train", "heldout"), default="train", help="mark styles for the report"
    )
    ap.add_argument("--fit", action="store_true", help="first refit the prior on the TRAIN split")
    ap.add_argument("--fit-limit", type=int, default=300, help="TRAIN photos for --fit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--prior", type=Path, default=PRIOR_PATH, help="the prior JSON to read (and write with --fit)"
    )
    ap.add_argument("--high", type=float, default=OVERLAY_HIGH)
    ap.add_argument("--low", type=float, default=OVERLAY_LOW)
    args = ap.parse_args(argv)
    products = args.products
    if not (products / "split.csv").exists():
        print(f"error: no product photos at {products} (expected {products / 'split.csv'})", file=sys.stderr)
        return 2
    data = products.parent
    det = TextDetector.load(prior="")
    if args.fit:
        rows = collect(det, data, "train", args.fit_limit, args.seed + 1, "train")
        prior = fit_logistic(rows["x"], rows["y"])
        prior["fitted_on"] = {
            "split": "train",
            "photos": args.fit_limit,
            "lines": int(len(rows["y"])),
            "mark_lines": int(rows["y"].sum()),
            "seed": args.seed + 1,
            "max_side": det.max_side,
        }
        train_prob = _model(prior).predict(rows["x"])
        high, low = choose_thresholds(rows, train_prob)
        prior["thresholds_on_train"] = {"high": high, "low": low}
        args.prior.write_text(json.dumps(prior, indent=1) + "\n")
        print(
            f"fitted {args.prior} on {len(rows['y'])} train lines ({int(rows['y'].sum())} on marks); "
            f"train AUC {auc(train_prob, rows['y']):.3f}; thresholds chosen on train: "
            f"OVERLAY_HIGH={high} OVERLAY_LOW={low}"
        )
        if args.high == OVERLAY_HIGH and args.low == OVERLAY_LOW:
            args.high, args.low = high, low
    if not args.prior.exists():
        print(f"error: no prior at {args.prior}; run with --fit first", file=sys.stderr)
        return 2
    det.prior = json.loads(args.prior.read_text())
    t0 = time.perf_counter()
    rows = collect(det, data, args.split, args.limit, args.seed, args.family)
    secs = (time.perf_counter() - t0) / max(1, 2 * args.limit)
    prob = np.array([det.overlay(dict(zip(FEATURES, x))) for x in rows["x"]])
    r = report(rows, prob, args.high, args.low)
    print(
        f"{args.split} split: {r['clean_photos']} clean + {r['marked_photos']} marked photos "
        f"({args.family} marks), {secs:.2f} s a photo"
    )
    print(
        f"lines {r['lines']} ({r['mark_lines']} on marks); per-line AUC {r['auc']:.3f} "
        f"(mark lines vs clean photos' lines only: {r['auc_clean_negatives']:.3f})"
    )
    print(
        f"OVERLAY_HIGH={args.high}: clean photos with any line >= HIGH {r['clean_any_high']:.1%}; "
        f"marked photos with a mark line >= HIGH {r['marked_some_high']:.1%}"
    )
    print(
        f"OVERLAY_LOW={args.low}: marked photos whose every mark line is < LOW {r['marked_all_low']:.1%}; "
        f"marked photos with no line on the mark {r['marked_no_mark_line']:.1%}"
    )
    print(f"printed lines on marked photos >= HIGH {r['printed_lines_on_marked_high']:.1%}")
    for q in (0.5, 0.7, 0.8, 0.9, 0.95, 0.98):
        rq = report(rows, prob, q, args.low)
        print(
            f"  at HIGH={q}: clean any {rq['clean_any_high']:.1%}, marked some {rq['marked_some_high']:.1%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
