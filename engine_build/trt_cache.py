"""TensorRT engine cache: keys, shape profiles, and get-or-build. No TensorRT import here,
so this logic runs and is tested on machines without it; the builder is passed in.

An engine file is only loaded when the sidecar `<file>.json` records exactly the key
asked for *and* the sha256 of the engine bytes; anything else (missing sidecar, other
TensorRT version, other GPU, other precision or profile, other weights or ONNX graph,
truncated or altered bytes) is rebuilt and replaced. Files are written to a temporary
name and renamed; the engine is written before its sidecar, so a crash in between leaves
a sidecar-less file that is rebuilt next time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clearmark.settings import Settings, get_settings

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass(frozen=True)
class Shape:
    batch: int
    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.batch}x{self.height}x{self.width}"


@dataclass(frozen=True)
class Profile:
    """The TensorRT optimization profile (same for every dynamic input)."""

    min: Shape
    opt: Shape
    max: Shape

    def __str__(self) -> str:
        return f"{self.min},{self.opt},{self.max}"

    def contains(self, batch: int, height: int, width: int) -> bool:
        return all(
            lo <= v <= hi
            for v, lo, hi in zip(
                (batch, height, width),
                (self.min.batch, self.min.height, self.min.width),
                (self.max.batch, self.max.height, self.max.width),
            )
        )

    def nchw(self, channels: int) -> tuple[tuple[int, ...], ...]:
        return tuple((s.batch, channels, s.height, s.width) for s in (self.min, self.opt, self.max))


def default_profile_text(settings: Settings | None = None) -> str:
    """min 1x16x16, opt 1x512x512, max 8 x M x M with M covering both what detection
    (settings.detect_long_side) and removal crops (settings.remove_max_crop) can send,
    and at least 1024."""
    s = settings or get_settings()
    side = max(1024, s.detect_long_side, s.remove_max_crop)
    side = -(-side // 16) * 16
    return f"1x16x16,1x512x512,8x{side}x{side}"


def parse_shape(text: str) -> Shape:
    """ "NxHxW", "HxW" (batch 1) or "S" (batch 1, S x S); H, W multiples of 16."""
    parts = [p for p in re.split(r"[x×*]", text.strip().lower()) if p]
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"bad shape {text!r}: expected NxHxW, HxW or S") from None
    if len(nums) == 1:
        nums = [1, nums[0], nums[0]]
    elif len(nums) == 2:
        nums = [1, *nums]
    if len(nums) != 3 or min(nums) < 1:
        raise ValueError(f"bad shape {text!r}: expected NxHxW, HxW or S")
    if nums[1] % 16 or nums[2] % 16:
        raise ValueError(f"bad shape {text!r}: height and width must be multiples of 16")
    return Shape(*nums)


def parse_profile(text: str | None, settings: Settings | None = None) -> Profile:
    """ "min,opt,max", each NxHxW (e.g. "1x16x16,1x512x512,8x1024x1024"); None or ""
    gives `default_profile_text()`."""
    parts = [p for p in (text or default_profile_text(settings)).split(",") if p.strip()]
    if len(parts) != 3:
        raise ValueError(f"profile {text!r}: expected min,opt,max")
    lo, opt, hi = (parse_shape(p) for p in parts)
    for a, b in ((lo, opt), (opt, hi)):
        if not (a.batch <= b.batch and a.height <= b.height and a.width <= b.width):
            raise ValueError(f"profile {text!r}: need min <= opt <= max in every dimension")
    return Profile(lo, opt, hi)


@dataclass(frozen=True)
class EngineCacheKey:
    """Everything a serialized engine depends on; any change means another engine."""

    kind: str
    weights_sha256: str  # the shipped weights (models.weights_sha256)
    onnx_sha256: str  # the exact graph parsed (covers networks.py and exporter)
    trt_version: str
    gpu_name: str
    compute_capability: str  # "8.9"
    precision: str  # fp32 | fp16 | int8
    profile: str  # str(Profile)

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @property
    def digest(self) -> str:
        blob = json.dumps({"format": CACHE_FORMAT, **self.as_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def file_name(self) -> str:
        return f"{self.kind}-{self.precision}-{self.digest[:20]}.engine"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    _atomic_write(path, data)
    meta = {"format": CACHE_FORMAT, "key": key.as_dict(), "size": len(data), "engine_sha256": _sha256(data)}
    _atomic_write(
        path.with_suffix(path.suffix + ".json"), json.dumps(meta, indent=2, sort_keys=True).encode()
    )
    return path


def get_or_build(
    engine_dir: str | Path, key: EngineCacheKey, build: Callable[[], bytes], force: bool = False
) -> tuple[bytes, bool]:
    """(serialized engine, built_now). `build()` returns fresh engine bytes."""
    if not force:
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
