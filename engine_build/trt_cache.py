"""TensorRT engine cache: keys and get-or-build. No TensorRT import here, so this logic
runs and is tested on machines without it; the builder is passed in.

An engine file is only loaded when the sidecar `<file>.json` records exactly the key
asked for *and* the sha256 of the engine bytes; anything else (missing sidecar, other
TensorRT version, other GPU, other precision or profile, other weights or ONNX graph,
truncated or altered bytes) is not that engine. Building one holds its build lock
(engine_build.files), so two processes never build the same engine at once: the second
waits and loads what the first wrote. Files are written whole (a temporary name, then a
rename); the engine before its sidecar, so a crash in between leaves a sidecar-less file
that is built again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clearmark.engine_build.engine import EngineNotBuilt
from clearmark.engine_build.files import atomic_write, build_lock

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass(frozen=True)
class EngineCacheKey:
    """Everything a serialized engine depends on; any change means another engine."""

    kind: str
    weights_sha256: str  # of the weights the ONNX graph was exported from
    onnx_sha256: str  # the exact graph parsed (covers networks.py and exporter)
    trt_version: str
    gpu_name: str
    compute_capability: str  # "8.9"
    precision: str  # fp32 | fp16
    profile: str  # str(profiles.Profile)

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @property
    def digest(self) -> str:
        blob = json.dumps({"format": CACHE_FORMAT, **self.as_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def file_name(self) -> str:
        return f"{self.kind}-{self.precision}-{self.digest[:20]}.engine"

    def describe(self) -> str:
        return (
            f"the {self.kind} ({self.precision}, TensorRT {self.trt_version}, {self.gpu_name} "
            f"sm{self.compute_capability}, weights {self.weights_sha256[:12]}, profile {self.profile})"
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def engine_path(engine_dir: str | Path, key: EngineCacheKey) -> Path:
    return Path(engine_dir) / "tensorrt" / key.file_name()


def cached_engine(engine_dir: str | Path, key: EngineCacheKey) -> tuple[bytes | None, str]:
    """(engine bytes, "") when a valid cached engine exists, else (None, why not)."""
    path = engine_path(engine_dir, key)
    meta_path = path.with_suffix(path.suffix + ".json")
    if not path.exists():
        return None, "no cached engine"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"engine metadata unreadable ({exc.__class__.__name__})"
    if meta.get("format") != CACHE_FORMAT or meta.get("key") != key.as_dict():
        recorded = meta.get("key") or {}
        diff = sorted(k for k, v in key.as_dict().items() if recorded.get(k) != v)
        return None, f"engine key mismatch ({', '.join(diff) or 'format'})"
    data = path.read_bytes()
    if len(data) != meta.get("size") or _sha256(data) != meta.get("engine_sha256"):
        return None, "engine file corrupt (sha256 mismatch)"
    return data, ""


def store_engine(engine_dir: str | Path, key: EngineCacheKey, data: bytes) -> Path:
    path = engine_path(engine_dir, key)
    atomic_write(path, data)
    meta = {"format": CACHE_FORMAT, "key": key.as_dict(), "size": len(data), "engine_sha256": _sha256(data)}
    atomic_write(path.with_suffix(path.suffix + ".json"), json.dumps(meta, indent=2, sort_keys=True).encode())
    return path


def get_or_build(
    engine_dir: str | Path,
    key: EngineCacheKey,
    build: Callable[[], bytes] | None,
    force: bool = False,
) -> tuple[bytes, bool]:
    """(serialized engine, built_now). `build()` returns fresh engine bytes; `build` None
    loads only: EngineNotBuilt names the engine missing and the command that builds it.
    `force` builds again even when a valid engine is cached."""
    if not force:
        data, why = cached_engine(engine_dir, key)
        if data is not None:
            return data, False
        if build is None:
            where = engine_path(engine_dir, key).parent
            raise EngineNotBuilt(f"no TensorRT engine for {key.describe()} in {where} ({why})")
    if build is None:
        raise ValueError("force needs a builder")
    with build_lock(engine_path(engine_dir, key)):
        if not force:  # built by another process while this one waited for the lock
            data, why = cached_engine(engine_dir, key)
            if data is not None:
                return data, False
            log.info("building TensorRT engine %s: %s", key.file_name(), why)
        else:
            log.info("rebuilding TensorRT engine %s (forced)", key.file_name())
        data = bytes(build())
        if not data:
            raise RuntimeError("TensorRT builder returned an empty engine")
        store_engine(engine_dir, key, data)
    return data, True


def stale_engines(engine_dir: str | Path, weights: dict[str, str]) -> list[Path]:
    """Engine files (and sidecars) built from other weights than `weights` (kind ->
    sha256), or whose sidecar is missing or unreadable. Engines for other GPUs, TensorRT
    versions, precisions or profiles stay: workers on other machines may share the dir."""
    stale = []
    for path in sorted((Path(engine_dir) / "tensorrt").glob("*.engine")):
        sidecar = path.with_suffix(path.suffix + ".json")
        try:
            key = json.loads(sidecar.read_text())["key"]
            keep = weights.get(key["kind"]) == key["weights_sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            keep = False
        if not keep:
            stale += [path] + ([sidecar] if sidecar.exists() else [])
    return stale


def timing_cache_path(
    engine_dir: str | Path, trt_version: str, gpu_name: str, compute_capability: str
) -> Path:
    """One persistent timing cache per TensorRT version and GPU, beside the engines."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "_", f"{trt_version}-{gpu_name}-sm{compute_capability}")
    return Path(engine_dir) / "tensorrt" / f"timing-{slug}.cache"
