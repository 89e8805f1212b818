"""`clearmark eval`: held-out synthetic set, the shipped models vs two baselines.

The set is built from seeds in their own stream (`EVAL_TAG`, never used by training) and
from photos in the held-out split of `models.scenes` (one in eight by filename hash), at
catalogue resolution (long side 800-1600 px; grocery photos are upscaled to it). Slices:
- `wm`: watermarked images (studio scenes and photos, every kind);
- `clean`: no watermark at all; a method "fires" on an image if it changes any pixel;
- `text`: studio scenes whose product carries printed text/logos, watermarked elsewhere
  or on top; the product's own text pixels must survive.

The models run through the production pipeline's own function (`pipeline.process.clean_rgb`,
handed in by `clearmark eval` as `model`:
detect at 640 px long side (and mirrored, per `detect_flip`), threshold, min-area, dilate,
Telea prefill and remover on tiled full-resolution crops (and their mirror images, per
`remove_flip`), feathered composite, regions the remover does not confirm left as they
were) with the PyTorch weights from `--weights`, under the settings of the environment
(`CLEARMARK_*`).
Baselines: `none` returns the input; `telea` gets the *true* mask dilated like the
pipeline's and OpenCV's Telea inpainting (radius 3) — an oracle for localisation.

Metrics per image, averaged: PSNR/SSIM of the whole image vs the clean image; PSNR inside
the true mask; PSNR outside (true mask + 8 px, the JPEG block reach of the mark) vs the
*input*; mask IoU/F1 of the pipeline's `watermark_pixels` (the remover's full-resolution
mask inside the detector's dilated mask) vs the true mask, and where that mask goes wrong
(`mask_errors`: missed by the detector, missed by the remover's mark, wrong at stroke edges,
wrong elsewhere).
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from clearmark.models.masks import dilate_disc
from clearmark.models.synth import make_sample
from clearmark.models.train import update_manifest
from clearmark.models.weights import WEIGHTS_DIR

EVAL_TAG = 2
SLICES = ("wm", "clean", "text")
SLICE_NAMES = {"wm": "watermarked", "clean": "clean", "text": "product-text"}
PSNR_CAP = 100.0


def psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None) -> float:
    d = a.astype(np.float64) - b.astype(np.float64)
    if region is not None:
        if not region.any():
            return float("nan")
        d = d[region]
    mse = float(np.mean(d**2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * np.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM over RGB channels (Wang et al. 2004, Gaussian window sigma 1.5)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def _iou_f1(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    tp = float((pred & true).sum())
    fp, fn = float((pred & ~true).sum()), float((~pred & true).sum())
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return tp / (tp + fp + fn), 2 * tp / (2 * tp + fp + fn)


MASK_ERRORS = ("miss_undetected", "miss_unmarked", "false_edge", "false_far")
EDGE_PX = 2  # a wrongly marked pixel this close to the true mark is a stroke-edge error


def mask_errors(pred: np.ndarray, detected: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Where a predicted mask goes wrong, each as a share of the true mark's pixels (bool
    H x W arrays; `detected` is the region the method searched, the pipeline's dilated
    detector mask): true pixels outside `detected` (the detector never flagged them), true
    pixels inside it that `pred` leaves out, and wrongly marked pixels within EDGE_PX of
    the true mark (stroke edges) or farther away (product print, background). NaN when
    there is no true mark."""
    n = float(true.sum())
    if not n:
        return dict.fromkeys(MASK_ERRORS, float("nan"))
    near = dilate_disc(true, EDGE_PX).astype(bool)
    wrong = pred & ~true
    counts = (
        (true & ~detected).sum(),
        (true & detected & ~pred).sum(),
        (wrong & near).sum(),
        (wrong & ~near).sum(),
    )
    return {k: float(c) / n for k, c in zip(MASK_ERRORS, counts)}


def slice_sizes(n: int) -> dict[str, int]:
    return {"wm": n, "clean": n // 3, "text": n // 3}


# slice -> (make_sample arguments, what a usable image has)
_SLICE_DRAW: dict[str, tuple[dict[str, Any], Callable[[Any], bool]]] = {
    "wm": ({"p_none": 0.0}, lambda s: s.mask.any()),  # a white logo on white shows nothing
    "clean": ({"kinds": []}, lambda s: True),
    "text": ({"p_none": 0.0, "source": "studio"}, lambda s: s.product.sum() > 200),  # printed text
}


def eval_set(n: int, seed: int = 0, data_dir=None, slices=SLICES, studio_only: bool = False):
    """Yield (slice, index, Sample) deterministically; n watermarked + n//3 clean + n//3 text,
    of the `slices` asked for (an image depends only on seed, slice and index).
    `studio_only`: every background a studio scene, none a photo (where there are none)."""
    sizes = slice_sizes(n)
    plan = [(sl, i) for sl in SLICES if sl in slices for i in range(sizes[sl])]
    for slice_, i in plan:
        rng = np.random.default_rng([EVAL_TAG, seed, SLICES.index(slice_), i])
        long_side = int(rng.integers(800, 1601))
        aspect = [1.0, 4 / 3, 3 / 4, 3 / 2][int(rng.integers(4))]
        h, w = (long_side, int(long_side / aspect)) if aspect < 1 else (int(long_side / aspect), long_side)
        kw, usable = _SLICE_DRAW[slice_]
        if studio_only:
            kw = {**kw, "source": "studio"}
        for _ in range(20):  # draw again until the image is what its slice is for
            s = make_sample(rng, h, w, long_side, "eval", data_dir, **kw)
            if usable(s):
                break
        yield slice_, i, s


def _true_mask_telea(
    rgb: np.ndarray, mask: np.ndarray, dilate_px: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The oracle baseline as a `Method`: Telea inpainting of the true mask."""
    return _telea(rgb, mask, dilate_px), mask, mask


def _telea(rgb: np.ndarray, mask: np.ndarray, dilate_px: int) -> np.ndarray:
    m = dilate_disc(mask, dilate_px)
    return cv2.inpaint(rgb, m, 3, cv2.INPAINT_TELEA) if m.any() else rgb.copy()


def _opacity_band(s) -> str:
    a = float(np.median(s.alpha[s.mask])) if s.mask.any() else 0.0
    return "a<0.4" if a < 0.4 else ("a0.4-0.7" if a < 0.7 else "a>=0.7")


# A method under test: RGB in, (restored RGB, the pixels it calls the mark, the mask it
# restored under) out.
Method = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def evaluate(
    model: Method,
    dilate_px: int,
    n: int = 60,
    seed: int = 0,
    data_dir=None,
    threads: int = 2,
    slices=SLICES,
    studio_only: bool = False,
) -> dict:
    """Score `model` (the pipeline's `clean_rgb` over the models under test; the CLI builds
    it) and the baselines, the true-mask Telea dilated by `dilate_px` like the pipeline."""
    torch.set_num_threads(threads)

    def nothing(rgb):
        none = np.zeros(rgb.shape[:2], bool)
        return rgb, none, none

    methods: dict[str, Method] = {"model": model, "none": nothing}
    rows: list[dict] = []
    for slice_, i, s in eval_set(n, seed, data_dir, slices, studio_only):
        methods["telea"] = functools.partial(_true_mask_telea, mask=s.mask, dilate_px=dilate_px)
        near = cv2.dilate(s.mask.astype(np.uint8), np.ones((17, 17), np.uint8)).astype(bool)
        for name, fn in methods.items():
            t0 = time.perf_counter()
            out, pred, detected = fn(s.composite)
            sec = time.perf_counter() - t0
            iou, f1 = _iou_f1(pred, s.mask)
            keep = s.product & ~near
            rows.append(
                {
                    "slice": slice_,
                    "i": i,
                    "method": name,
                    "kinds": s.kinds,
                    "band": _opacity_band(s),
                    "background": s.background,
                    "size": list(s.clean.shape[:2]),
                    "sec": sec,
                    "psnr": psnr(out, s.clean),
                    "ssim": ssim(out, s.clean),
                    "psnr_in": psnr(out, s.clean, s.mask),
                    "psnr_out": psnr(out, s.composite, ~near),
                    "iou": iou,
                    "f1": f1,
                    "changed": bool((out != s.composite).any()),
                    "text_psnr": psnr(out, s.clean, keep) if keep.any() else float("nan"),
                    **mask_errors(pred, detected, s.mask),
                }
            )
    return {
        "n": n,
        "seed": seed,
        "slices": [sl for sl in SLICES if sl in slices],
        "studio_only": studio_only,
        "rows": rows,
        "summary": summarize(rows),
    }


def _mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if not np.isnan(r[key])]
    return round(float(np.mean(vals)), 4) if vals else float("nan")


def summarize(rows: list[dict]) -> dict:
    out: dict = defaultdict(dict)
    for method in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == method]
        wm = [r for r in mine if r["slice"] in ("wm", "text")]
        clean = [r for r in mine if r["slice"] == "clean"]
        text = [r for r in mine if r["slice"] == "text"]
        out[method]["all"] = {
            k: _mean(wm, k) for k in ("psnr", "ssim", "psnr_in", "psnr_out", "iou", "f1", *MASK_ERRORS)
        }
        fired = defaultdict(list)
        for r in clean:
            fired[r["background"]].append(r["changed"])
        out[method]["fp_by_background"] = {bg: [int(sum(v)), len(v)] for bg, v in sorted(fired.items())}
        out[method]["all"].update(
            fp_rate=round(float(np.mean([r["changed"] for r in clean])), 4) if clean else float("nan"),
            text_psnr=_mean(text, "text_psnr"),
            sec=_mean(mine, "sec"),
            n_wm=len(wm),
            n_clean=len(clean),
        )
        groups = defaultdict(list)
        for r in wm:
            groups[r["band"]].append(r)
            for k in {k.split("+")[0] for k in r["kinds"]}:
                groups[k].append(r)
        for g, rs in sorted(groups.items()):
            out[method][g] = {
                "n": len(rs),
                "psnr": _mean(rs, "psnr"),
                "psnr_in": _mean(rs, "psnr_in"),
                "f1": _mean(rs, "f1"),
            }
    return dict(out)


def format_table(results: dict) -> str:
    summ = results["summary"]
    head = (
        f"{'method':<7} {'PSNR':>6} {'SSIM':>6} {'PSNRin':>7} {'PSNRout':>7} {'IoU':>5} "
        f"{'F1':>5} {'FP%':>5} {'txtPSNR':>7} {'s/img':>6}"
    )
    n, sizes = results["n"], slice_sizes(results["n"])
    parts = [f"{sizes[sl]} {SLICE_NAMES[sl]}" for sl in results.get("slices", SLICES)]
    only = "; studio scenes only (no photos)" if results.get("studio_only") else ""
    lines = [
        f"clearmark eval: n={n}: {', '.join(parts)}; seed={results['seed']}{only}",
        head,
        "-" * len(head),
    ]
    for m, d in summ.items():
        a = d["all"]
        lines.append(
            f"{m:<7} {a['psnr']:6.2f} {a['ssim']:6.4f} {a['psnr_in']:7.2f} {a['psnr_out']:7.2f} "
            f"{a['iou']:5.3f} {a['f1']:5.3f} {100 * a['fp_rate']:5.1f} {a['text_psnr']:7.2f} "
            f"{a['sec']:6.2f}"
        )
    groups = [g for g in next(iter(summ.values())) if g not in ("all", "fp_by_background")]
    lines += [
        "",
        "breakdown (PSNR / PSNR inside mask / F1), watermarked images:",
        f"{'group':<12} {'n':>3} " + " ".join(f"{m:>20}" for m in summ),
    ]
    for g in groups:
        cells = " ".join(
            f"{summ[m][g]['psnr']:6.2f} {summ[m][g]['psnr_in']:6.2f} {summ[m][g]['f1']:5.2f} " for m in summ
        )
        lines.append(f"{g:<12} {summ[next(iter(summ))][g]['n']:>3} {cells}")
    lines.append("IoU/F1 of 'telea' use the true mask (oracle); 'none' returns the input.")
    a = summ["model"]["all"]
    if not np.isnan(a["miss_undetected"]):  # NaN when the set has no watermarked image
        lines.append(
            f"model's mask errors, as shares of the true mark's pixels: missed outside the "
            f"detected region {a['miss_undetected']:.3f}, missed inside it "
            f"{a['miss_unmarked']:.3f}, marked within {EDGE_PX} px of the mark "
            f"{a['false_edge']:.3f}, marked farther away {a['false_far']:.3f}"
        )
    if "model" in summ and summ["model"]["fp_by_background"]:
        fired = summ["model"]["fp_by_background"]
        lines.append(
            "clean photos the model changed, by background: "
            + ", ".join(f"{bg} {k}/{n}" for bg, (k, n) in fired.items())
        )
    return "\n".join(lines)


def store_in_manifest(results: dict, weights_dir=None) -> None:
    summ = results["summary"]
    entry = {
        "eval": {
            "command": f"clearmark eval --n {results['n']} --seed {results['seed']}",
            "model": summ["model"]["all"],
            "baseline_none": summ["none"]["all"],
            "baseline_telea_true_mask": summ["telea"]["all"],
        }
    }
    for kind in ("detector", "remover"):
        update_manifest(Path(weights_dir or WEIGHTS_DIR), kind, entry)
