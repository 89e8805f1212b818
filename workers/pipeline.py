"""The image pipeline as plain functions: decode -> detect -> mask -> remove -> encode.

`process_image(data, engines, settings)` is what the Celery task and the CLI call. It is
pure over its inputs (no database, storage or Celery here) and raises
`workers.errors.BadInput` for files it cannot use (codes in `workers.imaging`).
"""
from __future__ import annotations

import io
import time
from collections import defaultdict
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from engine_build import Engine, load_engine
from models.networks import remover_input, to_chw
from workers.imaging import decode_image, encode_image
from workers.masks import Mask, Tile, build_mask, component_boxes, plan_tiles
from workers.settings import Settings, get_settings

PIPELINE_CODE_VERSION = "2"  # 2: the remover gets a Telea prefill of its crop
# Pixels (N*H*W) per remover call: bounds memory when many crops share a size.
REMOVE_BATCH_PIXELS = 2 * 1024 * 1024


@dataclass
class Engines:
    detector: Engine
    remover: Engine

    @classmethod
    def load(cls, settings: Settings | None = None) -> "Engines":
        s = settings or get_settings()
        return cls(detector=load_engine("detector", backend=s.backend, device=s.device, settings=s),
                   remover=load_engine("remover", backend=s.backend, device=s.device, settings=s))

    @property
    def version(self) -> str:
        return f"pipeline-{PIPELINE_CODE_VERSION}+{self.detector.key}+{self.remover.key}"


# Both below describe the current pipeline without loading engines; they live beside
# `Engines.version` so that its format is defined in one place.
def current_version_pattern() -> str:
    """LIKE pattern of the `Engines.version` a worker would write now, any backend:
    `pipeline-<code>+detector:<sha12>:%+remover:<sha12>:%` (Engine.key starts kind:sha12:)."""
    from models.registry import weights_sha256

    return (f"pipeline-{PIPELINE_CODE_VERSION}+detector:{weights_sha256('detector')[:12]}:%"
            f"+remover:{weights_sha256('remover')[:12]}:%")


def pipeline_fingerprint() -> str:
    """Code version and weights hashes (the backend may differ between workers but not the
    output's meaning): part of the API's default idempotency key."""
    from models.registry import weights_sha256

    return "+".join([f"pipeline-{PIPELINE_CODE_VERSION}",
                     *(weights_sha256(kind)[:16] for kind in ("detector", "remover"))])


@dataclass
class PipelineResult:
    status: str          # "succeeded" | "no_watermark" | "needs_review"
    image_bytes: bytes   # output encoded in the input's format
    extension: str       # ".jpg", ".png", ".webp", ... matching image_bytes
    mask_png: bytes      # 8-bit grey PNG of the final mask (0 = untouched), upright, output size
    metrics: dict        # width, height, mask_area_fraction, detector_confidence,
                         # residual_score, ms_decode, ms_detect, ms_remove, ms_encode, ms_total
    details: dict = field(default_factory=dict)   # input/output format and mode, frames,
                                                  # jpeg_quality, ms_residual, notes


def _finite(out: np.ndarray, engine: Engine) -> np.ndarray:
    """An engine that returns NaN/inf is broken: fail loudly (internal error), never
    silently call an image clean."""
    if not np.isfinite(out).all():
        raise RuntimeError(f"{engine.key} returned non-finite values")
    return out


def _ceil_to(n: int, stride: int) -> int:
    return -(-n // stride) * stride


def _pad_to(x: np.ndarray, stride: int) -> np.ndarray:
    """Reflect-pad an N x C x H x W batch at the bottom/right to multiples of stride."""
    h, w = x.shape[-2:]
    ph, pw = -h % stride, -w % stride
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect")
    return x


def detect_probability(detector: Engine, rgb: np.ndarray, long_side: int,
                       flip: bool = False) -> np.ndarray:
    """Watermark probability, H x W float32 at full resolution (the detector's channel 0;
    a second, opacity channel is ignored here). The detector sees a copy whose long side
    is `long_side`: never upscaled, short side kept >= the stride. With `flip`, the copy
    and its mirror image run as one batch of two and each pixel keeps the lower score."""
    h, w = rgb.shape[:2]
    scale = min(1.0, long_side / max(h, w))
    scale = max(scale, min(1.0, detector.stride / min(h, w)))
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    small = rgb if (sh, sw) == (h, w) else cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA)
    batch = to_chw(small)[None]
    if flip:
        batch = np.concatenate([batch, batch[..., ::-1]])
    out = _finite(detector.run(_pad_to(batch, detector.stride)), detector)[:, 0, :sh, :sw]
    if flip:
        out = np.minimum(out[0], out[1][:, ::-1])[None]
    prob = np.ascontiguousarray(out[0], dtype=np.float32)
    if (sh, sw) != (h, w):
        prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
    return prob


def remove_watermark(remover: Engine, rgb: np.ndarray, mask: Mask, margin: int,
                     max_crop: int) -> np.ndarray:
    """A copy of `rgb` restored inside the mask, composited with the feathered alpha;
    pixels where `mask.alpha == 0` are returned unchanged. Crops of equal padded size run
    as one batch."""
    out = rgb.copy()
    tiles = plan_tiles(component_boxes(mask.dilated, margin), rgb.shape[:2], max_crop, margin,
                       remover.stride)
    groups: dict[tuple[int, int], list[Tile]] = defaultdict(list)
    for t in tiles:
        x0, y0, x1, y1 = t.box
        groups[(_ceil_to(y1 - y0, remover.stride), _ceil_to(x1 - x0, remover.stride))].append(t)
    for (ph, pw), group in groups.items():
        per_batch = max(1, REMOVE_BATCH_PIXELS // (ph * pw))
        for i in range(0, len(group), per_batch):
            chunk = group[i:i + per_batch]
            batch = np.stack([_pad_to(_crop_input(rgb, mask, t)[None], remover.stride)[0]
                              for t in chunk])
            restored = _finite(remover.run(batch), remover)
            for t, res in zip(chunk, restored):
                _composite(out, rgb, mask.alpha, t, res)
    return out


def _crop_input(rgb: np.ndarray, mask: Mask, t: Tile) -> np.ndarray:
    x0, y0, x1, y1 = t.box
    return remover_input(np.ascontiguousarray(rgb[y0:y1, x0:x1]),
                         mask.dilated[y0:y1, x0:x1].astype(np.float32))


def _composite(out: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, t: Tile,
               restored: np.ndarray) -> None:
    """Blend the remover's output into `out` over the tile's core, only where alpha > 0."""
    bx0, by0 = t.box[:2]
    x0, y0, x1, y1 = t.core
    a = alpha[y0:y1, x0:x1]
    if not a.any():
        return
    res = restored[:, y0 - by0:y1 - by0, x0 - bx0:x1 - bx0].transpose(1, 2, 0)
    res = np.clip(res * 255.0, 0, 255)
    orig = rgb[y0:y1, x0:x1]
    af = (a.astype(np.float32) / 255.0)[..., None]
    blend = np.rint(af * res + (1.0 - af) * orig).astype(np.uint8)
    out[y0:y1, x0:x1] = np.where(a[..., None] > 0, blend, orig)


def _png(gray: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gray, "L").save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def _mean_inside(prob: np.ndarray, region: np.ndarray) -> float:
    return float(prob[region].mean()) if region.any() else 0.0


def process_image(data: bytes, engines: Engines, settings: Settings | None = None) -> PipelineResult:
    """Clean one image file.

    Returns status "no_watermark" when the mask is empty: then `image_bytes` are the input
    bytes unchanged (same extension, any EXIF orientation still applies) and the mask is
    all zero. Otherwise pixels outside the dilated mask are exactly the decoded input before
    encoding, and the status is "needs_review" when the residual score (detector run on
    the output, mean probability over the detected core) is >= review_residual_min or,
    when review_confidence_max > 0, the detector confidence (mean probability over the
    core) is <= it; else "succeeded". Raises BadInput for unusable files.
    """
    s = settings or get_settings()
    t_start = time.perf_counter()
    ms: dict[str, float] = {}
    t = t_start

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        ms[name] = round((now - t) * 1000.0, 2)
        t = now

    dec = decode_image(data, s)
    lap("decode")
    prob = detect_probability(engines.detector, dec.rgb, s.detect_long_side, s.detect_flip)
    mask = build_mask(prob, s.mask_threshold, s.mask_min_area, s.mask_dilate_px)
    confidence = _mean_inside(prob, mask.core)
    del prob
    lap("detect")
    h, w = dec.rgb.shape[:2]
    details = {"input_format": dec.format, "input_mode": dec.mode, "frames": dec.frames,
               "jpeg_quality": dec.jpeg_quality, "notes": list(dec.notes)}

    if mask.empty:
        ms.update(remove=0.0, residual=0.0)
        mask_png = _png(mask.alpha)
        lap("encode")
        status, image_bytes, ext, residual = "no_watermark", data, dec.input_extension, 0.0
        details.update(output_format=dec.format, output_mode=dec.mode)
    else:
        restored = remove_watermark(engines.remover, dec.rgb, mask, s.remove_crop_margin,
                                    s.remove_max_crop)
        lap("remove")
        residual = _mean_inside(detect_probability(engines.detector, restored, s.detect_long_side,
                                                    s.detect_flip),
                                mask.core)
        lap("residual")
        image_bytes, ext = encode_image(dec, restored, mask.dilated)
        mask_png = _png(mask.alpha)
        lap("encode")
        review = residual >= s.review_residual_min or (
            s.review_confidence_max > 0 and confidence <= s.review_confidence_max)
        status = "needs_review" if review else "succeeded"
        details.update(output_format=dec.output_format, output_mode=dec.base.mode)
    details["ms_residual"] = ms.get("residual", 0.0)
    metrics = {
        "width": w, "height": h,
        "mask_area_fraction": mask.area_fraction,
        "detector_confidence": confidence,
        "residual_score": residual,
        "ms_decode": ms["decode"], "ms_detect": ms["detect"], "ms_remove": ms["remove"],
        "ms_encode": ms["encode"],
        "ms_total": round((time.perf_counter() - t_start) * 1000.0, 2),
    }
    return PipelineResult(status=status, image_bytes=image_bytes, extension=ext,
                          mask_png=mask_png, metrics=metrics, details=details)
