"""ONNX Runtime backend: the exported ONNX graph on the CUDA provider when this
onnxruntime build has it and a CUDA device is asked for, else on the CPU provider. On the
CUDA provider the remover's crops are padded to a few sizes (engine_build.profiles)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from clearmark.engine_build.engine import Engine
from clearmark.engine_build.onnx_export import (
    INPUT_NAME,
    ONNX_OPSET,
    OUTPUT_NAME,
    WEIGHTS_KEY,
    export_onnx,
    onnx_path,
)
from clearmark.engine_build.profiles import remover_buckets, run_bucketed
from clearmark.settings import Settings, get_settings

log = logging.getLogger(__name__)


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None


def _cuda_index(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    _, _, idx = device.partition(":")
    return int(idx or 0)


class OrtEngine(Engine):
    backend = "onnxruntime"

    def __init__(
        self,
        kind: str,
        device: str = "cpu",
        threads: int | None = None,
        engine_dir: str | None = None,
        settings: Settings | None = None,
        build: bool = True,
        force: bool = False,
    ) -> None:
        settings = settings or get_settings()
        self.kind = kind
        engine_dir = engine_dir or settings.engine_dir
        before = _mtime(onnx_path(kind, "fp32", engine_dir))
        self.path = self.artifact = export_onnx(kind, "fp32", engine_dir, force=force, build=build)
        self.built = _mtime(self.path) != before
        threads = settings.threads if threads is None else threads

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads > 0:  # 0 keeps ONNX Runtime's default (one per physical core)
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3

        providers: list[str | tuple[str, dict[str, int]]] = ["CPUExecutionProvider"]
        idx = _cuda_index(device)
        if idx is not None:
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers = [("CUDAExecutionProvider", {"device_id": idx}), "CPUExecutionProvider"]
            else:
                log.warning("onnxruntime has no CUDAExecutionProvider; %s runs on CPU", kind)
        self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        self.provider: str = self.session.get_providers()[0]
        self.device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        self.threads = threads
        # What this session holds, as the file it read records it.
        self.weights_sha256 = self.session.get_modelmeta().custom_metadata_map[WEIGHTS_KEY]
        if self.device == "cuda" and kind == "remover":
            self.buckets = remover_buckets(settings.remove_max_crop)

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        self._check_input(x)
        return run_bucketed(self._infer, x, self.buckets)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        return out

    @property
    def details(self) -> str:
        return f"{self.provider}:opset{ONNX_OPSET}"
