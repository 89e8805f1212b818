"""ONNX export of the detector and remover, cached under settings.engine_dir/onnx.

- Exporter: `torch.onnx.export(..., dynamo=True)`, one self-contained file
  (`external_data=False`, the models are a few MB).
- Opset: fixed at ONNX_OPSET = 18. The graphs only use Conv, Relu, MaxPool,
  Resize(nearest), Concat, Sigmoid, Slice, Clip and element-wise ops, all stable since
  opset 13; 18 is the exporter's oldest well-supported opset and is inside what the
  TensorRT 10 ONNX parser (opsets 9-20+) and ONNX Runtime >= 1.14 accept.
- Dynamic axes: batch (1..256), height and width as 16*k (k in 1..1024), so a single
  export serves every padded crop the pipeline sends. Input name "input", output
  "output", input and output float32 for both precisions.
- precision "fp16": the same graph with fp16 weights and activations, wrapped in casts
  (float32 in -> fp16 -> float32 out). It is the graph a *strongly typed* TensorRT
  network builds from (ARCHITECTURE.md, Engines: precision expressed in the ONNX graph).
- Each file is checked with `onnx.checker` (full check, shape inference) and run once in
  ONNX Runtime against PyTorch at two shapes before it is kept (fp32 within 1e-3; fp16
  within 5e-2, where the ONNX Runtime build has the fp16 kernels).
- Each file records the sha256 of the weights it was exported from (metadata
  `clearmark.weights_sha256`): the engines made from it report those weights.
- Cache: `{kind}-{precision}-opset18-{model identity}.onnx`, the identity being weights
  sha256 + networks.py hash (engine_build.sources). A cached file that fails the checker
  or records other weights is exported again, under the file's build lock (one exporter
  at a time; the others wait and load its file), to a temporary name then renamed, so no
  process reads half a file. `build=False` only loads (EngineNotBuilt when missing).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from clearmark.engine_build.engine import EngineNotBuilt
from clearmark.engine_build.files import build_lock
from clearmark.engine_build.sources import load_source_model, model_identity
from clearmark.models.networks import IN_CHANNELS, STRIDE
from clearmark.models.weights import weights_sha256
from clearmark.settings import get_settings

log = logging.getLogger(__name__)

ONNX_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "output"
MAX_BATCH = 256
MAX_BLOCKS = 1024  # height/width up to 16 * 1024 px
PRECISIONS = ("fp32", "fp16")
WEIGHTS_KEY = "clearmark.weights_sha256"  # metadata: the weights the graph holds


class ExportError(RuntimeError):
    pass


class _CastWrapper(torch.nn.Module):
    """float32 in -> model in fp16 -> float32 out."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.model(x.half())
        return y.float()


def onnx_dir(engine_dir: str | Path | None = None) -> Path:
    if engine_dir is None:
        engine_dir = get_settings().engine_dir
    return Path(engine_dir) / "onnx"


def onnx_path(
    kind: str, precision: str = "fp32", engine_dir: str | Path | None = None, weights: str | None = None
) -> Path:
    """Where the export of `kind` from `weights` (sha256; default: the file on disk now) lives."""
    if precision not in PRECISIONS:
        raise ValueError(f"ONNX precision must be one of {PRECISIONS}, not {precision!r}")
    name = f"{kind}-{precision}-opset{ONNX_OPSET}-{model_identity(kind, weights)}.onnx"
    return onnx_dir(engine_dir) / name


def stale_onnx(engine_dir: str | Path | None = None) -> list[Path]:
    """ONNX files in the cache that no current model would load: exported from other
    weights, another networks.py or another opset (`onnx_path` names every input)."""
    current = {onnx_path(kind, p, engine_dir).name for kind in IN_CHANNELS for p in PRECISIONS}
    return sorted(p for p in onnx_dir(engine_dir).glob("*.onnx") if p.name not in current)


def example_input(kind: str, batch: int = 2, height: int = 64, width: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((batch, IN_CHANNELS[kind], height, width), dtype=np.float32)


def _export(kind: str, precision: str, dest: Path) -> None:
    source = load_source_model(kind)
    model = source.model
    if precision == "fp16":
        model = _CastWrapper(model).eval()
    x = torch.from_numpy(example_input(kind))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    h = torch.export.Dim("h_blocks", min=1, max=MAX_BLOCKS)
    w = torch.export.Dim("w_blocks", min=1, max=MAX_BLOCKS)
    dynamic = ({0: batch, 2: STRIDE * h, 3: STRIDE * w},)
    # The exporter logs a page of notes (torchvision ops it skips, deprecations); keep
    # them out of CLI output, errors still raise.
    quiet = [
        logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")
    ]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                str(dest),
                dynamo=True,
                external_data=False,
                opset_version=ONNX_OPSET,
                dynamic_shapes=dynamic,
                optimize=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                verbose=False,
            )
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    exported = onnx.load(str(dest), load_external_data=False)
    exported.metadata_props.add(key=WEIGHTS_KEY, value=source.weights_sha256)
    onnx.save(exported, str(dest))


def check_onnx(path: str | Path, kind: str) -> str:
    """onnx.checker (full) and the expected input/output signature with dynamic axes;
    returns the sha256 of the weights the file records it holds."""
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    if [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] != [ONNX_OPSET]:
        raise ExportError(f"{path}: opset is not {ONNX_OPSET}")
    (inp,), (out,) = model.graph.input, model.graph.output
    if inp.name != INPUT_NAME or out.name != OUTPUT_NAME:
        raise ExportError(f"{path}: unexpected tensor names {inp.name!r}, {out.name!r}")
    dims = inp.type.tensor_type.shape.dim
    if len(dims) != 4 or dims[1].dim_value != IN_CHANNELS[kind]:
        raise ExportError(f"{path}: input is not N x {IN_CHANNELS[kind]} x H x W")
    if any(not dims[i].dim_param for i in (0, 2, 3)):
        raise ExportError(f"{path}: batch, height and width must be dynamic")
    return _weights_of(model, path)


def recorded_weights(path: str | Path) -> str:
    """The sha256 of the weights an exported file records it holds."""
    return _weights_of(onnx.load(str(path), load_external_data=False), path)


def _weights_of(model: onnx.ModelProto, path: str | Path) -> str:
    weights = {p.key: p.value for p in model.metadata_props}.get(WEIGHTS_KEY)
    if not weights:
        raise ExportError(f"{path}: records no weights hash")
    return str(weights)


def verify_with_onnxruntime(path: str | Path, kind: str, atol: float = 1e-3) -> float:
    """Run the file in ONNX Runtime (CPU) against PyTorch at two shapes; max abs diff."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    model = load_source_model(kind).model
    worst = 0.0
    for shape in ((1, 32, 48), (2, 48, 32)):
        x = example_input(kind, *shape, seed=1)
        got = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        if got.shape != want.shape:
            raise ExportError(f"{path}: output shape {got.shape} != PyTorch {want.shape}")
        worst = max(worst, float(np.abs(got - want).max()))
    if worst > atol:
        raise ExportError(f"{path}: ONNX Runtime differs from PyTorch by {worst:.2e} > {atol}")
    return worst


def _verify_fp16(path: str | Path, kind: str) -> None:
    """fp16 graphs are checked loosely (5e-2), and only where ONNX Runtime can run them."""
    try:
        verify_with_onnxruntime(path, kind, atol=5e-2)
    except ExportError:
        raise
    except Exception as exc:  # e.g. a CPU provider without an fp16 kernel
        log.info("fp16 ONNX not run in ONNX Runtime here (%s); checker passed", exc)


def cached_problem(path: Path, kind: str) -> str | None:
    """Why the cached file at `path` cannot be loaded (None: it can): missing, invalid, or
    holding other weights than its name says."""
    if not path.exists():
        return "not exported yet"
    try:
        weights = check_onnx(path, kind)
    except Exception as exc:  # corrupt or foreign file: never trust it
        return f"invalid: {exc}"
    return None if weights in path.name else f"holds weights {weights[:12]}, not the ones its name says"


def export_onnx(
    kind: str,
    precision: str = "fp32",
    engine_dir: str | Path | None = None,
    force: bool = False,
    build: bool = True,
) -> Path:
    """The checked ONNX file for `kind` (from the weights on disk), exported when missing
    and cached after; `force` exports again. build=False: EngineNotBuilt when missing."""
    path = onnx_path(kind, precision, engine_dir)
    if not force:
        why = cached_problem(path, kind)
        if why is None:
            return path
        if not build:
            weights = weights_sha256(kind)[:12]
            raise EngineNotBuilt(
                f"no ONNX export of the {kind} ({precision}, weights {weights}) in {path.parent} ({why})"
            )
        if path.exists():
            log.warning("cached ONNX %s is %s; exporting again", path, why)
    with build_lock(path):
        if not force and cached_problem(path, kind) is None:  # another process exported it
            return path
        return _export_checked(kind, precision, path)


def _export_checked(kind: str, precision: str, path: Path) -> Path:
    """Export, check and run the graph in a temporary file, then rename it into the cache
    under the name of the weights it holds (`path`'s, unless the file changed meanwhile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        _export(kind, precision, Path(tmp))
        weights = check_onnx(tmp, kind)
        if precision == "fp32":
            verify_with_onnxruntime(tmp, kind)
        else:
            _verify_fp16(tmp, kind)
        final = onnx_path(kind, precision, path.parent.parent, weights)
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("exported %s (%s) to %s in %.1fs", kind, precision, final, time.perf_counter() - t0)
    return final
