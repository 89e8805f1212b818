"""The image pipeline as plain functions: decode -> detect -> mask -> remove -> encode.

`process_image(data, engines, settings)` is what the Celery task and the CLI call. It is
pure over its inputs (no database, storage or Celery here) and raises
`workers.errors.BadInput` for files it cannot use (codes in `pipeline.imaging`).
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from clearmark.engine_build import load_engine
from clearmark.engine_build.batching import Batcher, InFlight
from clearmark.errors import BadInput
from clearmark.models.inference import Runner, ceil_to, detect_probability, detect_scale, pad_to, run_engine
from clearmark.models.masks import Box, Mask, Tile, bbox, build_mask, component_boxes, confirmed, plan_tiles
from clearmark.models.networks import remover_input
from clearmark.models.repetition import REPEAT_HIGH, REPEAT_LOW, Repetition, find_repetition
from clearmark.models.text_prior import BOX_THRESH, OVERLAY_HIGH, OVERLAY_LOW, TextDetector, TextLine
from clearmark.pipeline import catalogue
from clearmark.pipeline.catalogue import MATCH_THRESHOLD, Template
from clearmark.pipeline.gate import NO_CHANGE, GateLimits, Region, RegionVerdict, judge
from clearmark.pipeline.imaging import DecodedImage, decode_image, encode_image, orientation_exif, to_stored
from clearmark.pipeline.stages import StageClock
from clearmark.pipeline.verdict import (
    DETECTOR,
    REPETITION,
    SUSPECT_MIN_AREA_AT_DETECTOR,
    TEXT,
    TEXT_LINE,
    Suspect,
    SuspectPrior,
    as_compared,
    decide,
    find_suspects,
    load_prior,
    score_p90,
)
from clearmark.pipeline.versions import PIPELINE_CODE_VERSION
from clearmark.settings import Settings, get_settings

# Pixels (N*H*W) per remover call: bounds memory when many crops share a size.
REMOVE_BATCH_PIXELS = 2 * 1024 * 1024
RESIDUAL_CONTEXT = 128  # px at detector scale around the mask for the residual check
LINE_CHANGED = 0.02  # share of a text line's middle the removal must change to have changed the line
LINE_LEFT = 0.25  # share of a changed line's middle where the text detector still finds text
# on the delivered image: the removal cut the line ("N DHAVEN") instead of removing it
# share of a printed line's length (`line_coverage`) the gated removal must take for a
# proposal to show the line removed: a mark the text prior mistakes for print (large opaque
# lettering) is taken end to end, a false alarm on product text takes a letter or two
LINE_WHOLE = 0.9
MARK_MOVED = 4  # levels: a mark pixel the removal moved by no more is not reported as mark


@dataclass
class Engines:
    """The models the pipeline runs: engines from `load` (any backend; with
    CLEARMARK_BATCH_MAX above 1, each behind a `Batcher` that the process's jobs in flight
    share), or any other `Runner` (evaluation hands in PyTorch models in this process),
    and the text prior's detector (ONNX Runtime on the CPU; None: the text prior is off)."""

    detector: Runner
    remover: Runner
    text: TextDetector | None = None

    @classmethod
    def load(cls, settings: Settings | None = None, build: bool = True) -> Engines:
        """The engines these settings name. build=False (workers) only loads: a missing
        engine file is EngineNotBuilt, naming `clearmark engines build`."""
        s = settings or get_settings()
        detector = load_engine("detector", backend=s.backend, device=s.device, settings=s, build=build)
        remover = load_engine("remover", backend=s.backend, device=s.device, settings=s, build=build)
        if s.batch_max == 1:
            return cls(detector, remover, TextDetector.load() if s.text_prior else None)
        shared = InFlight(s.jobs_in_flight, s.batch_max, s.batch_wait_ms)
        return cls(
            Batcher(detector, shared), Batcher(remover, shared), TextDetector.load() if s.text_prior else None
        )

    @property
    def version(self) -> str:
        return f"pipeline-{PIPELINE_CODE_VERSION}+{self.detector.key}+{self.remover.key}"


@dataclass
class PipelineResult:
    status: str  # "succeeded" | "no_watermark" | "needs_review"
    image_bytes: bytes  # output encoded in the input's format
    extension: str  # ".jpg", ".png", ".webp", ... matching image_bytes
    mask_png: bytes  # 8-bit grey PNG, upright, output size: 0 untouched, 1-127 changed
    # around the mark (feathered), >= 128 the watermark's own pixels
    metrics: dict[str, Any]  # width, height, mask_area_fraction, detector_confidence,
    # residual_score, ms_<stage> for each of `STAGES`, ms_total
    details: dict[str, Any] = field(default_factory=dict)  # input/output format and mode, frames,
    # jpeg_quality, notes, gate (each region's verdict), and `encoding`'s entries
    review_reason: str | None = None  # why the status is needs_review
    # How the result file was written (EncodedImage.details: jpeg_exact, blocks changed and
    # total, fallback reason, orientation); empty when the result is the upload itself.
    encoding: dict[str, Any] = field(default_factory=dict)


def detect_around(
    detector: Runner, image: np.ndarray, region: np.ndarray, long_side: int, flip: bool
) -> tuple[np.ndarray, tuple[int, int]]:
    """The detector's probability over a crop of `image` around `region` (bool H x W), at
    the scale the whole image was detected at, with RESIDUAL_CONTEXT px of context
    (detector scale) on each side, and the crop's top-left corner (x0, y0): a corner mark
    costs a corner's worth. Close to a full-image pass, not equal: the crop shifts the
    network's pooling grid (within 0.07 on the marks of the tests' photos)."""
    h, w = region.shape
    scale = detect_scale(detector, (h, w), long_side)
    x0, y0, x1, y1 = bbox(region, pad=int(np.ceil(RESIDUAL_CONTEXT / scale)))
    if min(y1 - y0, x1 - x0) * scale < detector.stride:  # too thin a crop: whole image
        y0, y1, x0, x1 = 0, h, 0, w
    return detect_probability(detector, image[y0:y1, x0:x1], long_side, flip, scale), (x0, y0)


def remove_watermark(
    remover: Runner, rgb: np.ndarray, mask: Mask, margin: int, max_crop: int, flip: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(restored, mark): a copy of `rgb` restored inside the mask, composited with the
    feathered alpha (pixels where `mask.alpha == 0` are returned unchanged), and the
    remover's full-resolution watermark probability, H x W float32, 0 outside the dilated
    mask. Crops of equal padded size run as one batch of at most REMOVE_BATCH_PIXELS
    (`run_engine` splits it further to the engine's `max_batch`). With `flip`, each crop's mirror
    image runs in the same batch and the two outputs, mirrored back, are averaged."""
    out = rgb.copy()
    mark = np.zeros(rgb.shape[:2], np.float32)
    tiles = plan_tiles(component_boxes(mask.dilated, margin), rgb.shape[:2], max_crop, margin, remover.stride)
    groups: dict[tuple[int, int], list[Tile]] = defaultdict(list)
    for t in tiles:
        x0, y0, x1, y1 = t.box
        groups[(ceil_to(y1 - y0, remover.stride), ceil_to(x1 - x0, remover.stride))].append(t)
    copies = 2 if flip else 1
    for (ph, pw), group in groups.items():
        per_batch = max(1, REMOVE_BATCH_PIXELS // (ph * pw * copies))
        for i in range(0, len(group), per_batch):
            chunk = group[i : i + per_batch]
            batch = np.stack([pad_to(_crop_input(rgb, mask, t)[None], remover.stride)[0] for t in chunk])
            if flip:
                batch = np.concatenate([batch, batch[..., ::-1]])
            restored = run_engine(remover, batch)
            if flip:
                restored = (restored[: len(chunk)] + restored[len(chunk) :][..., ::-1]) / 2
            for t, res in zip(chunk, restored):
                _composite(out, rgb, mask.alpha, t, res[:3])
                x0, y0, x1, y1 = t.core
                mark[y0:y1, x0:x1] = _core_of(t, res[3])
    mark[~mask.dilated] = 0.0
    return out, mark


def _crop_input(rgb: np.ndarray, mask: Mask, t: Tile) -> np.ndarray:
    x0, y0, x1, y1 = t.box
    return remover_input(
        np.ascontiguousarray(rgb[y0:y1, x0:x1]), mask.dilated[y0:y1, x0:x1].astype(np.float32)
    )


def _core_of(t: Tile, output: np.ndarray) -> np.ndarray:
    """The part of a tile's output (... x H x W, padded crop coordinates) over its core."""
    bx0, by0 = t.box[:2]
    x0, y0, x1, y1 = t.core
    return output[..., y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]


def _composite(out: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, t: Tile, restored: np.ndarray) -> None:
    """Blend the remover's output into `out` over the tile's core, only where alpha > 0."""
    x0, y0, x1, y1 = t.core
    a = alpha[y0:y1, x0:x1]
    if not a.any():
        return
    res = np.clip(_core_of(t, restored).transpose(1, 2, 0) * 255.0, 0, 255)
    out[y0:y1, x0:x1] = _blend(rgb[y0:y1, x0:x1], res, a)


def mask_image(mask: Mask, found: np.ndarray) -> np.ndarray:
    """The job's mask, uint8 H x W: 0 where nothing changed, 1-127 where pixels changed
    around the mark (the feathered dilation, `mask.alpha` halved), 255 on the watermark's
    own pixels (`found`), so `>= 128` is the mark and `> 0` everything that changed."""
    out = np.minimum((mask.alpha.astype(np.uint16) + 1) // 2, 127).astype(np.uint8)
    out[found & mask.dilated] = 255
    return out


def lifted(rgb: np.ndarray, restored: np.ndarray, found: np.ndarray) -> np.ndarray:
    """The mark pixels the removal lifted (bool H x W): `found` where the removal moved the
    pixel by more than MARK_MOVED levels. The remover's mark pixels it left as they were
    were background to it too, and a mask that reports them as mark is fat around every
    stroke."""
    out = np.zeros(found.shape, bool)
    if found.any():
        x0, y0, x1, y1 = bbox(found)
        diff = np.abs(restored[y0:y1, x0:x1].astype(np.int16) - rgb[y0:y1, x0:x1]).max(axis=2)
        out[y0:y1, x0:x1] = found[y0:y1, x0:x1] & (diff > MARK_MOVED)
    return out


def _png(gray: np.ndarray, orientation: int = 1) -> bytes:
    """The mask as PNG; for a result that kept its EXIF orientation, stored the same way and
    tagged with it, so mask and result line up pixel for pixel and in every viewer."""
    buf = io.BytesIO()
    if orientation == 1:
        Image.fromarray(gray, "L").save(buf, "PNG", compress_level=6)
    else:
        Image.fromarray(to_stored(gray, orientation), "L").save(
            buf, "PNG", compress_level=6, exif=orientation_exif(orientation)
        )
    return buf.getvalue()


def watermark_pixels(mask: Mask, mark: np.ndarray, threshold: float) -> np.ndarray:
    """The watermark's own pixels, bool H x W: where the remover, at full resolution, finds
    the mark (`mark >= threshold`) inside the detector's dilated mask. The detector works
    at 640 px, so its core is a blurred, fattened outline of thin strokes."""
    return mask.dilated & (mark >= threshold)


def _mean_inside(prob: np.ndarray, region: np.ndarray) -> float:
    return float(prob[region].mean()) if region.any() else 0.0


def around_mark(found: np.ndarray, mask: Mask, ring_px: int) -> Mask:
    """The pixels that change: the watermark's own pixels (`found`) and a feathered ring of
    `ring_px` around them, within the detector's dilated mask. The detector outlines marks
    at 640 px, fat; on real photos everything else inside its outline is product."""
    tight = build_mask(found.astype(np.float32), 0.5, 1, ring_px)
    keep = tight.dilated & mask.dilated
    return Mask(core=tight.core & keep, dilated=keep, alpha=np.where(keep, tight.alpha, 0).astype(np.uint8))


def _blend(rgb: np.ndarray, restored: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """`restored` over `rgb` with the feathered weight `alpha` (uint8); exactly `rgb`
    where alpha is 0."""
    if not alpha.any():
        return rgb
    a = (alpha.astype(np.float32) / 255.0)[..., None]
    out = np.rint(a * restored + (1.0 - a) * rgb).astype(np.uint8)
    return np.where(alpha[..., None] > 0, out, rgb)


@dataclass
class Cleaning:
    restored: np.ndarray  # H x W x 3 uint8, the input wherever mask.alpha == 0
    mask: Mask  # the detector's mask less the regions the remover did not
    # confirm and those the gate put back
    found: np.ndarray  # bool H x W, watermark_pixels inside `mask`
    confidence: float  # mean detector probability over mask.core
    verdicts: list[RegionVerdict] = field(default_factory=list)  # the gate's, every region
    suspects: list[Suspect] = field(default_factory=list)  # every region a detector
    # flagged at its low limit, each with what the pipeline did there (`fate`)
    guarded: list[str] = field(default_factory=list)  # product text the change reached:
    # put back, one sentence each
    lines: list[TextLine] = field(default_factory=list)  # the text prior's lines on the upload
    proposal: Proposal | None = None  # the removal before the gate put anything back


@dataclass
class Proposal:
    """The whole removal, the regions the do-no-harm gate put back included (printed
    product text still put back): what a job in review shows the reviewer, so that accept
    publishes a removal and not the upload. The status never rests on it: it is decided on
    the gated result, and a job that shows a proposal is always `needs_review`."""

    restored: np.ndarray
    mask: Mask
    found: np.ndarray
    doubted: int  # regions the gate put back
    guarded: list[str] = field(default_factory=list)  # as Cleaning.guarded, for the proposal
    # lines the text prior calls printed that the gated removal took whole, shown removed,
    # each with its `line_coverage`
    taken: list[tuple[TextLine, float]] = field(default_factory=list)


def gate_limits(s: Settings) -> GateLimits:
    return GateLimits(
        min_confidence=s.gate_min_confidence,
        min_opacity=s.gate_min_opacity,
        min_explained=s.gate_min_explained,
        max_continues=s.gate_max_continues,
        max_flattened=s.gate_max_flattened,
        sure_prior=s.gate_sure_prior if s.suspect_prior else 1.01,
    )


def apply_gate(
    rgb: np.ndarray,
    restored: np.ndarray,
    mask: Mask,
    found: np.ndarray,
    prob: np.ndarray,
    limits: GateLimits,
    suspects: list[Suspect],
    prior: SuspectPrior | None,
) -> tuple[np.ndarray, Mask, np.ndarray, list[Region]]:
    """Judge every changed region (`pipeline.gate.judge`), score the detector's suspects by
    the prior with the gate's measurements, let through a failed region the prior is sure
    of (`GateLimits.waived`), and put back exactly the input in the rest; returns the
    restored image, mask and found pixels without them, and every judged region."""
    regions = judge(rgb, restored, mask.dilated, prob, limits)
    verdicts = [r.verdict for r in regions]
    score_suspects(suspects, verdicts, prior)
    for v in verdicts:
        held = [x.value for x in suspects if x.detector == DETECTOR and _overlaps(x.box, v.box)]
        v.prior = max(held, default=0.0) if prior is not None else 0.0
        if not v.passed and limits.waived(v):
            v.passed, v.reason = True, f"kept: the suspect prior is sure of it ({v.prior:.3g}); {v.reason}"
    failed = [r for r in regions if not r.verdict.passed]
    if not failed:
        return restored, mask, found, regions
    keep = mask.dilated.copy()
    for r in failed:
        keep[r.window][r.pixels] = False
    return (*put_back(rgb, restored, mask, found, keep), regions)


def propose(
    rgb: np.ndarray,
    ungated: tuple[np.ndarray, Mask, np.ndarray],
    gated: Mask,
    guarded: Mask,
    regions: list[Region],
    suspects: list[Suspect],
    printed: list[TextLine],
) -> Proposal | None:
    """The proposal a job in review shows: the gated result (`gated`, before product text
    was put back; `guarded`, after) plus every region the gate put back that holds a
    suspect at its limit (what sends the job to review); a region put back that no detector
    still flags was a false alarm and stays put back. Printed product text stays put back,
    except a line the gated removal took whole (`LINE_WHOLE`): overlaid lettering the text
    prior mistook for print. `ungated`: the restored image, mask and found pixels the gate
    judged and its regions (`apply_gate`). None when no such region changes anything."""
    flagged = [x for x in suspects if x.value >= x.limit]
    doubted = [
        r
        for r in regions
        if not r.verdict.passed
        and r.verdict.reason != NO_CHANGE
        and any(_overlaps(r.verdict.box, x.box) for x in flagged)
    ]
    coverage = [line_coverage(line, gated.dilated) for line in printed]
    taken = [(line, c) for line, c in zip(printed, coverage) if c >= LINE_WHOLE]
    if not doubted and not taken:
        return None
    keep = gated.dilated.copy()
    for r in doubted:
        keep[r.window] |= r.pixels
    protected = [line for line, c in zip(printed, coverage) if c < LINE_WHOLE]
    restored, mask, found, reasons = guard_printed_text(rgb, *put_back(rgb, *ungated, keep), protected)
    if mask.area_fraction <= guarded.area_fraction:
        return None
    return Proposal(restored, mask, found, len(doubted), reasons, taken)


def put_back(
    rgb: np.ndarray, restored: np.ndarray, mask: Mask, found: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, Mask, np.ndarray]:
    """The restored image, mask and found pixels with only `keep` (bool H x W) changed: the
    input exactly everywhere else."""
    restored = np.where(keep[..., None], restored, rgb)
    alpha = np.where(keep, mask.alpha, 0).astype(np.uint8)
    return restored, Mask(core=mask.core & keep, dilated=keep, alpha=alpha), found & keep


def score_suspects(
    suspects: list[Suspect], verdicts: list[RegionVerdict], prior: SuspectPrior | None
) -> None:
    """Add the gate's measurements to each suspect's evidence and, with a prior, score the
    detector's suspects by it (their value and limit become the prior's)."""
    for suspect in suspects:
        suspect.evidence.update(_gate_evidence(suspect, verdicts))
        if prior is not None and suspect.detector == DETECTOR:  # the detector's own limit
            # still holds on the result
            suspect.after_limit = suspect.limit
            suspect.value, suspect.limit = prior.score(suspect.evidence), prior.limit


def clean_rgb(
    engines: Engines, rgb: np.ndarray, s: Settings, lap: Callable[[str], None] = lambda stage: None
) -> Cleaning:
    """Detect, mask, remove, and keep only what the remover confirms: a detected region in
    which the remover, looking at full resolution, finds fewer than `mask_confirm_px`
    watermark pixels is left exactly as it was (a second opinion on the detector's false
    alarms; on the tuning photos it turned away 2 of 8), then the do-no-harm gate
    (`apply_gate`, when `s.gate`) puts back every region whose change is not that of
    lifting an overlay. Calls `lap("detect")`, `lap("remove")` and `lap("gate")` as the
    stages end."""
    prob = detect_probability(engines.detector, rgb, s.detect_long_side, s.detect_flip)
    scale = detect_scale(engines.detector, rgb.shape[:2], s.detect_long_side)
    suspects = find_suspects(prob, s.detector_absent_below, round(SUSPECT_MIN_AREA_AT_DETECTOR / scale**2))
    tiled = find_repetition(rgb)
    if tiled.score >= REPEAT_HIGH:  # a tiled mark: a suspect, and the remover gets its copies
        suspects.append(repetition_suspect(tiled))
        prob = np.maximum(prob, tiled.mask.astype(np.float32))
    lines = engines.text.lines(rgb) if engines.text is not None else []
    for line in lines:
        if line.overlay >= OVERLAY_HIGH:  # overlaid text: a suspect, and the remover's
            suspects.append(text_suspect(line))
            window = prob[line.box[1] : line.box[3], line.box[0] : line.box[2]]
            window[line.mask] = np.maximum(window[line.mask], np.float32(line.overlay))
    mask = build_mask(prob, s.mask_threshold, s.mask_min_area, s.mask_dilate_px)
    detected_core, core_prob = mask.core, prob[mask.core]  # all the confidence needs
    core_map = np.where(mask.core, prob, np.float32(0)) if s.gate and not mask.empty else None
    del prob
    lap("detect")
    restored, found = rgb, np.zeros(rgb.shape[:2], bool)
    confirmed_dilated = mask.dilated
    if not mask.empty:
        # The remover's output over the whole dilated mask; blended once, below, with the
        # feathering of the pixels that finally change.
        whole = Mask(mask.core, mask.dilated, np.where(mask.dilated, 255, 0).astype(np.uint8))
        restored, mark = remove_watermark(
            engines.remover, rgb, whole, s.remove_crop_margin, s.remove_max_crop, s.remove_flip
        )
        found = watermark_pixels(mask, mark, s.mark_threshold)
        for suspect in suspects:  # the remover's second opinion, before anything is dropped
            suspect.evidence["mark_mean"] = float(mark[suspect.window][suspect.pixels].mean())
            suspect.evidence["mark_share"] = float(found[suspect.window][suspect.pixels].mean())
        kept = confirmed(mask, found, s.mask_confirm_px)
        mask, found = kept, found & kept.dilated
        confirmed_dilated = mask.dilated
        if s.change_ring_px >= 0:
            mask = around_mark(found, mask, s.change_ring_px)
        restored = _blend(rgb, restored, mask.alpha)
    lap("remove")
    regions: list[Region] = []
    prior = load_prior() if s.suspect_prior else None
    ungated = (restored, mask, found)
    if core_map is not None and not mask.empty:
        restored, mask, found, regions = apply_gate(
            rgb, restored, mask, found, np.where(mask.core, core_map, 0), gate_limits(s), suspects, prior
        )
    else:
        score_suspects(suspects, [], prior)
    verdicts = [r.verdict for r in regions]
    lap("gate")
    printed = [line for line in lines if line.overlay < OVERLAY_LOW]
    gated = mask
    restored, mask, found, guarded = guard_printed_text(rgb, restored, mask, found, printed)
    proposal = propose(rgb, ungated, gated, mask, regions, suspects, printed)
    for suspect in suspects:
        suspect.fate = _fate(suspect, mask.dilated, verdicts, confirmed_dilated, detected_core, s)
    kept = core_prob[mask.core[detected_core]]
    return Cleaning(
        restored=restored,
        mask=mask,
        found=found,
        confidence=float(kept.mean()) if kept.size else 0.0,
        verdicts=verdicts,
        suspects=suspects,
        guarded=guarded,
        lines=lines,
        proposal=proposal,
    )


TEMPLATE = "catalogue template"  # pipeline.catalogue: the tenant's learned mark, matched


@dataclass
class TemplateMatch:
    template_id: str
    match: catalogue.Match


def best_match(rgb: np.ndarray, templates: Sequence[tuple[str, Template]]) -> TemplateMatch | None:
    """The tenant's template that matches `rgb` best at MATCH_THRESHOLD or above, if any."""
    found = [(tid, m) for tid, t in templates if (m := catalogue.match(rgb, t)) is not None]
    found = [(tid, m) for tid, m in found if m.score >= MATCH_THRESHOLD]
    if not found:
        return None
    tid, m = max(found, key=lambda f: f[1].score)
    return TemplateMatch(tid, m)


def clean_with_template(
    engines: Engines,
    rgb: np.ndarray,
    found: TemplateMatch,
    s: Settings,
    lap: Callable[[str], None] = lambda stage: None,
    chroma_halved: bool = False,
) -> Cleaning:
    """Invert the matched template's blend (`catalogue.invert`); the remover fills only the
    residue (where the mark's opacity reaches ALPHA_SOLID), then the do-no-harm gate judges
    the change as any other, and a change that reached printed product text is put back
    (`guard_printed_text`, as on the single-image path: a template matched on a product's
    own lettering must not erase it). The template is the one suspect: its match score on
    the delivered image must fall under MATCH_THRESHOLD. `chroma_halved`: `rgb` is a 4:2:0
    JPEG as stored (its chroma is inverted at its own resolution)."""
    lines = engines.text.lines(rgb) if engines.text is not None else []
    lap("detect")
    inv = catalogue.invert(rgb, found.match, chroma_halved)
    changed = inv.alpha > 0
    restored = inv.restored
    if inv.residue.any():
        residue = build_mask(inv.residue.astype(np.float32), 0.5, 1, s.mask_dilate_px)
        filled, _ = remove_watermark(
            engines.remover, restored, residue, s.remove_crop_margin, s.remove_max_crop, s.remove_flip
        )
        restored = np.where(residue.dilated[..., None], filled, restored)
        changed |= residue.dilated
    core = inv.alpha >= 0.5 * float(inv.alpha.max())
    mask = Mask(core=core & changed, dilated=changed, alpha=np.where(changed, 255, 0).astype(np.uint8))
    lap("remove")
    x0, y0, x1, y1 = bbox(changed)
    suspect = Suspect(
        TEMPLATE,
        (x0, y0, x1, y1),
        changed[y0:y1, x0:x1],
        found.match.score,
        MATCH_THRESHOLD,
        evidence={
            "score": found.match.score,
            "shift_x": found.match.shift[0],
            "shift_y": found.match.shift[1],
        },
    )
    sure = np.where(mask.core, np.float32(1), np.float32(0))  # the match is the detection
    restored, mask, mark, regions = apply_gate(
        rgb, restored, mask, core, sure, gate_limits(s), [suspect], None
    )
    verdicts = [r.verdict for r in regions]
    printed = [line for line in lines if line.overlay < OVERLAY_LOW]
    restored, mask, mark, guarded = guard_printed_text(rgb, restored, mask, mark, printed)
    again = catalogue.match(restored, found.match.template)
    suspect.after = again.score if again is not None else 0.0
    suspect.fate = _fate(suspect, mask.dilated, verdicts, changed, changed, s)
    lap("gate")
    return Cleaning(restored, mask, mark, 1.0, verdicts, [suspect], guarded, lines)


def _fate(
    suspect: Suspect,
    changed: np.ndarray,
    verdicts: list[RegionVerdict],
    confirmed_dilated: np.ndarray,
    detected_core: np.ndarray,
    s: Settings,
) -> str:
    """What the pipeline did with a flagged region, in words for the review reason."""
    if suspect.touched_by(changed):
        return "removed" if not suspect.pixels.any() or _share(suspect, changed) >= 0.5 else "partly removed"
    back = [v for v in verdicts if not v.passed and _overlaps(v.box, suspect.box)]
    if back:
        return f"{PUT_BACK}: {back[0].reason}"
    if suspect.touched_by(detected_core) and not suspect.touched_by(confirmed_dilated):
        return f"dropped: the remover found fewer than {s.mask_confirm_px} mark pixels there"
    if suspect.touched_by(detected_core):
        return "left: the remover found no mark pixels there"
    return f"under the mask threshold {s.mask_threshold} or too small to mask"


def _gate_evidence(suspect: Suspect, verdicts: list[RegionVerdict]) -> dict[str, float]:
    """The gate's measurements of the largest judged region overlapping the suspect."""
    near = [v for v in verdicts if _overlaps(v.box, suspect.box)]
    if not near:
        return {}
    v = max(near, key=lambda v: v.pixels)
    return {
        "gate_opacity": v.opacity,
        "gate_explained": v.explained,
        "gate_continues": v.continues,
        "gate_confidence": v.confidence,
        "gate_passed": float(v.passed),
    }


def _share(suspect: Suspect, changed: np.ndarray) -> float:
    return float(changed[suspect.window][suspect.pixels].mean())


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def text_suspect(line: TextLine) -> Suspect:
    """A line of overlaid text as a suspect; after removal the text prior must find no
    line there it cannot call printed (OVERLAY_LOW)."""
    evidence = {"overlay": line.overlay, "text_score": line.score} | line.evidence
    return Suspect(
        TEXT, line.box, line.mask, line.overlay, OVERLAY_HIGH, evidence=evidence, after_limit=OVERLAY_LOW
    )


def guard_printed_text(
    rgb: np.ndarray, restored: np.ndarray, mask: Mask, found: np.ndarray, printed: list[TextLine]
) -> tuple[np.ndarray, Mask, np.ndarray, list[str]]:
    """Put back every changed pixel inside a line of printed product text (overlay under
    OVERLAY_LOW): a removal that reaches the product's own text is worse than the mark."""
    reasons = []
    keep = mask.dilated.copy()
    for line in printed:
        x0, y0, x1, y1 = line.box
        hit = keep[y0:y1, x0:x1] & line.mask
        if hit.any():
            keep[y0:y1, x0:x1] &= ~line.mask
            reasons.append(
                f"the removal reached product text at {line.box} (text prior "
                f"{as_compared(line.overlay, OVERLAY_LOW)} < {OVERLAY_LOW}): put back"
            )
    if not reasons:
        return restored, mask, found, []
    return (*put_back(rgb, restored, mask, found, keep), reasons)


def line_coverage(line: TextLine, changed: np.ndarray) -> float:
    """The share of a text line's length that `changed` (bool H x W) touches: its middle
    (`line_middle`) cut across its direction into steps of half its thickness, the share
    of steps with a changed pixel. A removal that takes the line end to end gives 1, one
    that takes two letters of ten about 0.2, whatever the letters' size."""
    middle, depth = _middle_and_depth(line)
    ys, xs = np.nonzero(middle)
    if xs.size < 4:
        return 0.0
    pts = np.stack([xs, ys], axis=1).astype(np.float64)
    pts -= pts.mean(axis=0)
    along = pts @ np.linalg.eigh(np.cov(pts.T))[1][:, -1]  # the principal axis
    step = max(2.0, depth)  # half the thickness
    steps = ((along - along.min()) // step).astype(int)
    x0, y0, x1, y1 = line.box
    hit = changed[y0:y1, x0:x1][middle]
    touched = np.zeros(int(steps.max()) + 1, bool)
    touched[steps[hit]] = True
    return float(touched.mean())


def line_middle(line: TextLine) -> np.ndarray:
    """The middle of a text line's region (bool, the crop at `line.box`): the pixels at
    least half the deepest distance from its outline. The detector's region is the text's
    kernel grown on every side by DB's unclip margin; the glyphs are in the middle."""
    return _middle_and_depth(line)[0]


def _middle_and_depth(line: TextLine) -> tuple[np.ndarray, float]:
    """`line_middle` and the deepest distance from the outline (half the line's thickness)."""
    dist = cv2.distanceTransform(np.pad(line.mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    depth = float(dist.max())
    return (dist >= 0.5 * depth if depth > 0 else line.mask), depth


def changed_lines(lines: list[TextLine], changed: np.ndarray) -> list[Suspect]:
    """Each line of text on the upload, other than printed product text (those the change
    reached were put back), whose middle the removal changed (LINE_CHANGED): a suspect the
    text detector must no longer find on the delivered image (`rerun_detectors`). A removal
    that takes part of a line and leaves the rest goes to review, whichever detector
    missed the rest."""
    out = []
    for line in lines:
        if line.overlay < OVERLAY_LOW:
            continue
        middle = line_middle(line)
        x0, y0, x1, y1 = line.box
        share = float(changed[y0:y1, x0:x1][middle].mean()) if middle.any() else 0.0
        if share >= LINE_CHANGED:
            fate = f"the removal changed {share:.2f} of the line's middle"
            evidence = {"changed": share, "overlay": line.overlay, "text_score": line.score}
            out.append(
                Suspect(TEXT_LINE, line.box, middle, line.score, BOX_THRESH, None, fate, evidence, LINE_LEFT)
            )
    return out


def text_left(text: TextDetector, restored: np.ndarray, suspects: list[Suspect]) -> None:
    """Set each changed line's `after`: the share of its middle where the text detector,
    run on a crop of the delivered image around them all, still finds text."""
    if not suspects:
        return
    h, w = restored.shape[:2]
    pad = max(32, max(x.box[3] - x.box[1] for x in suspects))
    x0 = max(0, min(x.box[0] for x in suspects) - pad)
    y0 = max(0, min(x.box[1] for x in suspects) - pad)
    x1, y1 = min(w, max(x.box[2] for x in suspects) + pad), min(h, max(x.box[3] for x in suspects) + pad)
    found = np.zeros((h, w), bool)
    for ln in text.lines(np.ascontiguousarray(restored[y0:y1, x0:x1])):
        bx0, by0, bx1, by1 = ln.box
        found[y0 + by0 : y0 + by1, x0 + bx0 : x0 + bx1] |= ln.mask
    for x in suspects:
        x.after = float(found[x.window][x.pixels].mean())


def repetition_suspect(tiled: Repetition) -> Suspect:
    """The tiled mark as one suspect: its copies' mask, or the whole photo without one. Its
    limit is REPEAT_HIGH (0.3% of clean train photos reach it; REPEAT_LOW, 4.3%, sent clean
    photos to review on train); on the result it must stay under REPEAT_LOW."""
    mask = tiled.mask if tiled.mask.any() else np.ones(tiled.mask.shape, bool)
    x0, y0, x1, y1 = bbox(mask)
    evidence = {"score": tiled.score} | {k: float(v) for k, v in tiled.evidence.items()}
    box, pixels = (x0, y0, x1, y1), mask[y0:y1, x0:x1]
    score = tiled.score
    return Suspect(REPETITION, box, pixels, score, REPEAT_HIGH, evidence=evidence, after_limit=REPEAT_LOW)


def rerun_detectors(
    engines: Engines, restored: np.ndarray, suspects: list[Suspect], changed: np.ndarray, s: Settings
) -> None:
    """Score every suspect the change touched again on the delivered image (`after`): one
    detector pass over a crop around all of them, at the scale of the first pass; the
    repetition detector and the text prior over the whole result; the text detector over a
    crop around the lines the removal changed (`text_left`)."""
    if any(x.detector == REPETITION and x.touched_by(changed) for x in suspects):
        again = find_repetition(restored).score
        for x in suspects:
            if x.detector == REPETITION:
                x.after = again
    if engines.text is not None and any(x.detector == TEXT and x.touched_by(changed) for x in suspects):
        lines = engines.text.lines(restored)
        for x in suspects:
            if x.detector == TEXT and x.touched_by(changed):
                x.after = max((ln.overlay for ln in lines if _overlaps(ln.box, x.box)), default=0.0)
    if engines.text is not None:
        text_left(engines.text, restored, [x for x in suspects if x.detector == TEXT_LINE])
    touched = [x for x in suspects if x.detector == DETECTOR and x.touched_by(changed)]
    if not touched:
        return
    region = np.zeros(changed.shape, bool)
    for x in touched:
        region[x.window] |= x.pixels
    prob, (x0, y0) = detect_around(engines.detector, restored, region, s.detect_long_side, s.detect_flip)
    for x in touched:
        bx0, by0, bx1, by1 = x.box
        x.after = score_p90(prob[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0], x.pixels)


def process_image(
    data: bytes,
    engines: Engines,
    settings: Settings | None = None,
    templates: Sequence[tuple[str, Template]] = (),
    deadline: float | None = None,
) -> PipelineResult:
    """Clean one image file (`clean_rgb`, the detectors again on the result, encoding).
    When one of the tenant's catalogue `templates` (id, template) matches, that template
    cleans it instead (`clean_with_template`) and metrics' `method` says `template:<id>`.

    The status follows `pipeline.verdict`: "no_watermark" only when no detector flagged any
    region at its low limit (then `image_bytes` are the input bytes unchanged, same
    extension, any EXIF orientation still applies, and the mask is all zero); "succeeded"
    only when something was removed and the detector, run again on the delivered image over
    every flagged region (removed, put back or dropped), is below its limit everywhere;
    else "needs_review" with the reasons. A job in review whose gate put regions back
    delivers the `Proposal` (the removal with them, for the reviewer to accept or not;
    details' `proposal` says so); the status is always decided on the gated result.
    Pixels outside the dilated mask are exactly the decoded input before encoding. Raises
    BadInput for unusable files, and OverTime when a stage ends past `deadline`
    (`time.monotonic()` seconds).
    """
    s = settings or get_settings()
    lap = StageClock(deadline)
    dec = decode_image(data, s)
    lap("decode")
    found = best_match(dec.rgb, templates) if templates else None
    if found is None:
        c = clean_rgb(engines, dec.rgb, s, lap)
    else:
        halved = dec.format == "JPEG" and dec.jpeg_subsampling == 2 and dec.orientation == 1
        c = clean_with_template(engines, dec.rgb, found, s, lap, halved)
    c.suspects += changed_lines(c.lines, c.mask.dilated)
    rerun_detectors(engines, c.restored, c.suspects, c.mask.dilated, s)
    lap("residual")
    verdict = decide(c.suspects, changed=not c.mask.empty)
    reasons = verdict.reasons + c.guarded
    if verdict.status == "succeeded" and 0 < c.confidence <= s.review_confidence_max:
        reasons.append(
            f"the detector is unsure (confidence {as_compared(c.confidence, s.review_confidence_max)} "
            f"<= {s.review_confidence_max})"
        )
    status = "needs_review" if reasons else verdict.status
    residual = max((x.final[0] for x in c.suspects), default=0.0)
    restored, mask, mark = c.restored, c.mask, c.found
    proposal = c.proposal if status == "needs_review" else None
    if proposal is not None:
        restored, mask, mark = proposal.restored, proposal.mask, proposal.found
        reasons = [
            proposal_reason(proposal),
            *reasons,
            *(g for g in proposal.guarded if g not in reasons),
            *(taken_reason(line, c) for line, c in proposal.taken),
        ]
        for x in c.suspects:
            if x.fate.startswith(PUT_BACK) and x.touched_by(mask.dilated):
                x.fate = DOUBTED + x.fate.removeprefix(PUT_BACK)
    out = _deliver(
        data,
        dec,
        restored,
        None if mask.empty else mask.dilated,
        mask.alpha if mask.empty else mask_image(mask, lifted(dec.rgb, restored, mark)),
        s,
    )
    details = out.details
    lap("encode")
    details["suspects"] = [
        {"detector": x.detector, "box": list(x.box), "score": x.value, "after": x.after, "fate": x.fate}
        | {"evidence": x.evidence}
        for x in c.suspects
    ]
    for line, cover in proposal.taken if proposal is not None else []:  # the review page draws them
        details["suspects"].append(
            {
                "detector": TEXT,
                "box": list(line.box),
                "score": line.overlay,
                "after": None,
                "fate": f"{TAKEN} ({cover:.2f} of its length)",
                "evidence": {"coverage": cover},
            }
        )
    details["gate"] = [v.as_dict() for v in c.verdicts]
    details["proposal"] = proposal is not None
    metrics = _metrics(dec, mask.area_fraction, c.confidence, residual, lap, details)
    if found is not None:
        metrics["method"] = details["method"] = f"template:{found.template_id}"
    return PipelineResult(
        status=status,
        image_bytes=out.image_bytes,
        extension=out.extension,
        mask_png=out.mask_png,
        metrics=metrics,
        details=details,
        review_reason="; ".join(reasons) if status == "needs_review" else None,
        encoding=out.encoding,
    )


@dataclass
class _Delivery:
    image_bytes: bytes
    extension: str
    encoding: dict[str, Any]
    mask_png: bytes
    details: dict[str, Any]  # the input's and output's format and mode, and `encoding`


def _deliver(
    data: bytes,
    dec: DecodedImage,
    restored: np.ndarray,
    changed: np.ndarray | None,
    mask: np.ndarray,
    s: Settings,
) -> _Delivery:
    """The result file and the job's mask PNG (`mask`: 8-bit, as the image is stored): the
    upload itself when nothing changed (`changed` None), else `restored` encoded with the
    pixels outside `changed` exactly the input's (`encode_image`)."""
    details: dict[str, Any] = {
        "input_format": dec.format,
        "input_mode": dec.mode,
        "frames": dec.frames,
        "jpeg_quality": dec.jpeg_quality,
        "notes": list(dec.notes),
    }
    if changed is None:
        details.update(output_format=dec.format, output_mode=dec.mode)
        return _Delivery(data, dec.input_extension, {}, _png(mask, dec.orientation), details)
    encoded = encode_image(dec, restored, changed, s)
    details.update(encoded.details, output_format=dec.output_format, output_mode=dec.base.mode)
    mask_png = _png(mask, encoded.details.get("orientation", 1))
    return _Delivery(encoded.data, encoded.extension, encoded.details, mask_png, details)


PUT_BACK = "put back by the gate"  # a suspect's fate: the gate did not trust its removal
DOUBTED = "doubted by the gate, shown removed for review"  # the same, in a job's proposal


# a taken line's fate (the review page draws "doubted..." fates as removed in the proposal)
TAKEN = "doubted as printed text, shown removed for review: the removal took the whole line"


def taken_reason(line: TextLine, coverage: float) -> str:
    return (
        f"the removal took the line at {line.box} whole ({as_compared(coverage, LINE_WHOLE)} >= {LINE_WHOLE} "
        f"of its length), though the text prior calls it printed ({as_compared(line.overlay, OVERLAY_LOW)} "
        f"< {OVERLAY_LOW}): shown removed"
    )


def proposal_reason(proposal: Proposal) -> str:
    also = []
    if proposal.doubted:
        also.append(f"the {proposal.doubted} region(s) the do-no-harm gate put back")
    if proposal.taken:
        n = len(proposal.taken)
        also.append(f"the {n} line(s) of text it took whole that the text prior calls printed")
    return (
        f"the result shown is a proposal: it also removes {' and '.join(also)} (the reasons below are "
        "those of the removal without them); accept publishes it as shown, no_mark delivers the upload"
    )


def _metrics(
    dec: DecodedImage,
    area: float,
    confidence: float,
    residual: float,
    lap: StageClock,
    details: dict[str, Any],
) -> dict[str, Any]:
    h, w = dec.rgb.shape[:2]
    return {
        "width": w,
        "height": h,
        "mask_area_fraction": area,
        "detector_confidence": confidence,
        "residual_score": residual,
        **lap.metrics(),
        "jpeg_exact": details.get("jpeg_exact"),
        "jpeg_blocks_changed": details.get("jpeg_blocks_changed"),
    }


GIVEN = "reviewer"  # the `detector` named on the regions of a mask a person painted


def remove_with_mask(
    data: bytes,
    mask: np.ndarray,
    engines: Engines,
    settings: Settings | None = None,
    deadline: float | None = None,
) -> PipelineResult:
    """Remove inside a mask a person gave instead of detecting one: `mask` is bool H x W,
    upright (as the photo is shown), True on every pixel to restore. Pixels outside it are
    the decoded input exactly, and the file is encoded as `process_image` encodes (same
    format, JPEG coefficients kept outside the touched blocks). The job's mask is 255 on
    the given pixels, 0 elsewhere.

    The status is always needs_review: a person asked for this change and a person decides
    on it. The do-no-harm gate does not judge it (the review reason says so); the detector
    scores each painted region before and after, for the reviewer to see. Raises BadInput
    (`mask_size`) for a mask of another size than the upright image; OverTime as
    `process_image`."""
    s = settings or get_settings()
    lap = StageClock(deadline)
    dec = decode_image(data, s)
    h, w = dec.rgb.shape[:2]
    inside = np.asarray(mask, bool)
    if inside.shape != (h, w):
        raise BadInput(
            f"the mask is {inside.shape[1]}x{inside.shape[0]}, the image {w}x{h} (upright)", code="mask_size"
        )
    lap("decode")
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inside.astype(np.uint8), connectivity=8)
    regions = [(int(x), int(y), int(x + bw), int(y + bh)) for x, y, bw, bh, _ in stats[1:]]
    before = _scores(engines, dec.rgb, inside, labels, regions, s)
    lap("detect")
    given = Mask(core=inside, dilated=inside, alpha=np.where(inside, 255, 0).astype(np.uint8))
    restored = dec.rgb
    if regions:
        restored, _ = remove_watermark(
            engines.remover, dec.rgb, given, s.remove_crop_margin, s.remove_max_crop, s.remove_flip
        )
    lap("remove")
    lap("gate")  # not run: a person's mask is not the gate's to judge
    out = _deliver(data, dec, restored, inside if regions else None, given.alpha, s)
    details = out.details | {"given_mask": True}
    lap("encode")
    after = _scores(engines, restored, inside, labels, regions, s)
    lap("residual")
    fate = "removed with the reviewer's mask"
    details["suspects"] = [
        {"detector": GIVEN, "box": list(box), "score": b, "after": a, "fate": fate}
        for box, b, a in zip(regions, before, after)
    ]
    details["gate"] = []
    residual = max(after, default=0.0)
    reason = (
        f"removed with a reviewer's mask ({int(inside.sum())} px in {len(regions)} region(s)); the "
        f"do-no-harm gate does not judge a person's mask; the detector after removal: {residual:.2f}"
        if regions
        else "the reviewer's mask is empty: nothing was removed"
    )
    confidence = float(np.mean(before)) if before else 0.0
    metrics = _metrics(dec, float(inside.mean()), confidence, residual, lap, details)
    return PipelineResult(
        status="needs_review",
        image_bytes=out.image_bytes,
        extension=out.extension,
        mask_png=out.mask_png,
        metrics=metrics,
        details=details,
        review_reason=reason,
        encoding=out.encoding,
    )


def _scores(
    engines: Engines, rgb: np.ndarray, inside: np.ndarray, labels: np.ndarray, regions: list[Box], s: Settings
) -> list[float]:
    """The detector's score (`score_p90`) of each region of `inside` on `rgb`: one pass over
    a crop around all of them."""
    if not regions:
        return []
    prob, (x0, y0) = detect_around(engines.detector, rgb, inside, s.detect_long_side, s.detect_flip)
    scores = []
    for k, (bx0, by0, bx1, by1) in enumerate(regions, start=1):
        pixels = labels[by0:by1, bx0:bx1] == k
        scores.append(score_p90(prob[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0], pixels))
    return scores
