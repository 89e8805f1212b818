"""The one settings object: every knob is a `CLEARMARK_*` environment variable.

Defaults give the embedded mode: SQLite and local files under `CLEARMARK_DATA_DIR`
(default `./.clearmark`), nothing else running. Production sets the database and broker
URLs to PostgreSQL and Redis.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "CLEARMARK_"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"


def default_database_url(data_dir: Path) -> str:
    """The embedded default: a SQLite file in the data dir."""
    return f"sqlite:///{data_dir / 'clearmark.db'}"


def _env(name: str, default: str) -> str:
    return os.environ.get(PREFIX + name, default)


def _env_int(name: str, default: int) -> int:
    return int(_env(name, str(default)))


def _env_float(name: str, default: float) -> float:
    return float(_env(name, str(default)))


def _env_bool(name: str, default: bool) -> bool:
    value = _env(name, "1" if default else "0").strip().lower()
    if value not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise ValueError(f"{PREFIX}{name}={value!r}: expected 1/0, true/false, yes/no or on/off")
    return value in ("1", "true", "yes", "on")


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in _env(name, "").split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=lambda: Path(_env("DATA_DIR", ".clearmark")).resolve())
    database_url: str = ""
    broker_url: str = field(default_factory=lambda: _env("BROKER_URL", DEFAULT_BROKER_URL))
    result_backend: str = field(default_factory=lambda: _env("RESULT_BACKEND", ""))
    storage_uri: str = ""

    # Input limits: a file over these fails its own job, nothing else.
    max_bytes: int = field(default_factory=lambda: _env_int("MAX_BYTES", 50 * 1024 * 1024))
    max_pixels: int = field(default_factory=lambda: _env_int("MAX_PIXELS", 40_000_000))
    min_side: int = field(default_factory=lambda: _env_int("MIN_SIDE", 16))

    # Pipeline.
    detect_long_side: int = field(default_factory=lambda: _env_int("DETECT_LONG_SIDE", 640))
    # Also run the detector on the mirrored image and keep the lower probability of the
    # two: overlaid marks score high either way, accidental hits on product print less so.
    detect_flip: bool = field(default_factory=lambda: _env_bool("DETECT_FLIP", True))
    mask_threshold: float = field(default_factory=lambda: _env_float("MASK_THRESHOLD", 0.5))
    mask_min_area: int = field(default_factory=lambda: _env_int("MASK_MIN_AREA", 24))
    mask_dilate_px: int = field(default_factory=lambda: _env_int("MASK_DILATE_PX", 6))
    # The remover's full-resolution mark probability at or above this, inside the dilated
    # mask, is a watermark pixel (what `confirmed` counts and the job's mask reports).
    mark_threshold: float = field(default_factory=lambda: _env_float("MARK_THRESHOLD", 0.55))
    # A detected region is changed only if the remover finds at least this many watermark
    # pixels in it (0: change every detected region).
    mask_confirm_px: int = field(default_factory=lambda: _env_int("MASK_CONFIRM_PX", 64))
    # Pixels change only within this many px of the watermark's own pixels (feathered);
    # -1: everywhere in the detector's dilated mask (pipeline code version 4).
    change_ring_px: int = field(default_factory=lambda: _env_int("CHANGE_RING_PX", 3))
    # JPEG results keep the upload's DCT coefficients outside the blocks the change touches
    # (workers.jpeg_exact); 0: decode and re-encode the whole photo, as before.
    jpeg_exact: bool = field(default_factory=lambda: _env_bool("JPEG_EXACT", True))
    remove_crop_margin: int = field(default_factory=lambda: _env_int("REMOVE_CROP_MARGIN", 32))
    remove_max_crop: int = field(default_factory=lambda: _env_int("REMOVE_MAX_CROP", 1024))
    # Also run the remover on each crop's mirror image and average the two outputs.
    remove_flip: bool = field(default_factory=lambda: _env_bool("REMOVE_FLIP", True))
    # A finished job whose residual score (detector run on the output) or whose detector
    # confidence falls in these bands goes to `needs_review` instead of `succeeded`.
    review_residual_min: float = field(default_factory=lambda: _env_float("REVIEW_RESIDUAL_MIN", 0.5))
    review_confidence_max: float = field(default_factory=lambda: _env_float("REVIEW_CONFIDENCE_MAX", 0.0))
    # The do-no-harm gate (workers.gate): a changed region stays changed only if the
    # detector is sure of it (GATE_MIN_CONFIDENCE), its fitted opacity is that of a visible
    # overlay (GATE_MIN_OPACITY), one overlay colour explains GATE_MIN_EXPLAINED of the
    # change, the removed colour does not carry on outside it (GATE_MAX_CONTINUES) and the
    # fill kept the texture around it (GATE_MAX_FLATTENED; 1 = not checked); a region put
    # back although the detector's confidence there was >= GATE_REVIEW_CONFIDENT sends the
    # job to needs_review. Chosen with `clearmark eval-real --split train --sweep-gate`.
    gate: bool = field(default_factory=lambda: _env_bool("GATE", True))
    gate_min_confidence: float = field(default_factory=lambda: _env_float("GATE_MIN_CONFIDENCE", 0.95))
    gate_min_opacity: float = field(default_factory=lambda: _env_float("GATE_MIN_OPACITY", 0.2))
    gate_min_explained: float = field(default_factory=lambda: _env_float("GATE_MIN_EXPLAINED", 0.8))
    gate_max_continues: float = field(default_factory=lambda: _env_float("GATE_MAX_CONTINUES", 0.05))
    gate_max_flattened: float = field(default_factory=lambda: _env_float("GATE_MAX_FLATTENED", 1.0))
    gate_review_confident: float = field(default_factory=lambda: _env_float("GATE_REVIEW_CONFIDENT", 0.99))

    # Engines.
    backend: str = field(default_factory=lambda: _env("BACKEND", "auto"))
    device: str = field(default_factory=lambda: _env("DEVICE", "cpu"))
    threads: int = field(default_factory=lambda: _env_int("THREADS", 0))
    engine_dir: str = field(default_factory=lambda: _env("ENGINE_DIR", ""))
    trt_workspace_mb: int = field(default_factory=lambda: _env_int("TRT_WORKSPACE_MB", 2048))

    # Celery.
    queue_uploads: str = field(default_factory=lambda: _env("QUEUE_UPLOADS", "clearmark.uploads"))
    queue_bulk: str = field(default_factory=lambda: _env("QUEUE_BULK", "clearmark.bulk"))
    queue_webhooks: str = field(default_factory=lambda: _env("QUEUE_WEBHOOKS", "clearmark.webhooks"))
    soft_time_limit_s: int = field(default_factory=lambda: _env_int("SOFT_TIME_LIMIT_S", 240))
    hard_time_limit_s: int = field(default_factory=lambda: _env_int("HARD_TIME_LIMIT_S", 300))
    max_attempts: int = field(default_factory=lambda: _env_int("MAX_ATTEMPTS", 3))
    worker_concurrency: int = field(default_factory=lambda: _env_int("WORKER_CONCURRENCY", 1))
    # Seconds before Redis re-delivers an unacknowledged task (its worker died). Must stay
    # above queue wait + run time; 0 means hard time limit + 1 h (DESIGN.md, practice notes).
    visibility_timeout_s: int = field(default_factory=lambda: _env_int("VISIBILITY_TIMEOUT_S", 0))

    # Leases and the reaper (workers.reaper): a running attempt holds its job for
    # LEASE_S, renewed every LEASE_S / 3 while it runs; the reaper runs every
    # REAP_INTERVAL_S (`clearmark worker --reap`, `clearmark reap --every`, Celery beat)
    # and leaves alone what changed in the last REAP_GRACE_S (a publish may be under way).
    lease_s: float = field(default_factory=lambda: _env_float("LEASE_S", 60.0))
    reap_interval_s: float = field(default_factory=lambda: _env_float("REAP_INTERVAL_S", 30.0))
    reap_grace_s: float = field(default_factory=lambda: _env_float("REAP_GRACE_S", 15.0))
    # Transient faults (database, broker, storage): a task retries with doubling delays up to
    # RETRY_BACKOFF_MAX_S for TRANSIENT_RETRY_S in all (then the reaper takes over); a
    # finished attempt waits up to that long for the database to record its result.
    retry_backoff_max_s: float = field(default_factory=lambda: _env_float("RETRY_BACKOFF_MAX_S", 30.0))
    transient_retry_s: float = field(default_factory=lambda: _env_float("TRANSIENT_RETRY_S", 600.0))

    # Prometheus: each worker node serves its metrics on this port (0: off); the API
    # serves /metrics on its own port.
    metrics_port: int = field(default_factory=lambda: _env_int("METRICS_PORT", 0))

    # HTTP API (`clearmark api`). public_url is the base of links in responses and webhooks
    # (default: the base URL of each request; webhooks then carry relative links).
    api_host: str = field(default_factory=lambda: _env("API_HOST", "127.0.0.1"))
    api_port: int = field(default_factory=lambda: _env_int("API_PORT", 8000))
    public_url: str = field(default_factory=lambda: _env("PUBLIC_URL", ""))
    # Per tenant: requests to /v1 (a `limits` rate string; its counters live in
    # RATE_LIMIT_STORAGE: memory:// counts per API process, a redis:// URL across all of
    # them) and uploads in flight at once in one API process. Over either: 429.
    rate_limit: str = field(default_factory=lambda: _env("RATE_LIMIT", "30/second;600/minute"))
    rate_limit_storage: str = field(default_factory=lambda: _env("RATE_LIMIT_STORAGE", "memory://"))
    upload_concurrency: int = field(default_factory=lambda: _env_int("UPLOAD_CONCURRENCY", 8))

    # Webhooks: delivery attempts, first retry delay (doubling, capped at 60 s: keep it well
    # under the visibility timeout), per-request timeout, and the hosts, IPs or CIDR ranges a
    # callback may reach although they are loopback/private/link-local (empty: none).
    webhook_max_attempts: int = field(default_factory=lambda: _env_int("WEBHOOK_MAX_ATTEMPTS", 6))
    webhook_backoff_s: float = field(default_factory=lambda: _env_float("WEBHOOK_BACKOFF_S", 5.0))
    webhook_timeout_s: float = field(default_factory=lambda: _env_float("WEBHOOK_TIMEOUT_S", 10.0))
    webhook_allow_hosts: tuple[str, ...] = field(default_factory=lambda: _env_list("WEBHOOK_ALLOW_HOSTS"))

    def __post_init__(self) -> None:
        # Paths that default to places inside data_dir are derived once here.
        if not self.database_url:
            url = _env("DATABASE_URL", default_database_url(self.data_dir))
            object.__setattr__(self, "database_url", url)
        if not self.storage_uri:
            uri = _env("STORAGE_URI", (self.data_dir / "storage").as_uri())
            object.__setattr__(self, "storage_uri", uri)
        if not self.visibility_timeout_s:
            object.__setattr__(self, "visibility_timeout_s", self.hard_time_limit_s + 3600)
        if not self.engine_dir:
            object.__setattr__(self, "engine_dir", str(self.data_dir / "engines"))

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)


_current: Settings | None = None


def get_settings() -> Settings:
    global _current
    if _current is None:
        _current = Settings()
    return _current


def set_settings(settings: Settings | None) -> None:
    """Install settings for this process (CLI options, tests); None re-reads the env."""
    global _current
    _current = settings
