"""The input shapes each model's engine is built for (`engine_profile`: one TensorRT
optimization profile per model), and the padding of a GPU remover's crops to a few sizes.

What the pipeline sends (pipeline/process.py, models/inference.py):
- detector: the photo scaled to CLEARMARK_DETECT_LONG_SIDE (never up), padded to 16, and
  its mirror image: at most 2 x L x L, L the long side rounded up to 16. (A photo more
  than L/16 times longer than wide keeps a 16 px short side and so a longer long side:
  outside the profile, its job fails on TensorRT.)
- remover: crops of up to CLEARMARK_REMOVE_MAX_CROP a side, many small ones per batch.
- batching across jobs (engine_build.batching): up to CLEARMARK_BATCH_MAX images per call,
  so both profiles' largest batch is at least that.

On a GPU each crop side is padded up to one of `remover_buckets` and the output cropped
back (`run_bucketed`): TensorRT meets the few shapes its profile was tuned for, and
cuDNN's autotuner (torch, `cudnn.benchmark`) tunes a few shapes instead of one per crop.
The padding is zeros at the bottom and right, as the network's own convolutions pad: it
moves the output mostly in the crop's margin next to it, which the pipeline only uses as
context. Over a crop's core (32 px in from each side), on crops of watermarked studio
shots: unchanged at 160 x 208 (to 256 x 256); at 304 x 208 and 400 x 336 mean changes
under 1e-4, more than 0.1 at 0.01% of the mark probabilities (tests/test_engines.py).
Zeros came closer than edge or mirror padding, or than more of the photo as context.
CPU engines run every crop as it comes, so their output does not move at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from clearmark.models.inference import ceil_to
from clearmark.models.networks import STRIDE
from clearmark.settings import Settings

BUCKET_SIDES = (128, 256, 384, 512, 768, 1024)
DETECTOR_MAX_BATCH = 2  # the photo and its mirror image
REMOVER_MAX_BATCH = 8  # larger batches of small crops are run 8 at a time


@dataclass(frozen=True)
class Shape:
    batch: int
    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.batch}x{self.height}x{self.width}"


@dataclass(frozen=True)
class Profile:
    """A TensorRT optimization profile of the model's one input."""

    min: Shape
    opt: Shape
    max: Shape

    def __str__(self) -> str:
        return f"{self.min},{self.opt},{self.max}"

    def contains(self, batch: int, height: int, width: int) -> bool:
        return all(
            lo <= v <= hi
            for v, lo, hi in zip(
                (batch, height, width),
                (self.min.batch, self.min.height, self.min.width),
                (self.max.batch, self.max.height, self.max.width),
            )
        )

    def nchw(self, channels: int) -> tuple[tuple[int, ...], ...]:
        return tuple((s.batch, channels, s.height, s.width) for s in (self.min, self.opt, self.max))


def remover_buckets(max_crop: int) -> tuple[int, ...]:
    """The sides a GPU remover's crops are padded up to: BUCKET_SIDES below the largest
    crop, then the largest crop itself (CLEARMARK_REMOVE_MAX_CROP rounded up to 16)."""
    top = ceil_to(max_crop, STRIDE)
    return tuple(s for s in BUCKET_SIDES if s < top) + (top,)


def engine_profile(kind: str, settings: Settings) -> Profile:
    """The profile of `kind`'s TensorRT engine: what the pipeline sends it with these
    settings (module docstring); opt is the largest detector input, a mid-size pair of
    remover crops."""
    if kind == "detector":
        side = ceil_to(settings.detect_long_side, STRIDE)
        top = Shape(max(DETECTOR_MAX_BATCH, settings.batch_max), side, side)
        return Profile(Shape(1, STRIDE, STRIDE), Shape(DETECTOR_MAX_BATCH, side, side), top)
    sides = remover_buckets(settings.remove_max_crop)
    mid = sides[len(sides) // 2]
    top_batch = max(REMOVER_MAX_BATCH, settings.batch_max)
    return Profile(Shape(1, sides[0], sides[0]), Shape(2, mid, mid), Shape(top_batch, sides[-1], sides[-1]))


def bucket(side: int, sides: Sequence[int]) -> int:
    """The smallest of `sides` that holds `side`; `side` itself when none does."""
    return min((s for s in sides if s >= side), default=side)


def run_bucketed(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, sides: Sequence[int]) -> np.ndarray:
    """`run` over `x` (N x C x H x W) with H and W zero-padded at the bottom and right up
    to their buckets, the output cropped back to H x W. No `sides`: `run(x)` itself."""
    h, w = x.shape[-2:]
    bh, bw = bucket(h, sides), bucket(w, sides)
    if (bh, bw) == (h, w):
        return run(x)
    padded = np.zeros((*x.shape[:-2], bh, bw), x.dtype)
    padded[..., :h, :w] = x
    return np.ascontiguousarray(run(padded)[..., :h, :w])


def parse_shape(text: str) -> Shape:
    """ "NxHxW", "HxW" (batch 1) or "S" (batch 1, S x S); H, W multiples of 16."""
    parts = [p for p in re.split(r"[x×*]", text.strip().lower()) if p]
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"bad shape {text!r}: expected NxHxW, HxW or S") from None
    if len(nums) == 1:
        nums = [1, nums[0], nums[0]]
    elif len(nums) == 2:
        nums = [1, *nums]
    if len(nums) != 3 or min(nums) < 1:
        raise ValueError(f"bad shape {text!r}: expected NxHxW, HxW or S")
    if nums[1] % STRIDE or nums[2] % STRIDE:
        raise ValueError(f"bad shape {text!r}: height and width must be multiples of {STRIDE}")
    return Shape(*nums)


def parse_profile(text: str) -> Profile:
    """ "min,opt,max", each NxHxW (e.g. "1x16x16,1x512x512,8x1024x1024")."""
    parts = [p for p in text.split(",") if p.strip()]
    if len(parts) != 3:
        raise ValueError(f"profile {text!r}: expected min,opt,max")
    lo, opt, hi = (parse_shape(p) for p in parts)
    for a, b in ((lo, opt), (opt, hi)):
        if not (a.batch <= b.batch and a.height <= b.height and a.width <= b.width):
            raise ValueError(f"profile {text!r}: need min <= opt <= max in every dimension")
    return Profile(lo, opt, hi)
