"""Repetition detector (issue 32): a mark tiled over the photo (a diagonal lattice of a
stock-site name, repeated shop names or icons) is periodic in the overlay. This finds the
lattice and paints a per-pixel mask of the repeated mark.

Method, at `WORK_SIDE` px on the long side:
1. Luminance high-pass (image minus a Gaussian blur), divided by its local RMS and clipped,
   so that a faint mark over a flat backdrop weighs as much as the product's strong edges.
2. Normalised 2-D autocorrelation by FFT (zero-padded, corrected for the overlap at each
   lag). A tiled mark gives sharp peaks at every lattice lag `n*v1 + m*v2`.
3. Lattice: among the sharpest off-origin peaks (height minus the ring around them, so
   that a stripe pattern's ridges are not peaks), the pair of non-collinear vectors whose
   lattice points are best supported by sharp peaks; refined by least squares over the
   peaks near the predicted lattice points, reduced to the shortest basis and to the
   finest lattice whose points are all peaks. A weave or grille has a period under
   `MIN_PERIOD`; a grid of lines (tiles) correlates all along its lattice vectors
   (`ridge`), which zeroes the score. The score grows with the support (`_score`).
4. Template: the high-pass image folded onto one lattice cell (shift-and-average makes a
   faint mark strong and averages the product away); its strokes (the cell bins where at
   least FRAC_T of the cells show a stroke: a median-like vote that one product edge does
   not sway) are painted back over every cell, kept where the local high-pass image
   correlates with the unfolded mean template.

`python -m clearmark.models.repetition --products DIR --split dev --limit N` reports the
false-alarm rate on clean photos and the hit rate and mask F1 on photos with a synthetic
tiled mark (the photo scaled to 1,024 px, a `kinds=["tiled"]` mark of the train palette,
opacity 0.15-0.7, JPEG 75-97). Dev, all 184 photos, seed 0 (after the thresholds were set on
train): clean 0.5% at or above REPEAT_HIGH and 6.5% at or above REPEAT_LOW; tiled 92.9% at or
above REPEAT_HIGH and 3.3% at or below REPEAT_LOW; mask F1 0.653 over all tiled photos (0.692
over those found); 0.041 s per 1,024 px photo.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from clearmark.models.products import load_photo, mark_photo, split_paths

WORK_SIDE = 512  # long side the lattice is searched at
HP_SIGMA = 2.5  # high-pass: luminance minus its Gaussian blur of this sigma (work px)
NORM_SIGMA = 10.0  # local RMS window of the high-pass normalisation
NORM_FLOOR = 3.0  # grey levels: flat areas are not amplified above this noise floor
CLIP = 3.0  # normalised high-pass clipped to +-CLIP
MIN_PERIOD = WORK_SIDE / 16  # shorter lattice vectors are weave or tiles: marks tile at 1/8-1/2 of the image
MAX_LAG = 0.5  # lags up to this share of the image size are searched
N_CANDIDATES = 14  # strongest peaks tried as lattice vectors
NCC_WINDOW = 15  # px: window of the local template match
NCC_T = 0.25  # a mask pixel's neighbourhood matches the unfolded template at least this
STROKE_T = 0.6  # normalised high-pass (mark's sign) above this is a stroke pixel
FRAC_T = 0.25  # a cell bin is the mark where this share of the lattice cells show a stroke
PEAK_RING = 5  # px: a peak's sharpness is its height minus the ring at this radius
SUPPORT_HALF = 0.02  # lattice support that scores 0.5
# Autocorrelation along the lattice vectors (between the lattice points): tiled marks on
# train stay under 0.18, grids of lines (tiles, grilles) reach 0.4 and more.
RIDGE_OK, RIDGE_MAX = 0.2, 0.35
# Score thresholds, chosen on train with
#   python -m clearmark.models.repetition --products ../shared/data/products --split train --limit 300
# (300 clean train photos: 0.3% at or above REPEAT_HIGH, 4.3% at or above REPEAT_LOW; the same
# photos with a tiled mark: 90% at or above REPEAT_HIGH, 4.7% at or below REPEAT_LOW).
REPEAT_HIGH = 0.35  # this sure: a tiled mark
REPEAT_LOW = 0.25  # below: no repetition


@dataclass
class Repetition:
    score: float  # 0..1
    period: tuple[tuple[float, float], tuple[float, float]] | None  # lattice vectors (x, y), image px
    mask: np.ndarray  # bool HxW (image size); all False when none
    evidence: dict[str, float] = field(default_factory=dict)


def _highpass(gray: np.ndarray) -> np.ndarray:
    hp = gray - cv2.GaussianBlur(gray, (0, 0), HP_SIGMA)
    k = 2 * int(NORM_SIGMA) + 1
    rms = np.sqrt(np.maximum(cv2.boxFilter(hp * hp, -1, (k, k)), 0)) + NORM_FLOOR
    return np.clip(hp / rms, -CLIP, CLIP).astype(np.float32)


def _autocorrelation(hp: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation (1 at lag 0) for lags up to `MAX_LAG` of the image size,
    origin at the centre: lag (dy, dx) is at [cy + dy, cx + dx]."""
    h, w = hp.shape
    ly, lx = int(MAX_LAG * h), int(MAX_LAG * w)
    ph, pw = cv2.getOptimalDFTSize(h + ly + 1), cv2.getOptimalDFTSize(w + lx + 1)
    pad = np.zeros((ph, pw), np.float32)
    pad[:h, :w] = hp - hp.mean()
    f = cv2.dft(pad)
    ac = cv2.idft(cv2.mulSpectrums(f, f, 0, conjB=True), flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
    rows = np.r_[ph - ly : ph, 0 : ly + 1]
    cols = np.r_[pw - lx : pw, 0 : lx + 1]
    ac = ac[rows][:, cols]
    dy = np.abs(np.arange(-ly, ly + 1, dtype=np.float32))
    dx = np.abs(np.arange(-lx, lx + 1, dtype=np.float32))
    overlap = np.outer((h - dy) / h, (w - dx) / w)
    ac = ac / overlap
    return (ac / max(float(ac[ly, lx]), 1e-6)).astype(np.float32)


_ANGLES = np.linspace(0, 2 * np.pi, 32, endpoint=False)


def _bilinear(ac: np.ndarray, ry: np.ndarray, rx: np.ndarray) -> np.ndarray:
    h, w = ac.shape
    ry, rx = np.clip(ry, 0, h - 1.001), np.clip(rx, 0, w - 1.001)
    y0, x0 = ry.astype(int), rx.astype(int)
    fy, fx = ry - y0, rx - x0
    return np.asarray(
        ac[y0, x0] * (1 - fy) * (1 - fx)
        + ac[y0 + 1, x0] * fy * (1 - fx)
        + ac[y0, x0 + 1] * (1 - fy) * fx
        + ac[y0 + 1, x0 + 1] * fy * fx
    )


def _sharpness(ac: np.ndarray, dil: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Peak height minus the highest point near the ring around it (radius PEAK_RING; a
    3x3 maximum, so that the crest of a ridge, which a stripe pattern gives, is met where
    it crosses the ring between pixels: `dil` is `ac` dilated by 3x3)."""
    h, w = ac.shape
    ys, xs = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
    ry = np.clip(np.round(ys[:, None] + PEAK_RING * np.sin(_ANGLES)).astype(int), 0, h - 1)
    rx = np.clip(np.round(xs[:, None] + PEAK_RING * np.cos(_ANGLES)).astype(int), 0, w - 1)
    return ac[ys, xs] - dil[ry, rx].max(axis=1)


def _local_peak(ac: np.ndarray, y: float, x: float, rad: int = 2) -> tuple[float, float, float]:
    """Sub-pixel position and height of the highest point within `rad` of (y, x)."""
    h, w = ac.shape
    yi, xi = int(round(y)), int(round(x))
    y0, y1, x0, x1 = max(1, yi - rad), min(h - 1, yi + rad + 1), max(1, xi - rad), min(w - 1, xi + rad + 1)
    if y0 >= y1 or x0 >= x1:
        return y, x, 0.0
    win = ac[y0:y1, x0:x1]
    k = int(np.argmax(win))
    py, px = y0 + k // win.shape[1], x0 + k % win.shape[1]
    c = ac[py, px]

    def sub(a: float, b: float) -> float:
        d = a - 2 * c + b
        return float(np.clip(0.5 * (a - b) / d, -0.5, 0.5)) if d < 0 else 0.0

    py2 = min(py + 1, h - 1)
    px2 = min(px + 1, w - 1)
    return py + sub(ac[py - 1, px], ac[py2, px]), px + sub(ac[py, px - 1], ac[py, px2]), float(c)


def _find_lattice(ac: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, dict[str, float]] | None:
    """Two lattice vectors (rows, (dy, dx), work px) and the evidence, or None."""
    h, w = ac.shape
    cy, cx = h // 2, w // 2
    dil = cv2.dilate(ac, np.ones((5, 5), np.uint8))
    yy, xx = np.nonzero((ac >= dil) & (ac > 0.01))
    dy, dx = yy - cy, xx - cx
    # one half-plane (the autocorrelation is symmetric), off the origin's neighbourhood
    keep = ((dy > 0) | ((dy == 0) & (dx > 0))) & (np.hypot(dy, dx) >= MIN_PERIOD)
    yy, xx = yy[keep], xx[keep]
    if len(yy) < 2:
        return None
    dil3 = cv2.dilate(ac, np.ones((3, 3), np.uint8))
    sharp = _sharpness(ac, dil3, yy, xx)
    order = np.argsort(-sharp)[: N_CANDIDATES * 3]
    yy, xx, sharp = yy[order], xx[order], sharp[order]
    top = order[:N_CANDIDATES]
    cand = np.stack([yy[: len(top)] - cy, xx[: len(top)] - cx], 1).astype(np.float64)
    # sharpness map at lattice points: max over a 3x3 neighbourhood of the sharp peaks
    smap = np.zeros_like(ac)
    smap[yy, xx] = np.maximum(sharp, 0)
    smap = cv2.dilate(smap, np.ones((3, 3), np.uint8))
    nm = np.array([(n, m) for n in range(-3, 4) for m in range(-3, 4) if (n, m) != (0, 0)], np.float64)
    pairs: list[tuple[float, float, int, int]] = []  # (support, cell area, i, j)
    for i in range(len(cand)):
        for j in range(i + 1, len(cand)):
            a, b = cand[i], cand[j]
            area = abs(a[0] * b[1] - a[1] * b[0])
            if area / (np.hypot(*a) * np.hypot(*b)) < 0.3:  # under ~17 degrees apart: stripes
                continue
            pts = nm[:, :1] * a + nm[:, 1:] * b
            inside = (np.abs(pts[:, 0]) <= MAX_LAG * shape[0] - 2) & (
                np.abs(pts[:, 1]) <= MAX_LAG * shape[1] - 2
            )
            if inside.sum() < 6:
                continue
            p = pts[inside]
            sup = smap[np.round(p[:, 0] + cy).astype(int), np.round(p[:, 1] + cx).astype(int)]
            pairs.append((float(np.mean(sup)), float(area), i, j))
    if not pairs:
        return None
    # a sub-lattice of the mark's lattice is as well supported: take the finest pair
    # among the well-supported ones
    top_support = max(p[0] for p in pairs)
    best = min((p for p in pairs if p[0] >= 0.85 * top_support), key=lambda p: p[1])
    support, _, i, j = best
    basis = np.stack([cand[i], cand[j]])
    # least-squares refinement over the peaks near the predicted lattice points
    rows, obs = [], []
    for n, m in nm:
        p = n * basis[0] + m * basis[1]
        if abs(p[0]) > MAX_LAG * shape[0] - 3 or abs(p[1]) > MAX_LAG * shape[1] - 3:
            continue
        py, px, c = _local_peak(ac, p[0] + cy, p[1] + cx)
        if c > 0.02:
            rows.append((n, m))
            obs.append((py - cy, px - cx))
    if len(rows) >= 3:
        sol, *_ = np.linalg.lstsq(np.array(rows, np.float64), np.array(obs, np.float64), rcond=None)
        if np.linalg.matrix_rank(sol) == 2:
            basis = sol
    basis = _finest(ac, dil3, _reduce(basis))
    if np.hypot(*basis[0]) < MIN_PERIOD:  # the peaks tried were multiples of a fine weave's lags
        return None
    peaks = [_local_peak(ac, basis[k, 0] + cy, basis[k, 1] + cx) for k in range(2)]
    heights = [p[2] for p in peaks]
    sharp_basis = _sharpness(
        ac, dil3, np.array([round(p[0]) for p in peaks]), np.array([round(p[1]) for p in peaks])
    )
    # a grid of lines (tiles, grilles, shelves) correlates all along its lattice vectors
    # (a ridge from the origin through every lattice point); a tiled mark only at them
    along = np.array([0.35, 0.5, 0.65])
    ridge = max(float(np.median(_bilinear(ac, cy + along * v[0], cx + along * v[1]))) for v in basis)
    lens = np.hypot(basis[:, 0], basis[:, 1])
    area = abs(basis[0, 0] * basis[1, 1] - basis[0, 1] * basis[1, 0])
    ev = {
        "support": support,
        "height1": float(heights[0]),
        "height2": float(heights[1]),
        "sharp_max": float(sharp[0]),
        "sharp_basis": float(sharp_basis.min()),
        "period_short": float(lens.min()),
        "period_long": float(lens.max()),
        "repeats": float(shape[0] * shape[1] / max(area, 1.0)),
        "lattice_hits": float(len(rows)),
        "ridge": ridge,
    }
    return basis, ev


def _finest(ac: np.ndarray, dil3: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """`basis`, or a finer lattice where a fraction of a lattice vector (or the cell's
    centre) is as sharp a peak as the vectors themselves: the peaks tried may all have been
    multiples of a shorter period."""
    h, w = ac.shape
    cy, cx = h // 2, w // 2

    def sharp_at(v: np.ndarray) -> float:
        py, px, _ = _local_peak(ac, v[0] + cy, v[1] + cx, 1)
        return float(_sharpness(ac, dil3, np.array([round(py)]), np.array([round(px)]))[0])

    for _ in range(4):
        ref = 0.5 * max(sharp_at(basis[0]), sharp_at(basis[1]))
        if ref <= 0.005:
            return basis
        finer = None
        tries = [(basis[i], k) for k in (2, 3, 4, 5) for i in (0, 1)] + [(basis[0] + basis[1], 2)]
        for v, k in tries:
            # every multiple of the fraction up to v is a peak (a letter repeated within the
            # mark gives a peak at one of them only)
            if np.hypot(*v) / k >= 4 and all(sharp_at(v * j / k) >= ref for j in range(1, k)):
                finer = v / k
                break
        if finer is None:
            return basis
        # the finer vector with the basis vector it is not parallel to
        other = basis[1] if abs(finer[0] * basis[1][1] - finer[1] * basis[1][0]) > 1e-6 else basis[0]
        basis = _reduce(np.stack([finer, other]))
    return basis


def _reduce(basis: np.ndarray) -> np.ndarray:
    """Lagrange-Gauss reduction: the shortest pair of vectors spanning the lattice."""
    a, b = basis[0].copy(), basis[1].copy()
    for _ in range(20):
        if a @ a > b @ b:
            a, b = b, a
        mu = round(float(a @ b) / float(a @ a))
        if mu == 0:
            break
        b = b - mu * a
    return np.stack([a, b])


def _fold(hp: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell bin of every pixel, the mean high-pass per bin and the pixels per bin."""
    h, w = hp.shape
    inv = np.linalg.inv(basis.T)  # (dy, dx) -> lattice coordinates
    n1, n2 = (max(4, int(round(float(np.hypot(*v))))) for v in basis)
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    c1 = (np.float32(inv[0, 0]) * ys + np.float32(inv[0, 1]) * xs) % 1.0
    c2 = (np.float32(inv[1, 0]) * ys + np.float32(inv[1, 1]) * xs) % 1.0
    idx = (
        np.minimum((c1 * n1).astype(np.int32), n1 - 1) * n2 + np.minimum((c2 * n2).astype(np.int32), n2 - 1)
    ).ravel()
    cnt = np.bincount(idx, minlength=n1 * n2)
    tot = np.bincount(idx, weights=hp.ravel(), minlength=n1 * n2)
    tmpl = tot / np.maximum(cnt, 1)
    return idx, tmpl, cnt


def _score(ev: dict[str, float]) -> float:
    """0..1 from the lattice support (mean sharpness of the peaks at the lattice points):
    half at SUPPORT_HALF; none for a lattice whose vectors lie on ridges (a grid of lines)."""
    ridge_ok = np.clip((RIDGE_MAX - ev["ridge"]) / (RIDGE_MAX - RIDGE_OK), 0.0, 1.0)
    s = max(ev["support"], 0.0) * float(ridge_ok)
    return float(s / (s + SUPPORT_HALF))


def find_repetition(rgb: np.ndarray) -> Repetition:
    """Look for a tiled (periodic) mark over `rgb` (HxWx3 uint8)."""
    H, W = rgb.shape[:2]
    empty = np.zeros((H, W), bool)
    full = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale, gray = _scaled(full, WORK_SIDE)
    hp = _highpass(gray)
    ac = _autocorrelation(hp)
    found = _find_lattice(ac, hp.shape)
    if found is None:
        return Repetition(0.0, None, empty, {})
    basis, ev = found
    score = _score(ev)
    ev["score"] = score
    period = (
        (float(basis[0, 1] / scale), float(basis[0, 0] / scale)),
        (float(basis[1, 1] / scale), float(basis[1, 0] / scale)),
    )
    if score < REPEAT_LOW:
        return Repetition(score, period, empty, ev)
    # (drawing the mask at 1,024 px instead, with the lattice scaled up, cost F1 on train:
    # the lattice's error grows with the scale)
    return Repetition(score, period, _mark_mask(hp, basis, ev, (H, W)), ev)


def _scaled(gray: np.ndarray, side: int) -> tuple[float, np.ndarray]:
    """(scale, float32 `gray` scaled down to `side` px on the long side; never up)."""
    h, w = gray.shape
    scale = side / max(h, w)
    if scale >= 1:
        return 1.0, gray.astype(np.float32)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return scale, cv2.resize(gray, size, interpolation=cv2.INTER_AREA).astype(np.float32)


def _mark_mask(
    hp: np.ndarray, basis: np.ndarray, ev: dict[str, float], out_shape: tuple[int, int]
) -> np.ndarray:
    """The repeated mark's pixels (image size `out_shape`): cell bins where at least
    FRAC_T of the lattice cells show a stroke (an indicator median: a product edge shows
    in one cell only), painted over every cell, kept where the neighbourhood matches the
    unfolded mean template."""
    idx, tmpl, cnt = _fold(hp, basis)
    sign = 1.0 if np.percentile(tmpl, 99.5) >= -np.percentile(tmpl, 0.5) else -1.0
    s_hp = sign * hp
    stroke = (s_hp > STROKE_T).ravel()
    frac = np.bincount(idx, weights=stroke, minlength=len(cnt)) / np.maximum(cnt, 1)
    cell = frac[idx].reshape(hp.shape).astype(np.float32)
    unfolded = (sign * tmpl)[idx].reshape(hp.shape).astype(np.float32)
    k = (NCC_WINDOW, NCC_WINDOW)
    num = cv2.boxFilter(s_hp * unfolded, -1, k)
    den = cv2.boxFilter(s_hp * s_hp, -1, k) * cv2.boxFilter(unfolded * unfolded, -1, k)
    ncc = num / (np.sqrt(np.maximum(den, 0)) + 1e-6)
    keep = ncc > NCC_T
    prob = np.where(keep, cell, 0).astype(np.float32)
    ev["template_peak"] = float(np.percentile(sign * tmpl, 99.5))
    ev["mark_share"] = float(np.mean(frac >= FRAC_T))
    if prob.shape != out_shape:
        prob = np.asarray(cv2.resize(prob, (out_shape[1], out_shape[0]), interpolation=cv2.INTER_LINEAR))
    return np.asarray(prob >= FRAC_T)


EVAL_SIDE = 1024  # eval photos are scaled to this long side before a mark is drawn


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = float(np.count_nonzero(pred & truth))
    denom = float(np.count_nonzero(pred) + np.count_nonzero(truth))
    return 2 * tp / denom if denom else 1.0


def evaluate(
    products: Path, split: str, limit: int, seed: int = 0, rows: list[dict] | None = None
) -> dict[str, float]:
    """Scores of clean photos and of the same photos with a synthetic tiled mark (one row
    per photo appended to `rows`)."""
    paths = split_paths(str(products.parent), split)
    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in rng.permutation(len(paths))[: limit or len(paths)]]
    clean, marked, f1s, secs = [], [], [], []
    for path in tqdm(chosen, desc=f"repetition {split}", unit="photo"):
        photo = load_photo(path, EVAL_SIDE)
        neg = mark_photo(rng, photo, "train", kinds=[])
        pos = mark_photo(rng, photo, "train", kinds=["tiled"])
        clean.append(find_repetition(neg.composite).score)
        t0 = time.perf_counter()
        found = find_repetition(pos.composite)
        secs.append(time.perf_counter() - t0)
        marked.append(found.score)
        f1s.append(_f1(found.mask, pos.mask))
        if rows is not None:
            rows.append(
                {"file": str(path), "clean": clean[-1], "tiled": marked[-1], "f1": f1s[-1], **found.evidence}
            )
    c, m = np.array(clean), np.array(marked)
    out = {
        "photos": float(len(chosen)),
        "clean_ge_high": float(np.mean(c >= REPEAT_HIGH)),
        "clean_ge_low": float(np.mean(c >= REPEAT_LOW)),
        "marked_ge_high": float(np.mean(m >= REPEAT_HIGH)),
        "marked_le_low": float(np.mean(m <= REPEAT_LOW)),
        "mask_f1": float(np.mean(f1s)),
        "seconds_per_photo": float(np.mean(secs)),
    }
    for q in (0.95, 0.99, 1.0):  # for choosing the thresholds (on train)
        thr = float(np.quantile(c, q))
        out[f"clean_q{round(q * 100)}"] = thr
        out[f"marked_ge_clean_q{round(q * 100)}"] = float(np.mean(m >= thr))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--products", type=Path, required=True, help="the products/ folder of the shared data")
    ap.add_argument("--split", choices=("train", "dev"), default="dev")
    ap.add_argument("--limit", type=int, default=0, help="at most this many photos (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=Path, help="write one CSV row per photo here")
    args = ap.parse_args(argv)
    if not (args.products / "split.csv").is_file():
        print(f"error: {args.products} is not the products folder (no split.csv there)", file=sys.stderr)
        return 2
    rows: list[dict] = []
    res = evaluate(args.products, args.split, args.limit, args.seed, rows)
    if args.rows:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(args.rows, "w", newline="") as f:
            csv.DictWriter(f, keys).writeheader()
            csv.DictWriter(f, keys).writerows(rows)
    print(
        f"split {args.split}, {int(res['photos'])} photos; REPEAT_HIGH {REPEAT_HIGH}, REPEAT_LOW {REPEAT_LOW}"
    )
    print(f"clean:  score >= HIGH {res['clean_ge_high']:.1%}   score >= LOW {res['clean_ge_low']:.1%}")
    print(f"tiled:  score >= HIGH {res['marked_ge_high']:.1%}   score <= LOW {res['marked_le_low']:.1%}")
    print(f"mask F1 (all tiled photos) {res['mask_f1']:.3f}; {res['seconds_per_photo']:.3f} s per photo")
    print(
        "clean score quantiles 95/99/100%: "
        + ", ".join(
            f"{res[f'clean_q{q}']:.3f} (tiled above: {res[f'marked_ge_clean_q{q}']:.1%})"
            for q in (95, 99, 100)
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
