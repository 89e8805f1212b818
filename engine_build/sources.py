"""Where every backend gets its model from, and what identifies that model.

All backends (PyTorch, the ONNX export, TensorRT) load the network through
`load_source_model`, so they hold the same numbers:

- with shipped weights (models/weights/{kind}.pt) that is simply `models.load_model`;
- without them (a fresh checkout before training) the random init is seeded, so two
  engines, or two processes, still agree and the ONNX cache stays valid.

`model_identity(kind)` names those numbers *and* the code that uses them: the weights
sha256 plus a hash of models/networks.py (forward logic can change under unchanged
weights). The ONNX and TensorRT caches key on it.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import torch

import models
from models import load_model, weights_path, weights_sha256

# Seed for the random init used when no weights are shipped.
UNTRAINED_SEED = 20240917


def load_source_model(kind: str) -> torch.nn.Module:
    """The model in eval mode, fp32, on CPU; deterministic when no weights are shipped."""
    if weights_path(kind).exists():
        return load_model(kind).float().eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNTRAINED_SEED)
        return load_model(kind).float().eval()


@lru_cache(maxsize=None)
def _networks_source_sha() -> str:
    src = Path(models.networks.__file__).read_bytes()
    return hashlib.sha256(src).hexdigest()


def model_identity(kind: str) -> str:
    """`<weights sha256>-<networks.py sha256[:12]>`: changes when either changes."""
    return f"{weights_sha256(kind)}-{_networks_source_sha()[:12]}"
