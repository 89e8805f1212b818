"""Where every backend gets its model from, and what identifies that model.

All backends (PyTorch, the ONNX export, TensorRT) load the network through
`load_source_model`, so they hold the same numbers: the shipped weights
(models/weights/{kind}.pt). A missing weights file is an error (`MissingWeights`, naming
the file), never a silent fall-back to untrained weights.

`model_identity(kind)` names those numbers *and* the code that uses them: the weights
sha256 plus a hash of models/networks.py (forward logic can change under unchanged
weights). The ONNX and TensorRT caches key on it.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import torch

from clearmark.models import networks
from clearmark.models.registry import load_model
from clearmark.models.weights import weights_sha256


def load_source_model(kind: str) -> torch.nn.Module:
    """The model in eval mode, fp32, on CPU (MissingWeights without its weights file)."""
    return load_model(kind).float().eval()


@cache
def _networks_source_sha() -> str:
    src = Path(networks.__file__).read_bytes()
    return hashlib.sha256(src).hexdigest()


def model_identity(kind: str) -> str:
    """`<weights sha256>-<networks.py sha256[:12]>`: changes when either changes."""
    return f"{weights_sha256(kind)}-{_networks_source_sha()[:12]}"
