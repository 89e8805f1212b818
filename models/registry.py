"""Where the shipped weights live and how a model is built and loaded from them."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from clearmark.models.networks import STRIDE, Detector, Remover

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
KINDS = ("detector", "remover")
_CLASSES = {"detector": Detector, "remover": Remover}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")


def weights_path(kind: str, weights_dir: Path | None = None) -> Path:
    _check_kind(kind)
    return Path(weights_dir or WEIGHTS_DIR) / f"{kind}.pt"


def read_manifest(weights_dir: Path | None = None) -> dict:
    """manifest.json of a weights directory ({} when there is none)."""
    path = Path(weights_dir or WEIGHTS_DIR) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def architecture(kind: str, weights_dir: Path | None = None) -> dict:
    """Constructor arguments recorded in the manifest (defaults when absent)."""
    return dict(read_manifest(weights_dir).get(kind, {}).get("architecture", {}))


def build_model(kind: str, **arch) -> torch.nn.Module:
    _check_kind(kind)
    return _CLASSES[kind](**arch)


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file; remembered until the file's size or mtime changes
    (workers ask for the weights' hash on every job)."""
    st = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=64)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(kind: str, weights_dir: Path | None = None) -> str:
    path = weights_path(kind, weights_dir)
    return file_sha256(path) if path.exists() else "untrained"


def load_weights(kind: str, path: Path) -> torch.nn.Module:
    """The model in eval mode from one weights file, built as the manifest beside it says."""
    path = Path(path)
    model = build_model(kind, **architecture(kind, path.parent))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


class MissingWeights(FileNotFoundError):
    """A weights file that should be there is not: never fall back to untrained weights."""


def load_model(kind: str, weights_dir: Path | None = None) -> torch.nn.Module:
    """The model in eval mode with the shipped weights; MissingWeights when the file is absent."""
    path = weights_path(kind, weights_dir)
    if not path.exists():
        raise MissingWeights(
            f"the {kind} weights file {path} is missing: restore it (git "
            f"checkout models/weights) or train one (clearmark train {kind})"
        )
    return load_weights(kind, path)


class ModelEngine:
    """A model in eval mode behind the members of `engine_build.Engine` that the
    functions in `models.inference` use (evaluation and training run them on the models directly)."""

    stride = STRIDE
    max_batch: int | None = None
    backend = "torch"

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()

    @property
    def key(self) -> str:
        return f"{type(self.model).__name__.lower()}:pytorch-in-process"

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(np.ascontiguousarray(batch, np.float32))).numpy()
