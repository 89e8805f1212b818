"""Where every backend gets its model from, and what identifies that model.

All backends (PyTorch, the ONNX export, TensorRT) load the network through
`load_source_model`, so they hold the same numbers: the shipped weights
(models/weights/{kind}.pt). A missing weights file is an error (`MissingWeights`, naming
the file), never a silent fall-back to untrained weights. The weights file is read once
and hashed as read: the hash names the numbers the model holds, even when the file is
replaced a moment later.

`model_identity(kind)` names those numbers *and* the code that uses them: the weights
sha256 plus a hash of models/networks.py (forward logic can change under unchanged
weights). The ONNX and TensorRT caches key on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from clearmark.models import networks
from clearmark.models.registry import load_weights, read_weights
from clearmark.models.weights import weights_sha256


@dataclass(frozen=True)
class SourceModel:
    model: torch.nn.Module  # eval mode, fp32, on CPU
    weights_sha256: str  # of the bytes it was loaded from


def load_source_model(kind: str) -> SourceModel:
    """The model and the hash of the weights it holds (MissingWeights without its file)."""
    path, data = read_weights(kind)
    model = load_weights(kind, path, data).float().eval()
    return SourceModel(model, hashlib.sha256(data).hexdigest())


@cache
def _networks_source_sha() -> str:
    src = Path(networks.__file__).read_bytes()
    return hashlib.sha256(src).hexdigest()


def model_identity(kind: str, weights: str | None = None) -> str:
    """`<weights sha256>-<networks.py sha256[:12]>`: changes when either changes.
    `weights` defaults to the hash of the weights file on disk now."""
    return f"{weights or weights_sha256(kind)}-{_networks_source_sha()[:12]}"
