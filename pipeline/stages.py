"""The pipeline's stages, in the order an image goes through them. `process_image` times
each one (`ms_<stage>` in its metrics, and so in a job's metrics); with rounding, they add
up to `ms_total`. A module of its own, so that the API and the reports read it without
loading any engine."""

from __future__ import annotations

import time

STAGES = ("decode", "detect", "remove", "gate", "encode", "residual")


class OverTime(Exception):
    """The pipeline ran past its deadline (a job's soft time limit): raised as a stage ends."""


class StageClock:
    """`clock("detect")` ends that stage: its milliseconds since the previous stage ended
    (or the clock started) go into `ms`. `metrics()` gives `ms_<stage>` for each of STAGES
    and `ms_total`. With a `deadline` (`time.monotonic()` seconds), a stage that ends past
    it raises OverTime: a worker whose pool cannot interrupt a task (Celery's threads pool)
    still stops an attempt at its soft time limit, at the next stage's end."""

    def __init__(self, deadline: float | None = None) -> None:
        self.start = self._last = time.perf_counter()
        self.deadline = deadline
        self.ms: dict[str, float] = {}

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage] = round((now - self._last) * 1000.0, 2)
        self._last = now
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise OverTime(f"past the deadline after the {stage} stage")

    def metrics(self) -> dict[str, float]:
        total = round((time.perf_counter() - self.start) * 1000.0, 2)
        return {f"ms_{stage}": self.ms[stage] for stage in STAGES} | {"ms_total": total}
