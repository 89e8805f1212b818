"""PyTorch backend: the shipped weights run eagerly on CPU or CUDA."""
from __future__ import annotations

import numpy as np
import torch

from engine_build.base import Engine
from models import load_model


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, kind: str, device: str = "cpu"):
        self.kind = kind
        self.device = torch.device(device)
        self.model = load_model(kind).to(self.device).to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        y = self.model(x.contiguous(memory_format=torch.channels_last))
        return y.float().cpu().numpy()
