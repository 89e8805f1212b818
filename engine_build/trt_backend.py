"""TensorRT backend, written against the TensorRT 10 and 11 Python APIs with pycuda buffers.

Nothing here imports tensorrt or pycuda at module import time: `tensorrt_status()` says
whether they (and a GPU) are usable, and `load_engine("auto")` falls back when not.
TensorRT 10 and 11 are supported (the `gpu` extra pins `>=10,<12`); another major
version is reported unusable.

Build (`ensure_engine`: `clearmark engines build`, or a process allowed to build):
- ONNX from engine_build.onnx_export, network from the ONNX parser; one optimization
  profile per model, sized to what the pipeline sends (engine_build.profiles); workspace
  limit from settings.trt_workspace_mb; a persistent timing cache per (TensorRT version,
  GPU) beside the engines. One TensorRT logger per process (`_trt_logger`).
- Precision (ARCHITECTURE.md, Engines: precision is in the ONNX graph; TensorRT 11 drops
  the FP16/INT8 builder flags and weak typing):
    fp16: the fp16 ONNX graph (fp16 weights/activations, float32 I/O casts in the graph),
        a strongly typed network: the STRONGLY_TYPED flag on 10; 11 types every network
        strongly and deprecates the flag, so none is set there.
    fp32: the fp32 graph, TF32 off (fp32 parity with ONNX Runtime).
    fp16 on a GPU without fast fp16 (compute capability < 5.3, or 6.1): built as fp32.
- Cache key (engine_build.trt_cache.EngineCacheKey): the weights the ONNX graph holds,
  ONNX sha256, TensorRT version, GPU name, compute capability, precision, profile. A
  process that may build replaces a mismatched or corrupt file under the build lock, and
  builds again once an engine that fails to deserialise; a process that only loads (a
  worker) raises EngineNotBuilt naming `clearmark engines build`.

Run (`TrtEngine.run`): the remover's crops padded to their buckets (engine_build.profiles),
per call `set_input_shape` for the batch's shape, device buffers and pinned host buffers
grown on demand and reused across calls, `execute_async_v3` on a pycuda stream. One
execution context, stream and buffer set per thread (TensorRT: one execution context per
thread). pycuda sits behind `_PycudaLayer`, a few methods wide, so cuda-python could
replace it without touching the engine code.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
from numpy.typing import DTypeLike

from clearmark.engine_build.engine import Engine
from clearmark.engine_build.files import atomic_write
from clearmark.engine_build.onnx_export import INPUT_NAME, export_onnx, recorded_weights
from clearmark.engine_build.profiles import (
    Profile,
    engine_profile,
    parse_profile,
    remover_buckets,
    run_bucketed,
)
from clearmark.engine_build.trt_cache import EngineCacheKey, engine_path, get_or_build, timing_cache_path
from clearmark.errors import BUILD_ENGINES_COMMAND
from clearmark.models.networks import IN_CHANNELS
from clearmark.models.weights import file_sha256
from clearmark.settings import Settings, get_settings

log = logging.getLogger(__name__)

SUPPORTED_MAJORS = (10, 11)

# tensorrt and pycuda have no type information: their objects (ICudaEngine, execution
# contexts, pycuda's Device) are `Any` here. The two pycuda objects this module keeps are
# described by what it uses of them.


class _DeviceBuffer(Protocol):
    """pycuda.driver.DeviceAllocation: int() is its device address."""

    def free(self) -> None: ...
    def __int__(self) -> int: ...


class _Stream(Protocol):
    """pycuda.driver.Stream."""

    handle: int

    def synchronize(self) -> None: ...


# --------------------------------------------------------------------------- availability


def _import_tensorrt() -> ModuleType:
    import tensorrt as trt  # noqa: PLC0415 - lazy by design (the gpu extra)

    module: ModuleType = trt  # untyped: mypy sees Any
    return module


def _import_pycuda() -> ModuleType:
    import pycuda.driver as cuda  # noqa: PLC0415 - lazy by design (the gpu extra)

    module: ModuleType = cuda  # untyped: mypy sees Any
    return module


def cuda_device_count() -> int:
    """GPUs visible to the CUDA driver through pycuda (0 when pycuda or a driver is missing)."""
    try:
        cuda = _import_pycuda()
        cuda.init()
        return int(cuda.Device.count())
    except Exception:
        return 0


def tensorrt_status() -> tuple[bool, str]:
    """(True, version) when tensorrt, pycuda and a CUDA GPU are usable, else (False, why)."""
    try:
        trt = _import_tensorrt()
    except Exception as exc:
        return False, f"tensorrt not importable ({exc.__class__.__name__}: {exc})"
    try:
        cuda = _import_pycuda()
    except Exception as exc:
        return False, f"pycuda not importable ({exc.__class__.__name__}: {exc})"
    try:
        cuda.init()
        count = int(cuda.Device.count())
    except Exception as exc:
        return False, f"CUDA driver unusable ({exc.__class__.__name__}: {exc})"
    if count < 1:
        return False, "no CUDA GPU visible"
    version = str(getattr(trt, "__version__", "?"))
    if trt_major(version) not in SUPPORTED_MAJORS:
        return False, f"tensorrt {version} is not supported (clearmark needs TensorRT 10 or 11)"
    return True, f"tensorrt {version}, {count} GPU(s)"


@functools.cache
def _trt_logger() -> Any:  # a trt.Logger (tensorrt is untyped)
    """The process's one TensorRT logger, which builder and runtimes share (TensorRT asks
    for one logger per process)."""
    trt = _import_tensorrt()
    return trt.Logger(trt.Logger.WARNING)


def _cuda_index(device: str) -> int:
    _, _, idx = device.partition(":")
    return int(idx or 0)


# --------------------------------------------------------------------------- pycuda layer


class _PycudaLayer:
    """The buffer layer: a retained primary context, streams, device and pinned memory."""

    def __init__(self, index: int = 0) -> None:
        self.cuda = cuda = _import_pycuda()
        cuda.init()
        self.device = cuda.Device(index)
        self.context = self.device.retain_primary_context()

    @contextlib.contextmanager
    def active(self) -> Iterator[_PycudaLayer]:
        self.context.push()
        try:
            yield self
        finally:
            self.cuda.Context.pop()

    def identity(self) -> tuple[str, str]:
        major, minor = self.device.compute_capability()
        return str(self.device.name()), f"{major}.{minor}"

    def stream(self) -> _Stream:
        stream: _Stream = self.cuda.Stream()
        return stream

    def alloc(self, nbytes: int) -> _DeviceBuffer:
        buf: _DeviceBuffer = self.cuda.mem_alloc(max(int(nbytes), 1))
        return buf

    def pinned(self, count: int, dtype: DTypeLike) -> np.ndarray:
        host: np.ndarray = self.cuda.pagelocked_empty(max(int(count), 1), dtype)
        return host

    def htod(self, dst: _DeviceBuffer, src: np.ndarray, stream: _Stream | None = None) -> None:
        if stream is None:
            self.cuda.memcpy_htod(dst, src)
        else:
            self.cuda.memcpy_htod_async(dst, src, stream)

    def dtoh(self, dst: np.ndarray, src: _DeviceBuffer, stream: _Stream) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, stream)


# --------------------------------------------------------------------------- build


def trt_major(version: str) -> int:
    head = str(version).split(".")[0]
    return int(head) if head.isdigit() else 0


def has_fast_fp16(compute_capability: str) -> bool:
    major, minor = (int(p) for p in compute_capability.split(".")[:2])
    return (major, minor) >= (5, 3) and (major, minor) != (6, 1)


@dataclass(frozen=True)
class BuildPlan:
    """What one engine build does; `builder(plan) -> bytes` turns it into an engine."""

    kind: str
    precision: str  # effective: fp32 | fp16
    onnx_path: Path
    strongly_typed_flag: bool  # set NetworkDefinitionCreationFlag.STRONGLY_TYPED
    profile: Profile
    workspace_mb: int
    timing_cache: Path
    device_index: int = 0


def plan_precision(precision: str, trt_version: str, compute_capability: str) -> tuple[str, str, bool]:
    """(effective precision, ONNX precision, set the STRONGLY_TYPED creation flag)."""
    if precision == "fp32":
        return "fp32", "fp32", False
    if precision != "fp16":
        raise ValueError(f"TensorRT precision must be fp32 or fp16, not {precision!r}")
    if not has_fast_fp16(compute_capability):
        log.warning("GPU sm%s has no fast fp16; building fp32", compute_capability)
        return "fp32", "fp32", False
    return "fp16", "fp16", trt_major(trt_version) < 11


def gpu_identity(device_index: int = 0) -> tuple[str, str, str]:
    """(TensorRT version, GPU name, compute capability)."""
    trt = _import_tensorrt()
    name, cc = _PycudaLayer(device_index).identity()
    return str(trt.__version__), name, cc


@dataclass
class EngineBuild:
    data: bytes
    key: EngineCacheKey
    path: Path
    built: bool
    plan: BuildPlan


def ensure_engine(
    kind: str,
    precision: str = "fp16",
    profile: Profile | str | None = None,
    engine_dir: str | Path | None = None,
    *,
    device_index: int = 0,
    identity: tuple[str, str, str] | None = None,
    builder: Callable[[BuildPlan], bytes] | None = None,
    force: bool = False,
    build: bool = True,
    settings: Settings | None = None,
) -> EngineBuild:
    """The serialized engine for these settings: from the cache when its key matches and
    its bytes are intact, else built (with `builder`, default the TensorRT builder) under
    the engine's build lock. build=False only loads: EngineNotBuilt when it is missing.

    `profile` defaults to `engine_profile(kind)`. `identity` = (TensorRT version, GPU
    name, compute capability) defaults to the real ones; tests on machines without
    TensorRT pass it (and a fake `builder`) to exercise this same cache path.
    """
    settings = settings or get_settings()
    engine_dir = Path(engine_dir or settings.engine_dir)
    if profile is None:
        profile = engine_profile(kind, settings)
    elif not isinstance(profile, Profile):
        profile = parse_profile(profile)
    trt_version, gpu_name, cc = identity or gpu_identity(device_index)
    eff, onnx_precision, strongly_typed = plan_precision(precision, trt_version, cc)
    onnx = export_onnx(kind, onnx_precision, engine_dir, build=build)
    key = EngineCacheKey(
        kind=kind,
        weights_sha256=recorded_weights(onnx),
        onnx_sha256=file_sha256(onnx),
        trt_version=trt_version,
        gpu_name=gpu_name,
        compute_capability=cc,
        precision=eff,
        profile=str(profile),
    )
    plan = BuildPlan(
        kind=kind,
        precision=eff,
        onnx_path=onnx,
        strongly_typed_flag=strongly_typed,
        profile=profile,
        workspace_mb=settings.trt_workspace_mb,
        timing_cache=timing_cache_path(engine_dir, trt_version, gpu_name, cc),
        device_index=device_index,
    )
    make = builder or build_serialized_engine
    data, built = get_or_build(engine_dir, key, (lambda: make(plan)) if build else None, force=force)
    return EngineBuild(data=data, key=key, path=engine_path(engine_dir, key), built=built, plan=plan)


def build_serialized_engine(plan: BuildPlan) -> bytes:
    """Build one engine with the TensorRT builder (needs tensorrt, pycuda and a GPU)."""
    trt = _import_tensorrt()
    layer = _PycudaLayer(plan.device_index)
    with layer.active():
        builder = trt.Builder(_trt_logger())
        flags = 0
        if plan.strongly_typed_flag:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, _trt_logger())
        if not parser.parse_from_file(str(plan.onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"ONNX parser failed on {plan.onnx_path}: {errors}")

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mb << 20)

        timing = None
        if plan.timing_cache.exists():
            try:
                timing = config.create_timing_cache(plan.timing_cache.read_bytes())
            except Exception as exc:  # unreadable or from another build: start afresh
                log.warning("timing cache %s unreadable (%s)", plan.timing_cache, exc)
        else:
            timing = config.create_timing_cache(b"")
        if timing is None or not config.set_timing_cache(timing, ignore_mismatch=False):
            log.warning("timing cache %s unusable; starting a new one", plan.timing_cache)
            timing = config.create_timing_cache(b"")
            config.set_timing_cache(timing, ignore_mismatch=True)

        lo, opt, hi = plan.profile.nchw(IN_CHANNELS[plan.kind])
        optimization = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            optimization.set_shape(network.get_input(i).name, lo, opt, hi)
        config.add_optimization_profile(optimization)
        if plan.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: parity with ONNX

        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build {plan.kind} ({plan.precision})")
        atomic_write(plan.timing_cache, bytes(config.get_timing_cache().serialize()))
        return bytes(serialized)


# --------------------------------------------------------------------------- run


class _ThreadState:
    """One execution context, stream and buffer set (grown on demand, reused)."""

    def __init__(self, engine: Any, layer: _PycudaLayer) -> None:  # engine: trt.ICudaEngine
        self.context: Any = engine.create_execution_context()  # trt.IExecutionContext
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context")
        self.stream = layer.stream()
        self.layer = layer
        self.device: dict[str, tuple[_DeviceBuffer, int]] = {}
        self.host: dict[str, np.ndarray] = {}

    def device_buffer(self, name: str, nbytes: int) -> _DeviceBuffer:
        held = self.device.get(name)
        if held is not None and nbytes <= held[1]:
            return held[0]
        cap = 0
        if held is not None:
            held[0].free()
            cap = held[1]
        cap = max(nbytes, 2 * cap)
        buf = self.layer.alloc(cap)
        self.device[name] = (buf, cap)
        return buf

    def host_buffer(self, name: str, shape: tuple[int, ...], dtype: DTypeLike) -> np.ndarray:
        count = int(np.prod(shape))
        buf = self.host.get(name)
        if buf is None or buf.size < count or buf.dtype != np.dtype(dtype):
            size = count if buf is None else max(count, 2 * buf.size)
            buf = self.layer.pinned(size, dtype)
            self.host[name] = buf
        return buf[:count].reshape(shape)

    def free(self) -> None:
        for buf, _ in self.device.values():
            buf.free()
        self.device.clear()
        self.host.clear()
        self.context = None


class TrtEngine(Engine):
    backend = "tensorrt"

    def __init__(
        self,
        kind: str,
        device: str = "cuda",
        precision: str = "fp16",
        profile: Profile | str | None = None,
        engine_dir: str | Path | None = None,
        settings: Settings | None = None,
        build: bool = True,
        force: bool = False,
    ) -> None:
        trt = _import_tensorrt()
        settings = settings or get_settings()
        self.kind = kind
        self.device_index = _cuda_index(device)
        self._layer = _PycudaLayer(self.device_index)

        def ensure(force: bool) -> EngineBuild:
            return ensure_engine(
                kind,
                precision,
                profile,
                engine_dir,
                device_index=self.device_index,
                force=force,
                build=build,
                settings=settings,
            )

        with self._layer.active():
            made = ensure(force)
            self._runtime = trt.Runtime(_trt_logger())
            engine = self._deserialize(made.data)
            if engine is None and build and not made.built:
                log.warning("cached engine %s failed to deserialise; rebuilding", made.path)
                made = ensure(True)
                engine = self._deserialize(made.data)
            if engine is None:
                again = f"{BUILD_ENGINES_COMMAND} --force"
                raise RuntimeError(
                    f"TensorRT could not deserialise {made.path}: build it again with `{again}`"
                )
        self._engine: Any = engine  # trt.ICudaEngine; None once closed
        self.cache_key = made.key
        self.weights_sha256 = made.key.weights_sha256
        self.precision = made.key.precision
        self.profile = made.plan.profile
        self.max_batch = self.profile.max.batch
        self.engine_path = self.artifact = made.path
        self.built = made.built
        if kind == "remover":  # the buckets this profile holds
            top = min(self.profile.max.height, self.profile.max.width)
            self.buckets = tuple(b for b in remover_buckets(settings.remove_max_crop) if b <= top)

        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise RuntimeError(f"expected one input and one output, got {inputs} / {outputs}")
        self._in, self._out = inputs[0], outputs[0]
        if self._in != INPUT_NAME:
            log.info("engine input is named %r", self._in)
        self._in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._in)))
        self._out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._out)))
        self._local = threading.local()
        self._states: list[_ThreadState] = []
        self._lock = threading.Lock()

    def _deserialize(self, data: bytes) -> Any:
        """The ICudaEngine, or None for a plan this TensorRT/GPU rejects."""
        try:
            return self._runtime.deserialize_cuda_engine(data)
        except Exception as exc:  # some versions raise instead of returning None
            log.warning("TensorRT rejected the engine plan: %s", exc)
            return None

    def _state(self) -> _ThreadState:
        state = getattr(self._local, "state", None)
        if state is None:
            state = _ThreadState(self._engine, self._layer)
            self._local.state = state
            with self._lock:
                self._states.append(state)
        return state

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        self._check_input(x)
        return run_bucketed(self._infer, x, self.buckets)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        n, _, h, w = x.shape
        if not self.profile.contains(n, h, w):
            raise ValueError(
                f"{self.kind} batch {n}x{h}x{w} is outside its TensorRT engine's profile {self.profile} "
                "(engine_build.profiles: what the pipeline sends with these settings)"
            )
        with self._layer.active():
            st = self._state()
            ctx = st.context
            if not ctx.set_input_shape(self._in, tuple(x.shape)):
                raise ValueError(f"TensorRT rejected input shape {x.shape}")
            out_shape = tuple(int(d) for d in ctx.get_tensor_shape(self._out))
            host_in = st.host_buffer("in", x.shape, self._in_dtype)
            np.copyto(host_in, x, casting="unsafe")
            host_out = st.host_buffer("out", out_shape, self._out_dtype)
            d_in = st.device_buffer("in", host_in.nbytes)
            d_out = st.device_buffer("out", host_out.nbytes)
            ctx.set_tensor_address(self._in, int(d_in))
            ctx.set_tensor_address(self._out, int(d_out))
            self._layer.htod(d_in, host_in, st.stream)
            if not ctx.execute_async_v3(st.stream.handle):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            self._layer.dtoh(host_out, d_out, st.stream)
            st.stream.synchronize()
            return host_out.astype(np.float32, copy=True)

    def close(self) -> None:
        layer = getattr(self, "_layer", None)
        if layer is None:
            return
        with layer.active():
            for st in getattr(self, "_states", []):
                st.free()
            self._states = []
            self._local = threading.local()
            self._engine = None
            self._runtime = None
        del self._layer  # closed: no layer (getattr above finds none)

    def __del__(self) -> None:  # best effort; CUDA may already be torn down at exit
        with contextlib.suppress(Exception):
            self.close()

    @property
    def details(self) -> str:
        k = self.cache_key
        return f"{k.precision}:trt{k.trt_version}:{k.digest[:12]}"
