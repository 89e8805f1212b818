"""Running a network over images: batches cut to the engine's limit, padding to its
stride, and the detector's per-pixel probability at its working scale.

Any engine will do (`engine_build`'s backends, or `registry.ModelEngine` for a model in
this process): all these functions need is the `Runner` protocol.
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np

from clearmark.models.networks import to_chw


class Runner(Protocol):
    """What running a model takes: `run` maps a float32 N x C x H x W batch (H, W
    multiples of `stride`) to the model's float32 output."""

    backend: str  # what runs it: torch, onnxruntime, tensorrt
    stride: int
    max_batch: int | None

    @property
    def key(self) -> str: ...

    def run(self, batch: np.ndarray) -> np.ndarray: ...


def run_engine(engine: Runner, batch: np.ndarray) -> np.ndarray:
    """`engine.run` over `batch`, in pieces of at most `engine.max_batch` images. An engine
    that returns NaN/inf is broken: fail loudly (internal error), never silently call an
    image clean."""
    step = engine.max_batch or len(batch)
    outs = [engine.run(np.ascontiguousarray(batch[i : i + step])) for i in range(0, len(batch), step)]
    out = outs[0] if len(outs) == 1 else np.concatenate(outs)
    if not np.isfinite(out).all():
        raise RuntimeError(f"{engine.key} returned non-finite values")
    return out


def ceil_to(n: int, stride: int) -> int:
    return -(-n // stride) * stride


def pad_to(x: np.ndarray, stride: int) -> np.ndarray:
    """Reflect-pad an N x C x H x W batch at the bottom/right to multiples of stride."""
    h, w = x.shape[-2:]
    ph, pw = -h % stride, -w % stride
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect")
    return x


def detect_scale(detector: Runner, shape: tuple[int, int], long_side: int) -> float:
    """The factor the detector sees an image of `shape` at: long side `long_side`, never
    upscaled, short side kept >= the stride."""
    h, w = shape
    scale = min(1.0, long_side / max(h, w))
    return max(scale, min(1.0, detector.stride / min(h, w)))


def detect_probability(
    detector: Runner, rgb: np.ndarray, long_side: int, flip: bool = False, scale: float | None = None
) -> np.ndarray:
    """Watermark probability, H x W float32 at full resolution (the detector's channel 0;
    a second, opacity channel is ignored here). The detector sees a copy resized by
    `scale` (default `detect_scale`). With `flip`, the copy and its mirror image run as
    one batch of two and each pixel keeps the lower score."""
    h, w = rgb.shape[:2]
    scale = detect_scale(detector, (h, w), long_side) if scale is None else scale
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    small = rgb if (sh, sw) == (h, w) else cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA)
    batch = to_chw(small)[None]
    if flip:
        batch = np.concatenate([batch, batch[..., ::-1]])
    out = run_engine(detector, pad_to(batch, detector.stride))[:, 0, :sh, :sw]
    if flip:
        out = np.minimum(out[0], out[1][:, ::-1])[None]
    prob: np.ndarray = np.ascontiguousarray(out[0], dtype=np.float32)
    if (sh, sw) != (h, w):
        prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
    return prob
