"""PyTorch backend: the shipped weights run eagerly on CPU or CUDA.

On CUDA the model runs in fp16 (default there) or fp32, channels_last, cuDNN autotuned;
the remover's crops there are padded to a few sizes (engine_build.profiles), so the
autotuner meets a few shapes rather than a new one per crop.
On CPU it runs fp32 (CPU fp16 convolutions are slower), also channels_last: measured on
the 2-core development CPU (detector, 512 x 512, batch 1) channels_last took 509 ms vs
762 ms contiguous with 1 thread, 712 vs 1444 ms with 2 threads.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from clearmark.engine_build.engine import Engine
from clearmark.engine_build.profiles import remover_buckets, run_bucketed
from clearmark.engine_build.sources import load_source_model
from clearmark.settings import Settings, get_settings

log = logging.getLogger(__name__)


class TorchEngine(Engine):
    backend = "torch"

    def __init__(
        self,
        kind: str,
        device: str = "cpu",
        precision: str | None = None,
        threads: int | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.kind = kind
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        if precision is None:
            precision = "fp16" if cuda else "fp32"
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"torch backend precision must be fp32 or fp16, not {precision!r}")
        if precision == "fp16" and not cuda:
            log.warning("fp16 is for CUDA only; %s runs fp32 on %s", kind, self.device)
            precision = "fp32"
        self.precision = precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        settings = settings or get_settings()
        threads = settings.threads if threads is None else threads
        if threads > 0 and not cuda:
            torch.set_num_threads(threads)  # process-wide, like the setting itself

        source = load_source_model(kind)
        self.weights_sha256 = source.weights_sha256
        model = source.model.to(self.device, self.dtype)
        if cuda:
            torch.backends.cudnn.benchmark = True
            if kind == "remover":
                self.buckets = remover_buckets(settings.remove_max_crop)
        # Module.to takes memory_format (documented); torch's overloads for it omit it.
        self.model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.channels_last = True

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        self._check_input(x)
        return run_bucketed(self._infer, x, self.buckets)

    @torch.inference_mode()
    def _infer(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x)
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        t = t.to(self.dtype)
        if self.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        y: torch.Tensor = self.model(t)
        out: np.ndarray = y.float().cpu().numpy()
        return out

    @property
    def details(self) -> str:
        layout = ":channels_last" if self.channels_last else ""
        return f"{self.device}:{self.precision}{layout}"
