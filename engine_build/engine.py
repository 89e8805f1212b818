"""The engine interface every backend implements (`Engine`) and the error a backend
raises when it cannot run here. `load_engine` (engine_build.base) picks a backend; the
backends import this module, base imports the backends."""

from __future__ import annotations

import numpy as np

from clearmark.models import STRIDE, weights_sha256
from clearmark.models.networks import IN_CHANNELS


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run here (missing package, no GPU)."""


class Engine:
    """One model on one backend. `run` takes a float32 batch N x C x H x W (H, W multiples
    of `stride`, N images of one shape) and returns the model's float32 output for it."""

    kind: str
    backend: str
    stride: int = STRIDE
    max_batch: int | None = None  # the most images one `run` takes; None: no limit

    def run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def details(self) -> str:
        """Backend specifics for the key: device, precision, provider, engine hash."""
        return ""

    @property
    def key(self) -> str:
        """What produced the numbers: model, weights, backend and engine details, for the
        job record. `kind:weights-sha256[:12]:backend[:details]`."""
        base = f"{self.kind}:{weights_sha256(self.kind)[:12]}:{self.backend}"
        return f"{base}:{self.details}" if self.details else base

    def _check_input(self, x: np.ndarray) -> None:
        want = IN_CHANNELS[self.kind]
        if x.ndim != 4 or x.shape[1] != want:
            raise ValueError(f"{self.kind} expects N x {want} x H x W, got {x.shape}")
        if x.shape[2] % self.stride or x.shape[3] % self.stride:
            raise ValueError(f"H and W must be multiples of {self.stride}, got {x.shape[2:]}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key}>"
