"""`load_engine`, which picks a backend for a model (the interface every backend implements,
`Engine`, is in engine_build.engine and re-exported here).

Backends: "tensorrt" (engine file + pycuda buffers, NVIDIA GPU), "onnxruntime" (CUDA or
CPU provider), "torch" (eager PyTorch, CPU or CUDA). The device "auto" (the default) is
"cuda" when a GPU is usable here, else "cpu" (`resolve_device`, which logs its choice
once per process). The backend "auto" resolves by a fixed rule, never by benchmarking at
start-up:

  1. a CUDA device (device "cuda[:N]", or "auto" with a usable GPU), and tensorrt +
     pycuda importable with a GPU visible  ->  tensorrt (fp16);
  2. a CUDA device asked for without TensorRT  ->  torch on CUDA (fp16, channels_last;
     onnxruntime's CUDA provider would run the fp32 graph), else onnxruntime's CUDA
     provider when this onnxruntime has it;
  3. CPU  ->  CPU_AUTO_BACKEND, the faster of onnxruntime and torch measured on the
     development CPU (below).

Each step that is skipped logs why (e.g. "tensorrt not importable"), so a GPU worker that
silently ended up on CPU shows it in its log; the backend finally used is in `Engine.key`.
An engine that was never built (EngineNotBuilt, in a process that only loads) is not
skipped: a worker with a GPU must not end up on its CPU because nobody built its engines.

CPU measurement behind CPU_AUTO_BACKEND (2026-11-25, 2-core x86-64 VM shared with
other jobs: load average 5-7 during the runs, so absolute numbers are pessimistic and
noisy; torch 2.13.0+cpu (channels_last), onnxruntime 1.32.0, default threads, fp32,
batch 1, 2 warm-up runs then >= 3 s timed; two runs, A with untrained weights, B with
the first trained weights - weights do not change the cost):

    clearmark bench --backend torch --backend onnxruntime
                                     --batch 1 --size 512     (and --size 1024)

                      ms/image, run A            ms/image, run B
    size  model     torch  onnxruntime        torch  onnxruntime
    512   detector    981      452              899      401
    512   remover    1012      454             1399      423
    1024  detector   4725     2058             2409     1095
    1024  remover    3338     2313             2662     1118

and interleaved single runs (detector, 512, min of 4): 1 thread torch 509 ms vs
onnxruntime 305 ms; 2 threads 712 ms vs 312 ms. onnxruntime was faster in every run
(1.4-3.3x), so CPU auto = onnxruntime.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import onnxruntime as ort
import torch

from clearmark.engine_build import ort_backend, torch_backend, trt_backend
from clearmark.engine_build.engine import BackendUnavailable, Engine, EngineNotBuilt
from clearmark.models.networks import IN_CHANNELS
from clearmark.settings import Settings, get_settings

__all__ = [
    "BACKENDS",
    "CPU_AUTO_BACKEND",
    "BackendUnavailable",
    "Engine",
    "EngineNotBuilt",
    "load_engine",
    "resolve_device",
]

log = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "onnxruntime", "torch")
CPU_AUTO_BACKEND = "onnxruntime"
# What an NVIDIA driver puts on a host (and the NVIDIA container runtime in a container);
# /dev/dxg is WSL 2's GPU. Without any of them there is no GPU to probe for.
NVIDIA_DRIVER_PATHS = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/dxg")


def _torch_cuda_available() -> bool:
    try:
        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - a broken CUDA install must not stop start-up
        return False


def gpu_usable() -> tuple[bool, str]:
    """(whether a GPU is usable here, why), cheapest check first: no NVIDIA driver, no
    GPU (nothing else is asked, so a CPU host decides at once); then whether torch, or
    TensorRT with pycuda, sees one, or onnxruntime has its CUDA provider."""
    if not any(Path(p).exists() for p in NVIDIA_DRIVER_PATHS):
        return False, "no NVIDIA driver on this host"
    if _torch_cuda_available():
        return True, "torch sees a CUDA GPU"
    ok, why = trt_backend.tensorrt_status()
    if ok:
        return True, why
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return True, "onnxruntime has its CUDA provider"
    return False, f"an NVIDIA driver but nothing here can use it (torch has no CUDA; {why}; onnxruntime: CPU)"


@functools.cache
def _auto_device() -> str:
    usable, why = gpu_usable()
    device = "cuda" if usable else "cpu"
    log.info("device auto -> %s (%s)", device, why)
    return device


def resolve_device(device: str | None, settings: Settings | None = None) -> str:
    """None -> settings.device; "auto" -> "cuda" when a GPU is usable, else "cpu"."""
    if device is None:
        device = (settings or get_settings()).device
    device = device.strip().lower() or "cpu"
    if device == "auto":
        device = _auto_device()
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be cpu, cuda, cuda:N or auto, not {device!r}")
    return device


def load_engine(
    kind: str,
    backend: str = "auto",
    device: str | None = None,
    precision: str | None = None,
    settings: Settings | None = None,
    build: bool = True,
    force: bool = False,
) -> Engine:
    """An engine for `kind` ("detector" or "remover").

    backend: "auto" | "tensorrt" | "onnxruntime" | "torch" (None -> settings.backend).
    device: "cpu" | "cuda[:N]" | "auto" (None -> settings.device).
    precision: None for the backend's default (fp16 on GPU, fp32 on CPU), or "fp32" | "fp16".
    settings: a clearmark.settings.Settings for engine_dir, threads, the profile sizes
    and the TensorRT workspace (None -> get_settings()).
    build: make the engine file (ONNX export, TensorRT engine) when the cache lacks it,
    under its build lock; False (workers) raises EngineNotBuilt instead. force: make it
    again even when cached.
    """
    if kind not in IN_CHANNELS:
        raise ValueError(f"unknown model kind {kind!r}")
    if settings is None:
        settings = get_settings()
    backend = (backend or settings.backend).strip().lower()
    device = resolve_device(device, settings)

    # The backends are called through their modules (trt_backend.TrtEngine), so that a
    # test replacing one there is seen here.
    if backend == "auto":
        engine = _load_auto(kind, device, precision, settings, build, force)
    elif backend in ("tensorrt", "trt"):
        ok, why = trt_backend.tensorrt_status()
        if not ok:
            raise BackendUnavailable(f"tensorrt backend unavailable: {why}")
        engine = trt_backend.TrtEngine(
            kind,
            device=device if device.startswith("cuda") else "cuda",
            precision=precision or "fp16",
            settings=settings,
            build=build,
            force=force,
        )
    elif backend in ("onnxruntime", "ort", "onnx"):
        engine = ort_backend.OrtEngine(kind, device=device, settings=settings, build=build, force=force)
    elif backend in ("torch", "pytorch"):
        engine = torch_backend.TorchEngine(kind, device=device, precision=precision, settings=settings)
    else:
        raise ValueError(f"unknown backend {backend!r}; expected auto or one of {BACKENDS}")
    log.info("%s: %s (device %s)", kind, engine.key, device)
    return engine


def _load_auto(
    kind: str, device: str, precision: str | None, settings: Settings, build: bool, force: bool
) -> Engine:
    if device.startswith("cuda"):
        ok, why = trt_backend.tensorrt_status()
        if ok:
            try:
                return trt_backend.TrtEngine(
                    kind,
                    device=device,
                    precision=precision or "fp16",
                    settings=settings,
                    build=build,
                    force=force,
                )
            except EngineNotBuilt:
                raise
            except Exception as exc:  # build/deserialise failure: keep the worker alive
                log.warning("auto: TensorRT engine for %s failed (%s); falling back", kind, exc)
        else:
            log.info("auto: not using tensorrt for %s: %s", kind, why)
        if _torch_cuda_available():
            log.info("auto: %s on torch/%s", kind, device)
            return torch_backend.TorchEngine(kind, device=device, precision=precision, settings=settings)
        if "CUDAExecutionProvider" in ort.get_available_providers():
            log.info("auto: %s on onnxruntime/%s", kind, device)
            return ort_backend.OrtEngine(kind, device=device, settings=settings, build=build, force=force)
        log.warning(
            "auto: device %s asked for but neither torch nor onnxruntime has CUDA here; %s runs on CPU",
            device,
            kind,
        )
    if precision not in (None, "fp32"):
        log.info("auto: precision %s ignored on CPU (fp32)", precision)
    if CPU_AUTO_BACKEND == "onnxruntime":
        try:
            return ort_backend.OrtEngine(kind, device="cpu", settings=settings, build=build, force=force)
        except ImportError as exc:
            log.warning("auto: onnxruntime unavailable (%s); using torch on CPU", exc)
    return torch_backend.TorchEngine(kind, device="cpu", settings=settings)
