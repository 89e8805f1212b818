"""`clearmark catalogue eval`: catalogue marks learned and inverted on real product photos.

Each group is one seller: GROUP_SIZE photos of the split (none shared between groups), one
mark (a kind of `models.styles`' held-out family, opacity 0.15-0.7) at one place: the same
pixels on photos cropped to one square size (`absolute`), or the same place relative to the
size on photos of their own sizes (`relative`, the mark resampled with the photo). Every
photo is JPEG'd at its own quality (70-95), as a storefront would upload it.

The template is learned from the first K photos (K = 2, 4, 8, 16) and inverted on them
(`learned`) and on the group's last NEW photos, matched as new uploads (`new`). Reported:
the template against the true a*W (PSNR and SSIM over its box), per-photo PSNR inside the
true mark for template inversion (the residue where a >= ALPHA_SOLID inpainted by Telea),
true-mask Telea, doing nothing and, with engines, the single-image pipeline; and the match
scores of each K = 8 template on the group's photos, on clean photos and on the other
groups' photos (the last two: false matches at MATCH_THRESHOLD).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from clearmark.models.evaluate import psnr, ssim
from clearmark.models.products import load_photo, split_paths
from clearmark.models.styles import FAMILIES
from clearmark.models.synth import blend, render_watermark, visible_part
from clearmark.pipeline import catalogue
from clearmark.pipeline.catalogue import MATCH_THRESHOLD, RejectedGroup, Template

CATALOGUE_TAG = 4  # rng stream of this set (eval-real uses 3)
GROUP_SIZE = 20
NEW = 4  # photos per group kept back as new uploads
KS = (2, 4, 8, 16)
FRAME = 1000  # px, the square size of an absolute group's photos
RELATIVE_LONG = 1200  # px, the long side a relative group's photos are brought to (at most)
KINDS = ("text", "cjk", "logo", "banner", "url", "stamp", "corner", "text", "cjk", "logo")


@dataclass
class Photo:
    name: str
    clean: np.ndarray
    composite: np.ndarray
    upload: bytes
    mask: np.ndarray  # bool, the visible mark
    quality: int


@dataclass
class Group:
    name: str
    kind: str
    rule: str
    opacity: float
    photos: list[Photo]
    true_alpha: np.ndarray  # the mark as drawn on a FRAME x FRAME canvas
    true_premult: np.ndarray  # a*W (0-255), likewise
    rows: dict[str, list[float]] = field(default_factory=dict)


def _square(photo: np.ndarray, side: int) -> np.ndarray:
    h, w = photo.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return cv2.resize(photo[y : y + s, x : x + s], (side, side), interpolation=cv2.INTER_AREA)


def _long_side(photo: np.ndarray, side: int) -> np.ndarray:
    scale = side / max(photo.shape[:2])
    if scale >= 1:
        return photo
    size = (round(photo.shape[1] * scale), round(photo.shape[0] * scale))
    return cv2.resize(photo, size, interpolation=cv2.INTER_AREA)


def _jpeg(rgb: np.ndarray, quality: int) -> tuple[bytes, np.ndarray]:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality, subsampling=2)  # 4:2:0, as `invert` is told
    return buf.getvalue(), np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _render(rng: np.random.Generator, kind: str, bg_mean: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(alpha, premult 0-1) of one mark on a FRAME x FRAME canvas, scaled to an opacity
    drawn from 0.15-0.7."""
    pal, _, extra = FAMILIES["heldout"]
    for _ in range(20):
        alpha, premult, _ = render_watermark(rng, FRAME, FRAME, FRAME, [kind], bg_mean, pal, extra)
        if (alpha > 0).sum() >= 400:
            break
    opacity = float(rng.uniform(0.15, 0.7))
    f = opacity / max(float(alpha.max()), 1e-6)
    return alpha * f, premult * f, opacity


def build_groups(
    data_dir: str, split: str = "dev", n_groups: int = 8, seed: int = 0
) -> tuple[list[Group], list[np.ndarray]]:
    """The groups, and the split's photos no group uses (clean negatives, own size)."""
    rng = np.random.default_rng([CATALOGUE_TAG, seed])
    paths = list(split_paths(data_dir, split))
    order = rng.permutation(len(paths))
    if n_groups * GROUP_SIZE > len(paths):
        raise ValueError(f"{split} has {len(paths)} photos; {n_groups} groups need {n_groups * GROUP_SIZE}")
    groups = []
    for g in range(n_groups):
        chosen = [paths[int(k)] for k in order[g * GROUP_SIZE : (g + 1) * GROUP_SIZE]]
        rule = catalogue.ABSOLUTE if g % 2 == 0 else catalogue.RELATIVE
        raw = [load_photo(p) for p in chosen]
        fit = [_square(p, FRAME) if rule == catalogue.ABSOLUTE else _long_side(p, RELATIVE_LONG) for p in raw]
        kind = KINDS[g % len(KINDS)]
        alpha0, premult0, opacity = _render(rng, kind, float(np.mean([p.mean() for p in fit])) / 255)
        photos = []
        for path, photo in zip(chosen, fit):
            h, w = photo.shape[:2]
            alpha = (
                cv2.resize(alpha0, (w, h), interpolation=cv2.INTER_LINEAR)
                if (h, w) != alpha0.shape
                else alpha0
            )
            premult = (
                cv2.resize(premult0, (w, h), interpolation=cv2.INTER_LINEAR)
                if (h, w) != alpha0.shape
                else premult0
            )
            a_vis, _ = visible_part(photo, alpha, premult)
            quality = int(rng.integers(70, 96))
            upload, composite = _jpeg(blend(photo, alpha, premult), quality)
            _, clean = _jpeg(photo, quality)
            photos.append(Photo(path.name, clean, composite, upload, a_vis > 0, quality))
        groups.append(Group(f"g{g}-{kind}-{rule}", kind, rule, opacity, photos, alpha0, premult0 * 255.0))
    rest = [_long_side(load_photo(paths[int(k)]), RELATIVE_LONG) for k in order[n_groups * GROUP_SIZE :]]
    return groups, rest


def template_quality(t: Template, g: Group) -> tuple[float, float]:
    """PSNR and SSIM of the template's a*W against the truth, over the union of its box and
    the true mark's (the frame's other pixels are 0 in both)."""
    size = (t.frame[1], t.frame[0])
    true_alpha = cv2.resize(g.true_alpha, size, interpolation=cv2.INTER_LINEAR)
    true_premult = cv2.resize(g.true_premult, size, interpolation=cv2.INTER_LINEAR)
    est = np.zeros_like(true_premult)
    x0, y0, x1, y1 = t.box
    est[y0:y1, x0:x1] = t.premult
    ys, xs = np.nonzero((true_alpha > 0.02) | (est.max(-1) > 0))
    win = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return psnr(est[win], true_premult[win]), ssim(est[win], true_premult[win])


def template_output(t: Template, composite: np.ndarray) -> tuple[np.ndarray, float]:
    """The inverted photo (residue filled by Telea) and the match score."""
    m = catalogue.match(composite, t)
    if m is None:
        return composite, float("nan")
    inv = catalogue.invert(composite, m, chroma_halved=True)  # `_jpeg`: Pillow's 4:2:0
    return catalogue.fill_residue(inv.restored, inv.residue), m.score


def telea(p: Photo) -> np.ndarray:
    hole = cv2.dilate(p.mask.astype(np.uint8), np.ones((5, 5), np.uint8))
    return np.asarray(cv2.inpaint(p.composite, hole, 3, cv2.INPAINT_TELEA))


def _negatives(
    t: Template, g: Group, groups: list[Group], clean: list[np.ndarray]
) -> tuple[list[float], list[float]]:
    """Match scores of `t` on the clean photos and on the other groups' photos, each shown
    at the template's frame when its rule is absolute."""

    def fit(im: np.ndarray) -> np.ndarray:
        if t.rule == catalogue.RELATIVE:
            return im
        return im if im.shape[:2] == t.frame else _square(im, t.frame[0])

    def score(im: np.ndarray) -> float:
        m = catalogue.match(fit(im), t)
        return m.score if m is not None else float("-inf")

    on_clean = [score(im) for im in clean]
    on_others = [score(p.composite) for o in groups if o is not g for p in o.photos[:NEW]]
    return on_clean, on_others


def evaluate(groups: list[Group], clean: list[np.ndarray], pipeline=None, progress=None) -> dict:
    """Every number of the module docstring, per group; `pipeline(upload) -> uint8 RGB`
    (the single-image pipeline's output) when given."""
    out: dict = {"groups": [], "threshold": MATCH_THRESHOLD}
    for g in groups:
        row: dict = {"name": g.name, "opacity": round(g.opacity, 3), "rule": g.rule, "k": {}}
        new = g.photos[-NEW:]
        for k in KS:
            try:
                t = catalogue.estimate([p.composite for p in g.photos[:k]], min_images=2)
            except RejectedGroup as exc:
                row["k"][k] = {"rejected": str(exc)}
                continue
            learned = [psnr(template_output(t, p.composite)[0], p.clean, p.mask) for p in g.photos[:k]]
            # a photo on which the mark changes nothing visible (its mask empty) scores nan
            fresh = [template_output(t, p.composite) for p in new]
            entry: dict = {
                "template_psnr_ssim": template_quality(t, g),
                "learned": float(np.nanmean(learned)),
                "new": float(np.nanmean([psnr(o, p.clean, p.mask) for (o, _), p in zip(fresh, new)])),
                "new_scores": [s for _, s in fresh],
            }
            if k == 8:
                entry["on_clean"], entry["on_others"] = _negatives(t, g, groups, clean)
                per_image: dict[str, list[float]] = {
                    "template": learned,
                    "telea": [psnr(telea(p), p.clean, p.mask) for p in g.photos[:k]],
                    "none": [psnr(p.composite, p.clean, p.mask) for p in g.photos[:k]],
                }
                if pipeline is not None:
                    per_image["pipeline"] = [psnr(pipeline(p.upload), p.clean, p.mask) for p in g.photos[:k]]
                entry["per_image"] = per_image
            row["k"][k] = entry
        out["groups"].append(row)
        if progress is not None:
            progress(g.name)
    return out


THRESHOLD_STEP = 0.05  # a chosen threshold is a multiple of this
THRESHOLD_MARGIN = 0.05  # above the highest score of a photo without the template's mark


def scores_at_k8(res: dict) -> tuple[list[float], list[float]]:
    """(scores of the groups' new uploads, scores on clean photos and other groups' photos)
    of the K = 8 templates."""
    pos: list[float] = []
    neg: list[float] = []
    for r in res["groups"]:
        e = r["k"].get(8, {})
        if "on_clean" in e:
            pos += e["new_scores"]
            neg += e["on_clean"] + e["on_others"]
    return pos, neg


def choose_threshold(res: dict) -> float:
    """The match threshold this run supports: the highest score of a photo without the
    mark plus THRESHOLD_MARGIN, rounded up to THRESHOLD_STEP (MATCH_THRESHOLD is this on
    the train split: `clearmark catalogue eval --split train --no-pipeline`)."""
    _, neg = scores_at_k8(res)
    top = max([s for s in neg if np.isfinite(s)], default=0.0)
    return float(np.ceil((top + THRESHOLD_MARGIN) / THRESHOLD_STEP - 1e-9) * THRESHOLD_STEP)


def format_report(res: dict) -> str:
    lines = [f"match threshold {res['threshold']}"]
    head = f"{'group':24} {'rule':8} {'opac':>5} " + " ".join(f"{'K=' + str(k):>11}" for k in KS)
    lines += ["template PSNR/SSIM of a*W, then PSNR inside the mark (learned photos / new uploads)", head]
    for r in res["groups"]:
        cells, cells2 = [], []
        for k in KS:
            e = r["k"].get(k, {})
            if "rejected" in e or not e:
                cells.append(f"{'rejected':>11}")
                cells2.append(f"{'rejected':>11}")
                continue
            p, s = e["template_psnr_ssim"]
            cells.append(f"{p:6.1f}/{s:.2f}".rjust(11))
            cells2.append(f"{e['learned']:5.1f}/{e['new']:4.1f}".rjust(11))
        lines.append(f"{r['name']:24} {r['rule']:8} {r['opacity']:5.2f} " + " ".join(cells))
        lines.append(f"{'':24} {'':8} {'':5} " + " ".join(cells2))
    methods = ("template", "pipeline", "telea", "none")
    lines += [
        "",
        "K = 8, mean PSNR inside the mark over the 8 photos",
        f"{'group':24} " + " ".join(f"{m:>9}" for m in methods),
    ]
    pooled: dict[str, list[float]] = {m: [] for m in methods}
    neg_clean: list[float] = []
    neg_other: list[float] = []
    pos: list[float] = []
    for r in res["groups"]:
        e = r["k"].get(8, {})
        if "per_image" not in e:
            continue
        cells = []
        for m in methods:
            v = e["per_image"].get(m)
            cells.append(f"{np.nanmean(v):9.2f}" if v else f"{'-':>9}")
            pooled[m] += v or []
        lines.append(f"{r['name']:24} " + " ".join(cells))
        neg_clean += e["on_clean"]
        neg_other += e["on_others"]
        pos += e["new_scores"]
    means = (f"{np.nanmean(pooled[m]):9.2f}" if pooled[m] else f"{'-':>9}" for m in methods)
    lines.append(f"{'all':24} " + " ".join(means))
    th = res["threshold"]
    lines += [
        "",
        f"K = 8 match scores: new uploads of the group min {min(pos):.3f} (below {th}: "
        f"{sum(s < th for s in pos)} of {len(pos)}); clean photos max {max(neg_clean):.3f} "
        f"(false matches {sum(s >= th for s in neg_clean)} of {len(neg_clean)}); other groups' photos "
        f"max {max(neg_other):.3f} (false matches {sum(s >= th for s in neg_other)} of {len(neg_other)})",
    ]
    chosen = choose_threshold(res)
    lines.append(
        f"this run would choose the threshold {chosen:.2f} (highest score without the mark + "
        f"{THRESHOLD_MARGIN}); new uploads of the groups at or above it: "
        f"{sum(s >= chosen for s in pos)} of {len(pos)}"
    )
    return "\n".join(lines)
