"""The engine interface every backend implements, and `load_engine`, which picks one."""
from __future__ import annotations

import numpy as np

from models import STRIDE, weights_sha256


class Engine:
    """One model on one backend. `run` takes a float32 batch N x C x H x W (H, W multiples
    of `stride`) and returns the model's float32 output for it."""

    kind: str
    backend: str
    stride: int = STRIDE

    def run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def key(self) -> str:
        """What produced the numbers: model, weights and backend, for the job record."""
        return f"{self.kind}:{weights_sha256(self.kind)[:12]}:{self.backend}"


def load_engine(kind: str, backend: str = "auto", device: str | None = None) -> Engine:
    from engine_build.torch_backend import TorchEngine

    if backend in ("auto", "torch"):
        return TorchEngine(kind, device=device or "cpu")
    raise ValueError(f"unknown backend {backend!r}")
