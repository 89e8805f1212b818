"""Batching across jobs: the jobs in flight in one process (threads, one set of engines)
send their engine calls to a `Batcher` per model, which runs calls of one input shape
as one batch and hands each caller its own rows back.

A batch goes to the engine when it holds `max_batch` images, when its oldest call has
waited `wait_ms`, or at once when every job in flight is waiting on an engine (none can
add to it; so one job in flight never waits). Calls of other shapes wait for a later
batch. A GPU remover's crops are padded to their bucket (engine_build.profiles) before
they are grouped, so crops of one bucket share a batch; the padding is the one the
engine itself would add, and each output is cropped back. One thread per model calls the
engine, so an engine is never run from two threads at once.

Batching changes no input, only which rows share an engine call: outputs move within the
engine's own numerical tolerance (tests/test_batching.py: same mask, PSNR >= 50 dB).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np

from clearmark.engine_build.engine import Engine
from clearmark.engine_build.profiles import bucket


class InFlight:
    """What the batchers of one process share: their lock, and how many of its `jobs`
    callers are waiting on an engine now."""

    def __init__(self, jobs: int, max_batch: int, wait_ms: float) -> None:
        self.jobs = jobs
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000.0
        self.cond = threading.Condition()
        self.waiting = 0


class _Call:
    def __init__(self, x: np.ndarray, shape: tuple[int, ...]) -> None:
        self.x = x
        self.shape = shape  # C x H x W after bucketing: calls of one shape share a batch
        self.since = time.monotonic()
        self.done = threading.Event()
        self.out: np.ndarray | None = None
        self.error: BaseException | None = None


class Batcher:
    """An engine as the pipeline sees it (`models.inference.Runner`), taking calls from
    any number of threads and running them in batches."""

    def __init__(self, engine: Engine, shared: InFlight) -> None:
        self.engine = engine
        self.backend = engine.backend
        self.stride = engine.stride
        self.max_batch: int | None = None  # any call; the batch is cut to the engine's
        self.buckets = engine.buckets
        self.shared = shared
        self.sizes: Counter[int] = Counter()  # calls per engine run -> how many runs
        self._pending: list[_Call] = []
        self._thread: threading.Thread | None = None

    @property
    def key(self) -> str:
        return self.engine.key

    def run(self, batch: np.ndarray) -> np.ndarray:
        h, w = batch.shape[-2:]
        call = _Call(batch, (batch.shape[1], bucket(h, self.buckets), bucket(w, self.buckets)))
        cond = self.shared.cond
        with cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name=f"batcher-{self.engine.kind}", daemon=True
                )
                self._thread.start()
            self._pending.append(call)
            self.shared.waiting += 1
            cond.notify_all()
        try:
            call.done.wait()
        finally:
            with cond:
                self.shared.waiting -= 1
                cond.notify_all()
        if call.error is not None:
            raise call.error
        assert call.out is not None
        return call.out

    def _next_batch(self) -> list[_Call]:
        """The oldest call and the later ones of its shape, up to max_batch images."""
        first = self._pending[0]
        group, n = [first], len(first.x)
        for call in self._pending[1:]:
            if call.shape == first.shape and n + len(call.x) <= self.shared.max_batch:
                group.append(call)
                n += len(call.x)
        return group

    def _serve(self) -> None:
        shared = self.shared
        while True:
            with shared.cond:
                while not self._pending:
                    shared.cond.wait()
                while True:
                    group = self._next_batch()
                    if sum(len(c.x) for c in group) >= shared.max_batch or shared.waiting >= shared.jobs:
                        break
                    left = self._pending[0].since + shared.wait_s - time.monotonic()
                    if left <= 0:
                        break
                    shared.cond.wait(left)
                for call in group:
                    self._pending.remove(call)
            self._run(group)

    def _run(self, group: list[_Call]) -> None:
        _, bh, bw = group[0].shape
        try:
            x = np.concatenate([_pad(c.x, bh, bw) for c in group])
            step = self.engine.max_batch or len(x)
            out = np.concatenate([self.engine.run(x[i : i + step]) for i in range(0, len(x), step)])
            self.sizes[len(group)] += 1
            start = 0
            for c in group:
                h, w = c.x.shape[-2:]
                c.out = np.ascontiguousarray(out[start : start + len(c.x), :, :h, :w])
                start += len(c.x)
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch gets it
            for c in group:
                c.error = exc
        for c in group:
            c.done.set()


def _pad(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Zeros at the bottom and right up to h x w, as `profiles.run_bucketed` pads."""
    if x.shape[-2:] == (h, w):
        return np.ascontiguousarray(x, dtype=np.float32)
    padded = np.zeros((*x.shape[:-2], h, w), np.float32)
    padded[..., : x.shape[-2], : x.shape[-1]] = x
    return padded
