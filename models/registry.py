"""Where the shipped weights live and how a model is built and loaded from them."""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import torch

from models.networks import Detector, Remover

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"
KINDS = ("detector", "remover")
_CLASSES = {"detector": Detector, "remover": Remover}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")


def weights_path(kind: str, weights_dir: Path | None = None) -> Path:
    _check_kind(kind)
    return Path(weights_dir or WEIGHTS_DIR) / f"{kind}.pt"


def architecture(kind: str, weights_dir: Path | None = None) -> dict:
    """Constructor arguments recorded in the manifest (defaults when absent)."""
    manifest = Path(weights_dir or WEIGHTS_DIR) / "manifest.json"
    if manifest.exists():
        entry = json.loads(manifest.read_text()).get(kind, {})
        return dict(entry.get("architecture", {}))
    return {}


def build_model(kind: str, **arch) -> torch.nn.Module:
    _check_kind(kind)
    return _CLASSES[kind](**arch)


@lru_cache(maxsize=None)
def weights_sha256(kind: str, weights_dir: Path | None = None) -> str:
    path = weights_path(kind, weights_dir)
    if not path.exists():
        return "untrained"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_model(kind: str, weights_dir: Path | None = None, strict: bool = True) -> torch.nn.Module:
    """The model in eval mode with the shipped weights (random init if none are shipped)."""
    model = build_model(kind, **architecture(kind, weights_dir))
    path = weights_path(kind, weights_dir)
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=strict)
    return model.eval()
