"""Where the shipped weights live and how a model is built and loaded from them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from clearmark.models.networks import STRIDE, Detector, Remover
from clearmark.models.weights import MissingWeights, architecture, check_kind, weights_path

_CLASSES = {"detector": Detector, "remover": Remover}


def build_model(kind: str, **arch) -> torch.nn.Module:
    check_kind(kind)
    return _CLASSES[kind](**arch)


def load_weights(kind: str, path: Path, data: bytes | None = None) -> torch.nn.Module:
    """The model in eval mode from one weights file (or `data`, that file's bytes already
    read), built as the manifest beside it says."""
    path = Path(path)
    model = build_model(kind, **architecture(kind, path.parent))
    source = io.BytesIO(data) if data is not None else path
    model.load_state_dict(torch.load(source, map_location="cpu", weights_only=True))
    return model.eval()


def read_weights(kind: str, weights_dir: Path | None = None) -> tuple[Path, bytes]:
    """The shipped weights file and its bytes, read once; MissingWeights when it is absent."""
    path = weights_path(kind, weights_dir)
    try:
        return path, path.read_bytes()
    except FileNotFoundError:
        raise MissingWeights(
            f"the {kind} weights file {path} is missing: restore it (git "
            f"checkout models/weights) or train one (clearmark train {kind})"
        ) from None


def load_model(kind: str, weights_dir: Path | None = None) -> torch.nn.Module:
    """The model in eval mode with the shipped weights; MissingWeights when the file is absent."""
    path, data = read_weights(kind, weights_dir)
    return load_weights(kind, path, data)


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
