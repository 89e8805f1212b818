"""clearmark's networks: a watermark Detector and a background Remover (see DESIGN.md)."""

from clearmark.models.networks import STRIDE, Detector, Remover
from clearmark.models.registry import KINDS, build_model, load_model, weights_path, weights_sha256

__all__ = [
    "Detector",
    "Remover",
    "STRIDE",
    "KINDS",
    "build_model",
    "load_model",
    "weights_path",
    "weights_sha256",
]
