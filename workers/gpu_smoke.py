"""`clearmark engines smoke`: a GPU engine against the CPU's fp32 ONNX Runtime, in what
the pipeline keeps (`scripts/gpu-smoke.sh` drives it on a new GPU host).

Each candidate (TensorRT fp16 on CUDA, PyTorch fp16 on CUDA, or any backend:device named)
is compared with the reference, ONNX Runtime fp32 on the CPU:
- engines at production shapes: the detector on 2 x 3 x L x L (the photo and its mirror
  at CLEARMARK_DETECT_LONG_SIDE), the remover on one crop per bucket side
  (engine_build.profiles); the detector's mask (probability >= CLEARMARK_MASK_THRESHOLD)
  and the remover's mark (>= CLEARMARK_MARK_THRESHOLD) must overlap the reference's with
  IoU >= MASK_IOU_MIN, the remover's restored pixels be within PSNR_MIN_DB;
- the pipeline (`process_image`) on watermarked photos: the delivered image within
  PSNR_MIN_DB of the reference's, the job mask's changed pixels IoU >= MASK_IOU_MIN;
- `eval-real`'s statuses on the same real photos: the gate's limits were tuned in fp32, so
  any photo whose status differs is listed and fails the check.
A candidate that cannot run here (no TensorRT, no CUDA) is one `skip` line saying why.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clearmark.engine_build import BackendUnavailable, load_engine, trt_backend
from clearmark.engine_build.bench import sample_batch
from clearmark.engine_build.profiles import DETECTOR_MAX_BATCH, remover_buckets
from clearmark.models.evaluate import psnr
from clearmark.models.inference import ceil_to
from clearmark.models.networks import STRIDE
from clearmark.pipeline.evaluate_real import evaluate_real
from clearmark.pipeline.process import Engines, process_image
from clearmark.settings import Settings

MASK_IOU_MIN = 0.98
PSNR_MIN_DB = 45.0
REFERENCE = ("onnxruntime", "cpu")


@dataclass
class Check:
    name: str
    status: str  # "ok", "FAIL", "skip"
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name}: {self.detail}"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def available(candidate: str) -> tuple[bool, str]:
    """Whether `tensorrt` or `cuda` (PyTorch on CUDA) can run here, and why."""
    if candidate == "tensorrt":
        return trt_backend.tensorrt_status()
    if torch.cuda.is_available():
        return True, f"torch {torch.__version__} sees {torch.cuda.get_device_name(0)}"
    return False, f"torch {torch.__version__} has no CUDA device"


def default_candidates() -> list[tuple[str, str] | Check]:
    """TensorRT and PyTorch on CUDA, or a skip line for each that cannot run here."""
    out: list[tuple[str, str] | Check] = []
    for backend, name in (("tensorrt", "tensorrt"), ("torch", "cuda")):
        ok, why = available(name)
        out.append((backend, "cuda") if ok else Check(f"{backend}:cuda", "skip", f"not here ({why})"))
    return out


def parse_candidate(text: str) -> tuple[str, str]:
    backend, _, device = text.partition(":")
    return backend, device or "cuda"


def _verdict(name: str, ok: bool, detail: str) -> Check:
    return Check(name, "ok" if ok else "FAIL", detail)


def engine_checks(backend: str, device: str, settings: Settings, quick: bool = False) -> Iterator[Check]:
    """The candidate's detector and remover against the reference at production shapes."""
    tag = f"{backend}:{device}"
    side = ceil_to(settings.detect_long_side, STRIDE)
    x = sample_batch("detector", DETECTOR_MAX_BATCH, side, side, seed=11)
    ref = load_engine("detector", *REFERENCE, settings=settings).run(x)
    got = load_engine("detector", backend, device, settings=settings).run(x)
    score = iou(got[:, 0] >= settings.mask_threshold, ref[:, 0] >= settings.mask_threshold)
    yield _verdict(
        f"{tag} detector {x.shape}", score >= MASK_IOU_MIN, f"mask IoU {score:.4f} (>= {MASK_IOU_MIN})"
    )
    reference = load_engine("remover", *REFERENCE, settings=settings)
    candidate = load_engine("remover", backend, device, settings=settings)
    sides = remover_buckets(settings.remove_max_crop)
    for s in sides[:2] if quick else sides:
        x = sample_batch("remover", 1, s, s, seed=12)
        ref, got = reference.run(x), candidate.run(x)
        score = iou(got[:, 3] >= settings.mark_threshold, ref[:, 3] >= settings.mark_threshold)
        db = psnr(np.clip(got[:, :3], 0, 1) * 255, np.clip(ref[:, :3], 0, 1) * 255)
        yield _verdict(
            f"{tag} remover {x.shape}",
            score >= MASK_IOU_MIN and db >= PSNR_MIN_DB,
            f"mark IoU {score:.4f} (>= {MASK_IOU_MIN}), restored PSNR {db:.1f} dB (>= {PSNR_MIN_DB})",
        )


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _changed(mask_png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(mask_png)).convert("L")) > 0


def pipeline_checks(
    candidate: Engines, reference: Engines, settings: Settings, uploads: Sequence[bytes], tag: str
) -> Iterator[Check]:
    """`process_image` on each upload with both engine sets: delivered image and job mask."""
    for i, data in enumerate(uploads):
        got, ref = process_image(data, candidate, settings), process_image(data, reference, settings)
        db = psnr(_pixels(got.image_bytes), _pixels(ref.image_bytes))
        score = iou(_changed(got.mask_png), _changed(ref.mask_png))
        yield _verdict(
            f"{tag} process_image photo {i} ({ref.status} on the CPU, {got.status} here)",
            db >= PSNR_MIN_DB and score >= MASK_IOU_MIN,
            f"image PSNR {db:.1f} dB (>= {PSNR_MIN_DB}), mask IoU {score:.4f} (>= {MASK_IOU_MIN})",
        )


def status_check(
    candidate_rows: Sequence[dict[str, object]], reference_rows: Sequence[dict[str, object]], tag: str
) -> Check:
    """eval-real's statuses, photo by photo, candidate against reference."""
    ref = {str(r["name"]): r["status"] for r in reference_rows}
    got = {str(r["name"]): r["status"] for r in candidate_rows}
    differ = [f"{n}: {ref[n]} on the CPU, {got.get(n)} here" for n in sorted(ref) if got.get(n) != ref[n]]
    detail = f"{len(ref) - len(differ)} of {len(ref)} photos have the CPU's status"
    return _verdict(f"{tag} eval-real statuses", not differ, "; ".join([detail, *differ]))


def eval_rows(engines: Engines, settings: Settings, data_dir: Path, n: int) -> list[dict[str, object]]:
    results = evaluate_real(data_dir, engines, settings, "dev", n, max(1, n // 2), 0, "heldout", ("model",))
    rows: list[dict[str, object]] = results["rows"]["model"]
    return rows


def run_smoke(
    candidates: Sequence[tuple[str, str] | Check],
    settings: Settings,
    uploads: Sequence[bytes],
    data_dir: Path | None,
    eval_photos: int,
    quick: bool,
    say: Callable[[Check], None],
) -> bool:
    """Every check of every candidate, each said as it is done; False at the first failure."""
    reference: Engines | None = None
    for cand in candidates:
        if isinstance(cand, Check):
            say(cand)
            continue
        backend, device = cand
        tag = f"{backend}:{device}"
        try:
            load_engine("detector", backend, device, settings=settings)
        except (BackendUnavailable, ImportError) as exc:
            say(Check(tag, "skip", f"not here ({exc})"))
            continue
        for check in engine_checks(backend, device, settings, quick):
            say(check)
            if check.status == "FAIL":
                return False
        reference = reference or Engines.load(settings.replace(backend=REFERENCE[0], device=REFERENCE[1]))
        engines = Engines.load(settings.replace(backend=backend, device=device))
        for check in pipeline_checks(engines, reference, settings, uploads, tag):
            say(check)
            if check.status == "FAIL":
                return False
        if data_dir is None or not (data_dir / "products").is_dir():
            say(Check(f"{tag} eval-real statuses", "skip", f"no real photos ({data_dir}/products)"))
            continue
        check = status_check(
            eval_rows(engines, settings, data_dir, eval_photos),
            eval_rows(reference, settings, data_dir, eval_photos),
            tag,
        )
        say(check)
        if check.status == "FAIL":
            return False
    return True
