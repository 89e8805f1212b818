"""`clearmark eval-real`: the whole pipeline on real product photos, judged as a catalogue
team would judge it.

The set: photos of one split of `<data>/products` (default `dev`, never trained on), at
their own resolution (up to 2,000 px). Some get a mark of a `models.styles` family
(default `heldout`: fonts, phrases and kinds no training run sees) and are uploaded as the
JPEG file a storefront would send; the others are uploaded clean. Every image goes through
`pipeline.process.process_image` (decode, detect, remove, gate, encode), and the result
file is decoded and compared with the clean photo.

Per image: whole-image PSNR and SSIM against the clean photo; PSNR inside the true mark
(against the clean photo) and outside it (the mark dilated by 8 px, against the input);
mask F1 of the job's mask (pixels >= 128: the watermark's own pixels) against the true
mark; whether any pixel moved by more than 2 levels; the job's status; and harm: a job
`succeeded` whose output is farther from the clean photo than its input was. Means come
with bootstrap 95% intervals over images. Baselines on the same images: `none` returns
the input; `telea` inpaints the true mask, dilated like the pipeline's, with OpenCV Telea
(an oracle for where the mark is).
"""

from __future__ import annotations

import base64
import io
import itertools
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from PIL import Image

from clearmark.models.evaluate import psnr, ssim
from clearmark.models.masks import dilate_disc
from clearmark.models.products import load_photo, mark_photo, split_paths
from clearmark.models.reviewed import read_reviewed, upright
from clearmark.models.text_prior import TextDetector
from clearmark.models.train import update_manifest
from clearmark.models.weights import WEIGHTS_DIR
from clearmark.pipeline.process import Engines, process_image
from clearmark.settings import Settings

EVAL_REAL_TAG = 3  # rng stream of this set (training uses 1, the synthetic eval 2)
OUTSIDE_PX = 8  # the mark's JPEG-block reach, left out of "outside"
CHANGED_LEVELS = 2  # a pixel moved by more than this counts as changed
BOOTSTRAP = 1000
MARK_LEFT_F1 = 0.5  # a succeeded photo whose mask F1 is under this ...
MARK_LEFT_GAIN_DB = 6.0  # ... or whose PSNR inside the mark gained less: the mark was left
# A line of product text (one the text detector finds on the clean photo, clear of the mark
# by OUTSIDE_PX) counts as changed when this share of its pixels moved by more than
# CHANGED_LEVELS: letters lost or smeared, not a JPEG block's ripple at its edge.
TEXT_CHANGED_SHARE = 0.05
METHODS = ("model", "none", "telea")


@dataclass
class Case:
    name: str  # photo file, relative to products/
    marked: bool
    style: str  # the mark's kinds joined by '+', or "clean"
    upload: bytes  # the JPEG file the pipeline gets
    clean: np.ndarray  # uint8 RGB, the photo without the mark (same JPEG quality)
    composite: np.ndarray  # uint8 RGB, the upload decoded
    mask: np.ndarray  # bool, the visible mark
    # the product's own text: (box, mask of the crop at box) of each line the text detector
    # finds on the clean photo clear of the mark (`find_product_text`)
    product_text: list[tuple[tuple[int, int, int, int], np.ndarray]] = field(default_factory=list)


def build_set(
    data_dir: Path | str,
    split: str = "dev",
    n_marked: int = 48,
    n_clean: int = 24,
    seed: int = 0,
    family: str = "heldout",
    min_mark_px: int = 64,
) -> list[Case]:
    """Distinct photos of `split`, drawn with `seed`; a mark whose visible part has fewer
    than `min_mark_px` pixels is drawn again (a mark nobody can see is no test)."""
    rng = np.random.default_rng([EVAL_REAL_TAG, seed])
    paths = split_paths(str(data_dir), split)
    if n_marked + n_clean > len(paths):
        raise ValueError(f"{split} has {len(paths)} photos; asked for {n_marked + n_clean}")
    order = rng.permutation(len(paths))[: n_marked + n_clean]
    cases = []
    for i, k in enumerate(order):
        path = paths[int(k)]
        photo = load_photo(path)
        marked = i < n_marked
        for _ in range(5):
            s = mark_photo(rng, photo, family, None if marked else [])
            if not marked or s.mask.sum() >= min_mark_px:
                break
        cases.append(
            Case(
                name=str(path.relative_to(path.parents[1])),
                marked=marked,
                style="+".join(s.kinds) or "clean",
                upload=s.jpeg_bytes,
                clean=s.clean,
                composite=s.composite,
                mask=s.mask,
            )
        )
    return cases


def find_product_text(cases: list[Case], text: TextDetector) -> None:
    """Fill each case's `product_text`: the lines `text` finds on the clean photo whose box
    stays clear of the mark grown by OUTSIDE_PX."""
    for case in cases:
        near = dilate_disc(case.mask, OUTSIDE_PX).astype(bool) if case.marked else None
        case.product_text = [
            (line.box, line.mask)
            for line in text.lines(case.clean)
            if near is None or not near[line.box[1] : line.box[3], line.box[0] : line.box[2]].any()
        ]


def text_changed(case: Case, output: np.ndarray) -> bool:
    """Did `output` change a line of the product's own text (TEXT_CHANGED_SHARE of its
    pixels moved by more than CHANGED_LEVELS from the upload)?"""
    for (x0, y0, x1, y1), inside in case.product_text:
        moved = np.abs(output[y0:y1, x0:x1].astype(np.int16) - case.composite[y0:y1, x0:x1]).max(axis=2)
        if inside.any() and float((moved[inside] > CHANGED_LEVELS).mean()) >= TEXT_CHANGED_SHARE:
            return True
    return False


def decode_rgb(data: bytes) -> np.ndarray:
    return upright(data)


def _f1(pred: np.ndarray, true: np.ndarray) -> float:
    tp = float((pred & true).sum())
    fp, fn = float((pred & ~true).sum()), float((~pred & true).sum())
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def score(case: Case, output: np.ndarray, mark: np.ndarray, status: str) -> dict:
    """The per-image numbers for one method's output (uint8 RGB), its reported watermark
    pixels (bool) and its status."""
    before = psnr(case.composite, case.clean)
    after = psnr(output, case.clean)
    changed = bool(np.abs(output.astype(np.int16) - case.composite).max() > CHANGED_LEVELS)
    row = {
        "name": case.name,
        "style": case.style,
        "marked": case.marked,
        "status": status,
        "psnr": after,
        "psnr_input": before,
        "ssim": ssim(output, case.clean),
        "changed": changed,
        "text_changed": text_changed(case, output),
        "harm": bool(status == "succeeded" and after < before - 1e-9),
    }
    if case.marked:
        outside = ~dilate_disc(case.mask, OUTSIDE_PX).astype(bool)
        f1 = _f1(mark, case.mask)
        inside = psnr(output, case.clean, case.mask)
        inside_before = psnr(case.composite, case.clean, case.mask)
        row.update(
            psnr_in=inside,
            psnr_in_input=inside_before,
            psnr_out=psnr(output, case.composite, outside),
            f1=f1,
            mask_precision=float((mark & case.mask).sum()) / max(1, int(mark.sum())),
            mask_recall=float((mark & case.mask).sum()) / max(1, int(case.mask.sum())),
            mark_left=bool(
                status == "succeeded" and (f1 < MARK_LEFT_F1 or inside < inside_before + MARK_LEFT_GAIN_DB)
            ),
        )
    return row


def telea(case: Case, dilate_px: int) -> np.ndarray:
    hole = dilate_disc(case.mask, dilate_px)
    return cv2.inpaint(case.composite, hole, 3, cv2.INPAINT_TELEA) if hole.any() else case.composite


class Cleaned(Protocol):
    """What the pipeline returns for one upload (`pipeline.process.PipelineResult`)."""

    image_bytes: bytes
    mask_png: bytes
    status: str
    details: dict
    review_reason: str | None


class GateCheck(Protocol):
    """The gate's verdict on one region's measurements (`pipeline.gate.GateLimits`)."""

    def failures(
        self, confidence: float, opacity: float, explained: float, continues: float, flattened: float
    ) -> list[str]: ...


def run_methods(
    cases: list[Case],
    process: Callable[[bytes], Cleaned],
    dilate_px: int,
    methods=METHODS,
    progress=None,
) -> dict[str, list[dict]]:
    """Rows per method. `process` is the pipeline (`pipeline.process.process_image` on some
    engines and settings); `dilate_px` dilates the true mask for the Telea baseline."""
    rows: dict[str, list[dict]] = defaultdict(list)
    for case in cases:
        if "model" in methods:
            t = time.perf_counter()
            r = process(case.upload)
            sec = time.perf_counter() - t
            out = decode_rgb(r.image_bytes)
            job_mask = upright(r.mask_png, "L")
            mark = job_mask >= 128
            row = score(case, out, mark, r.status)
            gate = r.details.get("gate", [])
            row.update(
                sec=sec,
                review_reason=r.review_reason,
                gate=gate,
                truth=[_on_mark(v["box"], case.mask) for v in gate],
                delta_sse=[_delta_sse(v["box"], case, out) for v in gate],
                sse_input=_sse(case.composite, case.clean),
                thumbs=[_thumb(case.composite), _thumb(out), _thumb(job_mask)],
            )
            rows["model"].append(row)
        if "none" in methods:
            rows["none"].append(score(case, case.composite, np.zeros_like(case.mask), "no_watermark"))
        if "telea" in methods:
            rows["telea"].append(
                score(
                    case,
                    telea(case, dilate_px),
                    case.mask,
                    "succeeded" if case.marked else "no_watermark",
                )
            )
        if progress is not None:
            progress.update(1)
    return dict(rows)


def _thumb(img: np.ndarray, side: int = 420) -> str:
    """A base64 JPEG thumbnail (for the gallery)."""

    im = Image.fromarray(img)
    im.thumbnail((side, side))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


def gallery_html(results: dict, n: int = 12) -> str:
    """Before / after / job mask for `n` images (two in three marked, the rest clean):
    one self-contained HTML page."""

    rows = results["rows"]["model"]
    marked = [r for r in rows if r["marked"]][: n - n // 3]
    clean = [r for r in rows if not r["marked"]][: n // 3]
    cells = []
    for r in marked + clean:
        imgs = "".join(f'<img src="data:image/jpeg;base64,{t}">' for t in r["thumbs"])
        facts = (
            f"{escape(r['name'])} | {escape(r['style'])} | <b>{r['status']}</b> | PSNR "
            f"{r['psnr_input']:.1f} &rarr; {r['psnr']:.1f} dB"
            + (f" | F1 {r['f1']:.2f}" if r["marked"] else "")
            + (" | <b style='color:#b00'>HARM</b>" if r["harm"] else "")
            + (f"<br><small>{escape(r['review_reason'])}</small>" if r.get("review_reason") else "")
        )
        cells.append(f"<div class=case><p>{facts}</p>{imgs}</div>")
    return (
        "<!doctype html><meta charset=utf-8><title>clearmark eval-real gallery</title><style>"
        "body{font:14px sans-serif;margin:1em}img{max-width:32%;margin:2px;border:1px solid #ccc}"
        ".case{margin-bottom:1.5em}</style>"
        f"<h1>clearmark eval-real: {results['split']} split, {results['family']} marks, seed "
        f"{results['seed']}</h1><p>input | output | job mask (white: watermark pixels, grey: "
        "changed around them)</p>" + "".join(cells)
    )


def _sse(a: np.ndarray, b: np.ndarray) -> float:
    d = a.astype(np.float64) - b
    return float((d * d).sum())


def _delta_sse(box, case: Case, output: np.ndarray) -> float:
    """How much a gate region's change moved the image away from the clean photo (squared
    error over its box, output minus input; < 0: it helped). Only meaningful when the gate
    let the region through (`--sweep-gate` runs)."""
    x0, y0, x1, y1 = box
    win = (slice(y0, y1), slice(x0, x1))
    return _sse(output[win], case.clean[win]) - _sse(case.composite[win], case.clean[win])


def sweep_gate(rows: list[dict], limits: dict, make_gate: Callable[..., GateCheck]) -> dict:
    """What the gate would have done with `limits` (GateLimits' fields) on a run where it
    let every region through (`OPEN_GATE`, `clearmark eval-real --sweep-gate`): per image,
    keep the regions that pass and add their `delta_sse`; as the pipeline's statuses rule
    (`pipeline.verdict`), a region put back leaves a found mark in place, so the image is
    needs_review; else succeeded when some region was kept, no_watermark when there was
    none. The residual check on the result is not replayed. Approximate (boxes, not
    pixels; JPEG noise outside the regions ignored): for choosing limits on the tuning
    split, never for reporting. `make_gate(**limits)` is the gate with those limits
    (`pipeline.gate.GateLimits`)."""
    gate = make_gate(**limits)
    out: dict = {
        "harmed": 0,
        "succeeded": 0,
        "review": 0,
        "clean_changed_succeeded": 0,
        "clean_review": 0,
        "marked_succeeded": 0,
        "gain_db": [],
    }
    for r in rows:
        keep_sse, kept, put_back = 0.0, 0, False
        for v, d in zip(r["gate"], r["delta_sse"]):
            shape = (v["explained"], v["continues"], v["flattened"])
            fails = gate.failures(v["confidence"], v["opacity"], *shape)
            if fails and v.get("prior", 0.0) >= limits.get("sure_prior", 1.01):  # GateLimits.waived
                fails = gate.failures(1.0, 1.0, *shape)
            if not fails:
                keep_sse, kept = keep_sse + d, kept + 1
            else:
                put_back = True
        status = "needs_review" if put_back else ("succeeded" if kept else "no_watermark")
        out["review"] += status == "needs_review"
        if status == "succeeded":
            out["succeeded"] += 1
            out["harmed"] += keep_sse > 0
            if r["marked"]:
                out["marked_succeeded"] += 1
            else:
                out["clean_changed_succeeded"] += 1
        if not r["marked"] and status == "needs_review":
            out["clean_review"] += 1
        if r["marked"]:
            after = r["sse_input"] + (keep_sse if status != "no_watermark" else 0.0)
            out["gain_db"].append(10 * np.log10(max(r["sse_input"], 1.0) / max(after, 1.0)))
    out["gain_db"] = float(np.mean(out["gain_db"])) if out["gain_db"] else 0.0
    return out


OPEN_GATE = {
    "gate_min_confidence": 0.0,
    "gate_min_opacity": 0.0,
    "gate_min_explained": 0.0,
    "gate_max_continues": 1.0,
    "gate_max_flattened": 1.0,
}
SWEEP = {
    "min_confidence": (0.8, 0.85, 0.9, 0.93, 0.95),
    "min_opacity": (0.05, 0.1, 0.15, 0.2, 0.3),
    "min_explained": (0.8, 0.9),
    "max_continues": (0.05, 0.1, 0.15, 0.2),
    "max_flattened": (1.0,),
    "sure_prior": (0.5, 0.7, 0.8, 0.9, 0.95, 1.01),
}


def format_sweep(rows: list[dict], make_gate: Callable[..., GateCheck], top: int = 15) -> str:
    """The SWEEP grid's limits under which no image was harmed, best first (most marked
    photos succeeded, then fewest clean photos sent to review)."""

    n_marked = sum(r["marked"] for r in rows)
    n_clean = len(rows) - n_marked
    found = []
    for combo in itertools.product(*SWEEP.values()):
        limits = dict(zip(SWEEP, combo))
        res = sweep_gate(rows, limits, make_gate)
        if res["harmed"] == 0:
            found.append((-res["marked_succeeded"], res["clean_review"], -res["gain_db"], limits, res))
    found.sort(key=lambda f: f[:3])
    lines = [
        f"gate limits with no harmed image ({len(found)} of the grid), best first: "
        f"marked succeeded /{n_marked}, clean changed+succeeded /{n_clean}, clean to "
        f"review /{n_clean}, mean gain on marked photos (dB)"
    ]
    for *_, limits, res in found[:top]:
        lines.append(
            "  "
            + " ".join(f"{k}={v}" for k, v in limits.items())
            + f"  ->  {res['marked_succeeded']}, {res['clean_changed_succeeded']}, "
            f"{res['clean_review']}, {res['gain_db']:.2f}"
        )
    return "\n".join(lines)


def _on_mark(box, mask: np.ndarray) -> float:
    """Share of a gate region's box that the true mark covers (tuning: 0 = a false alarm)."""
    x0, y0, x1, y1 = box
    return round(float(mask[y0:y1, x0:x1].mean()), 4) if x1 > x0 and y1 > y0 else 0.0


def bootstrap(values: list[float], seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of a 95% bootstrap interval of the mean over `values`."""
    v = np.asarray([x for x in values if not np.isnan(x)], np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (BOOTSTRAP, v.size))].mean(axis=1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(rows: list[dict]) -> dict:
    """The headline numbers of one method, each as (mean, low, high)."""
    marked = [r for r in rows if r["marked"]]
    clean = [r for r in rows if not r["marked"]]
    done = [r for r in rows if r["status"] == "succeeded"]
    statuses: dict[str, int] = defaultdict(int)
    for r in rows:
        statuses[r["status"]] += 1
    out = {
        "n_marked": len(marked),
        "n_clean": len(clean),
        "statuses": dict(statuses),
        "harm_rate": bootstrap([float(r["harm"]) for r in done]) if done else (0.0, 0.0, 0.0),
        "harmed": sum(r["harm"] for r in rows),
        "harmed_marked": sum(r["harm"] for r in marked),
        "clean_changed_succeeded": bootstrap(
            [float(r["changed"] and r["status"] == "succeeded") for r in clean]
        ),
        "clean_changed": bootstrap([float(r["changed"]) for r in clean]),
        "clean_review": bootstrap([float(r["status"] == "needs_review") for r in clean]),
        "text_changed": bootstrap([float(r["text_changed"]) for r in rows]),
        "psnr": bootstrap([r["psnr"] for r in rows]),
        "ssim": bootstrap([r["ssim"] for r in rows]),
    }
    if marked:
        out.update(
            psnr_marked=bootstrap([r["psnr"] for r in marked]),
            psnr_in=bootstrap([r["psnr_in"] for r in marked]),
            psnr_in_input=bootstrap([r["psnr_in_input"] for r in marked]),
            psnr_out=bootstrap([r["psnr_out"] for r in marked]),
            f1=bootstrap([r["f1"] for r in marked]),
            mask_precision=bootstrap([r["mask_precision"] for r in marked]),
            mask_recall=bootstrap([r["mask_recall"] for r in marked]),
            marked_succeeded=sum(r["status"] == "succeeded" for r in marked),
            marked_succeeded_share=bootstrap([float(r["status"] == "succeeded") for r in marked]),
            marked_no_watermark=bootstrap([float(r["status"] == "no_watermark") for r in marked]),
            marked_left=bootstrap([float(r["mark_left"]) for r in marked]),
            psnr_gain=bootstrap([r["psnr"] - r["psnr_input"] for r in marked]),
        )
    if rows and "sec" in rows[0]:
        out["sec"] = bootstrap([r["sec"] for r in rows])
    if rows and "gate" in rows[0]:
        out["gate"] = gate_precision(rows)
    return out


def gate_precision(rows: list[dict]) -> dict:
    """The gate judged on its own, over all regions of all images: of the regions it let
    through, how many made the image closer to the clean photo (`delta_sse` < 0); of those
    it put back, how many lay on no mark at all (false alarms it stopped)."""
    kept = [(d, t) for r in rows for v, t, d in zip(r["gate"], r["truth"], r["delta_sse"]) if v["passed"]]
    back = [t for r in rows for v, t in zip(r["gate"], r["truth"]) if not v["passed"]]
    return {
        "kept": len(kept),
        "kept_helped": sum(d < 0 for d, _ in kept),
        "kept_on_mark": sum(t > 0.01 for _, t in kept),
        "put_back": len(back),
        "put_back_false_alarm": sum(t <= 0.01 for t in back),
    }


def by_style(rows: list[dict]) -> dict[str, dict]:
    """The marked photos grouped by their mark's first kind, with 95% intervals."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["marked"]:
            groups[r["style"].split("+")[0]].append(r)
    return {
        k: {
            "n": len(v),
            "f1": bootstrap([r["f1"] for r in v]),
            "psnr_in": float(np.mean([r["psnr_in"] for r in v])),
            "psnr_in_input": float(np.mean([r["psnr_in_input"] for r in v])),
            "succeeded": sum(r["status"] == "succeeded" for r in v),
            "no_watermark": bootstrap([float(r["status"] == "no_watermark") for r in v]),
            "mark_left": bootstrap([float(r["mark_left"]) for r in v]),
            "harmed": sum(r["harm"] for r in v),
            "text_changed": sum(r["text_changed"] for r in v),
        }
        for k, v in sorted(groups.items())
    }


def _ci(t: tuple[float, float, float], fmt: str = "{:.2f}") -> str:
    mean, lo, hi = t
    return f"{fmt.format(mean)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def format_report(results: dict) -> str:
    title = results.get("title") or (
        f"{results['split']} split, {results['family']} marks, seed {results['seed']}"
    )
    lines = [
        f"clearmark eval-real: {title}: {results['n_marked']} marked + {results['n_clean']} clean "
        f"photos; backend {results['backend']}; means with bootstrap 95% intervals"
    ]
    for method, s in results["summary"].items():
        lines.append(
            f"\n[{method}]  statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(s["statuses"].items()))
        )
        lines.append(
            f"  harm rate (succeeded and worse than the input): {_ci(s['harm_rate'], '{:.3f}')}"
            f"  ({s['harmed']} images: {s['harmed_marked']} marked)"
        )
        lines.append(
            f"  clean photos changed: {_ci(s['clean_changed'], '{:.3f}')}; changed while "
            f"succeeded: {_ci(s['clean_changed_succeeded'], '{:.3f}')}; sent to review: "
            f"{_ci(s['clean_review'], '{:.3f}')}"
        )
        lines.append(
            f"  product text changed (a line clear of the mark, {TEXT_CHANGED_SHARE:.0%} of its "
            f"pixels moved): {_ci(s['text_changed'], '{:.3f}')} of photos"
        )
        lines.append(f"  whole-image PSNR {_ci(s['psnr'])} dB, SSIM {_ci(s['ssim'], '{:.4f}')}")
        if "f1" in s:
            lines.append(
                f"  marked photos: PSNR {_ci(s['psnr_marked'])}; inside the mark "
                f"{_ci(s['psnr_in'])} (input {s['psnr_in_input'][0]:.2f}); outside "
                f"{_ci(s['psnr_out'])}; mask F1 {_ci(s['f1'], '{:.3f}')} (precision "
                f"{s['mask_precision'][0]:.3f}, recall {s['mask_recall'][0]:.3f}); succeeded "
                f"{s['marked_succeeded']}/{s['n_marked']}"
            )
            lines.append(
                f"  marked photos: succeeded {_ci(s['marked_succeeded_share'], '{:.3f}')}; reported "
                f"no_watermark {_ci(s['marked_no_watermark'], '{:.3f}')}; succeeded with the mark "
                f"left (F1 < {MARK_LEFT_F1} or < {MARK_LEFT_GAIN_DB:g} dB gained inside) "
                f"{_ci(s['marked_left'], '{:.3f}')}; whole-image PSNR gain {_ci(s['psnr_gain'])} dB"
            )
        if "sec" in s:
            lines.append(f"  seconds per image {_ci(s['sec'])}")
        if s.get("gate", {}).get("kept", 0) + s.get("gate", {}).get("put_back", 0):
            g = s["gate"]
            lines.append(
                f"  gate: let {g['kept']} regions through, {g['kept_helped']} of them "
                f"closer to the clean photo, {g['kept_on_mark']} on a mark; put back "
                f"{g['put_back']}, {g['put_back_false_alarm']} of them on no mark"
            )
    styles = results.get("styles", {})
    if styles:
        lines += [
            "",
            "model by the first kind of mark: n, F1, PSNR inside (input), succeeded, harmed, "
            "reported no_watermark, succeeded with the mark left, product text changed",
        ]
        for k, v in styles.items():
            lines.append(
                f"  {k:<10} {v['n']:>3} {_ci(v['f1'], '{:.3f}')} {v['psnr_in']:6.2f} "
                f"({v['psnr_in_input']:6.2f}) {v['succeeded']:>3} {v['harmed']:>2}  "
                f"{_ci(v['no_watermark'], '{:.2f}')}  {_ci(v['mark_left'], '{:.2f}')}  {v['text_changed']}"
            )
    return "\n".join(lines)


def evaluate_real(
    data_dir,
    engines: Engines,
    settings: Settings,
    split="dev",
    n_marked=48,
    n_clean=24,
    seed=0,
    family="heldout",
    methods=METHODS,
    backend="?",
    progress=None,
) -> dict:
    """The whole pipeline (`process_image` with these engines and settings) on a set of
    `build_set`, with the baselines in `methods`."""
    cases = build_set(data_dir, split, n_marked, n_clean, seed, family)
    find_product_text(cases, engines.text or TextDetector.load())

    def process(upload: bytes) -> Cleaned:
        return process_image(upload, engines, settings)

    rows = run_methods(cases, process, settings.mask_dilate_px, methods, progress)
    return {
        "split": split,
        "family": family,
        "seed": seed,
        "n_marked": n_marked,
        "n_clean": n_clean,
        "backend": backend,
        "summary": {m: summarize(r) for m, r in rows.items()},
        "styles": by_style(rows["model"]) if "model" in rows else {},
        "rows": rows,
        "cases": cases,
    }


def load_reviewed(root: Path | str) -> list[Case]:
    """The photos of a `clearmark review export` folder (`models.reviewed`) as a test set
    of real marks: the result the reviewer accepted stands in for the clean photo and the
    accepted mask's mark pixels (>= 128) for the true mark; a "no mark" photo is a clean
    one. Its style: `painted` when the reviewer painted the mask, else the decision."""
    cases = []
    for photo in read_reviewed(root):
        upload = photo.upload.read_bytes()
        composite = upright(upload)
        mask = upright(photo.mask.read_bytes(), "L") >= 128
        clean = upright(photo.result.read_bytes())
        if not (composite.shape == clean.shape and composite.shape[:2] == mask.shape):
            raise ValueError(f"{photo.job_id}: upload, mask and result are not one size")
        cases.append(
            Case(
                name=photo.name,
                marked=bool(mask.any()),
                style="painted" if photo.masks_painted else photo.decision,
                upload=upload,
                clean=clean,
                composite=composite,
                mask=mask,
            )
        )
    return cases


def evaluate_reviewed(
    root: Path | str, engines: Engines, settings: Settings, methods=METHODS, backend="?", progress=None
) -> dict:
    """`evaluate_real`'s numbers on the photos reviewers kept (`load_reviewed`): mask F1 is
    the pipeline's mark pixels against the accepted mask's, PSNR is against the accepted
    result, and harm is a `succeeded` result farther from it than the upload was."""
    cases = load_reviewed(root)
    if progress is not None:
        progress.total = len(cases)
    find_product_text(cases, engines.text or TextDetector.load())

    def process(upload: bytes) -> Cleaned:
        return process_image(upload, engines, settings)

    rows = run_methods(cases, process, settings.mask_dilate_px, methods, progress)
    return {
        "title": f"reviewed photos in {root}",
        "split": "reviewed",
        "family": "reviewed",
        "seed": None,
        "n_marked": sum(c.marked for c in cases),
        "n_clean": sum(not c.marked for c in cases),
        "backend": backend,
        "summary": {m: summarize(r) for m, r in rows.items()},
        "styles": by_style(rows["model"]) if "model" in rows else {},
        "rows": rows,
        "cases": cases,
    }


def store_in_manifest(results: dict, command: str, weights_dir=None) -> None:
    """The summary of a run with every method, as `eval_real` of both models' manifest
    entries (training new weights drops it, as it drops `eval`)."""

    names = {"model": "model", "none": "baseline_none", "telea": "baseline_telea_true_mask"}
    entry = {
        "eval_real": {
            "command": command,
            "split": results["split"],
            "family": results["family"],
            "seed": results["seed"],
            "backend": results["backend"],
            **{names[m]: summ for m, summ in results["summary"].items()},
        }
    }
    for kind in ("detector", "remover"):
        update_manifest(Path(weights_dir or WEIGHTS_DIR), kind, entry)
