"""The engine interface every backend implements (`Engine`) and the errors a backend
raises when it cannot run here (`BackendUnavailable`) or when the engine it would load
was never built (`EngineNotBuilt`). `load_engine` (engine_build.base) picks a backend; the
backends import this module, base imports the backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clearmark.errors import BUILD_ENGINES_COMMAND
from clearmark.models.networks import IN_CHANNELS, STRIDE


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run here (missing package, no GPU)."""


class EngineNotBuilt(RuntimeError):
    """A process that only loads engines (a worker) found one missing from the engine
    cache. The message names the engine and the command that builds it."""

    def __init__(self, what: str):
        super().__init__(
            f"{what}: build it with `{BUILD_ENGINES_COMMAND}` (same CLEARMARK_* settings), or let "
            "workers build at start (CLEARMARK_WORKER_BUILD_BUDGET_S)"
        )


class Engine:
    """One model on one backend. `run` takes a float32 batch N x C x H x W (H, W multiples
    of `stride`, N images of one shape) and returns the model's float32 output for it."""

    kind: str
    backend: str
    weights_sha256: str  # of the weights this engine holds, read when it was made
    stride: int = STRIDE
    max_batch: int | None = None  # the most images one `run` takes; None: no limit
    # Crop sides a GPU remover pads its input up to (engine_build.profiles); () runs every
    # shape as it comes, as CPU engines do.
    buckets: tuple[int, ...] = ()
    artifact: Path | None = None  # the cached file it loaded (ONNX graph, TensorRT engine)
    built: bool = False  # whether making this engine built that file

    def run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def details(self) -> str:
        """Backend specifics for the key: device, precision, provider, engine hash."""
        return ""

    @property
    def key(self) -> str:
        """What produced the numbers: model, weights, backend and engine details, for the
        job record. `kind:weights-sha256[:12]:backend[:details]`. The weights are the
        ones this engine loaded, whatever the file on disk holds by now."""
        base = f"{self.kind}:{self.weights_sha256[:12]}:{self.backend}"
        return f"{base}:{self.details}" if self.details else base

    def _check_input(self, x: np.ndarray) -> None:
        want = IN_CHANNELS[self.kind]
        if x.ndim != 4 or x.shape[1] != want:
            raise ValueError(f"{self.kind} expects N x {want} x H x W, got {x.shape}")
        if x.shape[2] % self.stride or x.shape[3] % self.stride:
            raise ValueError(f"H and W must be multiples of {self.stride}, got {x.shape[2:]}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key}>"
