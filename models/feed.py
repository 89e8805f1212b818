"""Training batches, synthesised ahead of the optimizer step.

The caller passes the function that makes a batch (`models.train.make_batch`). A batch
depends only on its recipe and step number (`models.train.TRAIN_TAG` stream), so one
thread or several processes make the same batches in the same order. One thread
suits this 2-core CPU (the trainer has the other core); worker processes feed a lent
GPU, where synthesis, not the network, is the slow part.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class BatchRecipe:
    kind: str
    seed: int
    batch: int
    crop: int
    data_dir: Path | None = None
    detector_masks: Path | None = None  # remover: mask crops as this detector would
    photos: str = "synthetic"  # "products": real product photos (detector)
    reviewed: Path | None = None  # a `clearmark review export` folder: some crops from it


# Makes the arrays of one step's batch; a module-level function, so that worker processes
# can be handed it.
MakeBatch = Callable[[BatchRecipe, int], list[np.ndarray]]


def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def batches(
    make: MakeBatch, recipe: BatchRecipe, steps: int, workers: int = 0
) -> Generator[list[torch.Tensor], None, None]:
    """The batches `make` makes for steps 0 .. steps-1 in order, as CPU tensors: made by one
    thread one step ahead (`workers` 0), or by `workers` processes up to 2 x workers steps
    ahead."""
    pool: Executor
    if workers > 0:
        pool = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_torch_thread
        )
    else:
        pool = ThreadPoolExecutor(max_workers=1)
    ahead = max(1, 2 * workers)
    pending: deque[Future[list[np.ndarray]]] = deque()
    upcoming = iter(range(steps))

    def top_up() -> None:
        for step in upcoming:
            pending.append(pool.submit(make, recipe, step))
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
