"""Training batches, synthesised ahead of the optimizer step.

A batch depends only on its recipe and step number (`models.train.TRAIN_TAG` stream), so
one thread or several processes make the same batches in the same order. One thread
suits this 2-core CPU (the trainer has the other core); worker processes feed a lent
GPU, where synthesis, not the network, is the slow part.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Generator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from clearmark.models.registry import ModelEngine, file_sha256, load_weights


@dataclass(frozen=True)
class BatchRecipe:
    kind: str
    seed: int
    batch: int
    crop: int
    data_dir: Path | None = None
    detector_masks: Path | None = None  # remover: mask crops as this detector would
    photos: str = "synthetic"  # "products": real product photos (detector)


_detectors: dict[str, ModelEngine] = {}  # per process, by file hash: loaded on first use


def make_batch(recipe: BatchRecipe, step: int) -> list[np.ndarray]:
    from clearmark.models.train import BATCHES, PRODUCT_BATCHES, TRAIN_TAG, remover_batch

    batch_of = (PRODUCT_BATCHES if recipe.photos == "products" else BATCHES)[recipe.kind]
    if recipe.detector_masks:
        key = file_sha256(recipe.detector_masks)
        if key not in _detectors:
            _detectors[key] = ModelEngine(load_weights("detector", recipe.detector_masks))
        batch_of = partial(
            PRODUCT_BATCHES["remover"] if recipe.photos == "products" else remover_batch,
            detector=_detectors[key],
        )
    rng = np.random.default_rng([TRAIN_TAG, recipe.seed, step])
    return [t.numpy() for t in batch_of(rng, recipe.batch, recipe.crop, recipe.data_dir)]


def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def batches(recipe: BatchRecipe, steps: int, workers: int = 0) -> Generator[list[torch.Tensor], None, None]:
    """The batches of steps 0 .. steps-1 in order, as CPU tensors: made by one thread one
    step ahead (`workers` 0), or by `workers` processes up to 2 x workers steps ahead."""
    if workers > 0:
        pool = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_torch_thread
        )
    else:
        pool = ThreadPoolExecutor(max_workers=1)
    ahead, pending = max(1, 2 * workers), deque()
    upcoming = iter(range(steps))

    def top_up() -> None:
        for step in upcoming:
            pending.append(pool.submit(make_batch, recipe, step))
            if len(pending) >= ahead:
                return

    try:
        top_up()
        while pending:
            current = pending.popleft()
            top_up()  # the next batches are made while the caller trains on this one
            yield [torch.from_numpy(a) for a in current.result()]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
