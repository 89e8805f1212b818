"""The one settings object: every knob is a `CLEARMARK_*` environment variable.

Defaults give the embedded mode: SQLite and local files under `CLEARMARK_DATA_DIR`
(default `./.clearmark`), nothing else running. Production sets the database and broker
URLs to PostgreSQL and Redis.

Each setting comes from, in this order of precedence: a keyword argument (tests, CLI
options), the environment, the settings file named by `CLEARMARK_ENV_FILE` (env format,
`CLEARMARK_NAME=value` lines; no file is read unless that variable names one), the default.
Every value is checked when the settings load: a bad one raises `SettingsError`, whose
message is one line naming the variable (`CLEARMARK_MAX_BYTES=-5: must be at least 1`).
`clearmark config` shows every value and where it came from; the README's settings table
is generated from the field descriptions here (`settings_table_markdown`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from dotenv import dotenv_values
from limits import parse_many
from pydantic import BeforeValidator, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PREFIX = "CLEARMARK_"
ENV_FILE_VARIABLE = "CLEARMARK_ENV_FILE"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
# Webhook retries double from CLEARMARK_WEBHOOK_BACKOFF_S up to this (workers.webhooks).
WEBHOOK_BACKOFF_CAP_S = 60.0
BACKENDS = ("auto", "tensorrt", "trt", "onnxruntime", "ort", "onnx", "torch", "pytorch")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")

Source = Literal["default", "environment", "file", "override"]


class SettingsError(ValueError):
    """Settings that cannot be used; the message is one line naming the variable(s)."""


def default_database_url(data_dir: Path) -> str:
    """The embedded default: a SQLite file in the data dir."""
    return f"sqlite:///{data_dir / 'clearmark.db'}"


def variable(name: str) -> str:
    """The environment variable of the field `name`."""
    return PREFIX + name.upper()


_URL_PASSWORD = re.compile(
    r"^(?P<head>(?:[A-Za-z][A-Za-z0-9+.-]*://)?[^/@:]*:)(?P<password>[^/@]+)(?P<tail>@.*)$"
)


def mask_secret(value: str) -> str:
    """A URL with its password replaced by `***` (`postgresql://user:***@host/db`); any
    other value unchanged."""
    return _URL_PASSWORD.sub(r"\g<head>***\g<tail>", value)


def _parse_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise PydanticCustomError("bool_word", "expected 1/0, true/false, yes/no or on/off")


def _parse_list(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


Flag = Annotated[bool, BeforeValidator(_parse_bool)]
CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_parse_list)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]

# json_schema_extra keys: "secret" (the value may hold a password: shown masked),
# "default_doc" (the README's default column, where the plain default says too little),
# "derived" (the empty/0 default is worked out from other settings).
SECRET: dict[str, Any] = {"secret": True}


def _doc(default_doc: str, **more: Any) -> dict[str, Any]:
    return {"default_doc": default_doc, **more}


class Settings(BaseSettings):
    """Every `CLEARMARK_*` knob; immutable (`replace` makes a changed copy)."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        env_ignore_empty=True,
        frozen=True,
        extra="forbid",
        validate_default=True,
        arbitrary_types_allowed=False,
    )

    data_dir: Path = Field(
        Path(".clearmark"),
        description="home of the SQLite database, local storage and engines",
        json_schema_extra=_doc("`./.clearmark`"),
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the jobs database",
        json_schema_extra=_doc("SQLite in the data dir", derived=True, **SECRET),
    )
    broker_url: str = Field(
        DEFAULT_BROKER_URL, min_length=1, description="Celery broker", json_schema_extra=SECRET
    )
    result_backend: str = Field(
        "",
        description="Celery result backend (jobs are recorded in the database, so none is needed)",
        json_schema_extra=_doc("none", **SECRET),
    )
    storage_uri: str = Field(
        "",
        description="fsspec URI of the storage root (`s3://bucket/prefix` with the s3 extra)",
        json_schema_extra=_doc("`file://<data dir>/storage`", derived=True, **SECRET),
    )

    # Input limits: a file over these fails its own job, nothing else.
    max_bytes: int = Field(
        50 * 1024 * 1024,
        ge=1,
        description="input limit: an upload or file larger than this many bytes fails its job",
        json_schema_extra=_doc("52428800 (50 MiB)"),
    )
    max_pixels: int = Field(
        40_000_000,
        ge=1,
        description="input limit: an image with more pixels than this fails its job",
        json_schema_extra=_doc("40000000 (40 MP)"),
    )
    min_side: int = Field(16, ge=1, description="input limit: an image narrower or lower than this fails")

    # Pipeline.
    detect_long_side: int = Field(
        640, ge=32, description="the detector sees the image scaled to this long side (px)"
    )
    detect_flip: Flag = Field(
        True,
        description="also detect on the mirrored image and keep the lower score (fewer hits on "
        "product print; one more detector pass)",
    )
    mask_threshold: Share = Field(
        0.5, description="detector probability from which a pixel belongs to the detected mask"
    )
    mask_min_area: int = Field(24, ge=0, description="detected regions smaller than this (px) are dropped")
    mask_dilate_px: int = Field(
        6,
        ge=0,
        description="the detected mask grows by this many pixels before removal; nothing outside it "
        "changes (4 left more of the blur and drop shadows around strokes in place: see Models)",
    )
    mark_threshold: Share = Field(
        0.55,
        description="the remover's full-resolution mark probability from which a pixel inside the "
        "dilated mask counts as watermark (the reported mask, and what `CLEARMARK_MASK_CONFIRM_PX` counts)",
    )
    mask_confirm_px: int = Field(
        64,
        ge=0,
        description="a detected region is changed only if the remover finds at least this many "
        "watermark pixels in it; 0 changes every detected region",
    )
    change_ring_px: int = Field(
        3,
        ge=-1,
        description="pixels change only within this many px of the watermark's own pixels "
        "(feathered); -1 changes the whole dilated mask (the pipeline before code version 5)",
    )
    jpeg_exact: Flag = Field(
        True,
        description="JPEG results keep the upload's DCT coefficients outside the blocks the change "
        "touches (see What stays untouched); 0 re-encodes the whole photo",
    )
    remove_crop_margin: int = Field(
        32, ge=0, description="context (px) around each detected region in the remover's crop"
    )
    remove_max_crop: int = Field(
        1024, ge=16, description="largest crop side (px) the remover is given; larger regions are tiled"
    )
    remove_flip: Flag = Field(
        True,
        description="also run the remover on each crop's mirror image and average the two (a little "
        "better mask and restoration; the remover's time doubles)",
    )
    detector_absent_below: float = Field(
        0.3,
        ge=0.0,
        description="the detector's low limit: every region where its probability reaches this is a "
        "suspect (judged by the suspect prior), and after removal a suspect must score under it "
        "(90th percentile over the region) for the job to succeed (above 1: off)",
    )
    suspect_prior: Flag = Field(
        True,
        description="judge the detector's suspects by the calibrated prior "
        "(models/weights/suspect_prior.json, `clearmark calibrate-suspects`): one below its limit "
        "is a false alarm; 0: by the detector's probability alone",
    )
    text_prior: Flag = Field(
        True,
        description="run the text prior (models/text_prior.py: PP-OCRv4 text lines, overlaid or "
        "printed): overlaid lines are suspects and go to the remover, and a change that reaches "
        "printed product text is put back (about 0.25 s a photo, twice when text was removed)",
    )
    review_confidence_max: Share = Field(
        0.0,
        description="a finished job whose detector confidence is at most this goes to "
        "`needs_review` (0: off)",
        json_schema_extra=_doc("0 (off)"),
    )
    template_min_group: int = Field(
        4,
        ge=4,
        description="uploads sharing a `group` from which a worker learns the group's mark template "
        "(`workers/groups.py`); a refused group is tried again at twice as many",
    )
    template_discover_every: int = Field(
        16,
        ge=0,
        description="a worker looks through a tenant's recent uploads without a `group` for photos "
        "sharing one mark (`workers/discover.py`) each time this many of them could not be cleaned "
        "(0: never; `clearmark catalogue discover` runs it by hand)",
    )
    gate: Flag = Field(
        True,
        description="the do-no-harm gate (`pipeline/gate.py`): every changed region must look like a "
        "lifted overlay, else it is put back exactly (thresholds chosen with "
        "`clearmark eval-real --split train --sweep-gate`)",
    )
    gate_min_confidence: Share = Field(
        0.95,
        description="gate: a changed region is kept only if the detector's mean probability over it "
        "reaches this",
    )
    gate_min_opacity: Share = Field(
        0.2, description="gate: ... and the opacity fitted to its change (median) reaches this"
    )
    gate_min_explained: Share = Field(
        0.8,
        description="gate: ... and one overlay colour with per-pixel opacity explains this share of "
        "its change",
    )
    gate_max_continues: Share = Field(
        0.05,
        description="gate: ... and at most this share of the ring around it is coloured like what "
        "was removed (a strap or edge that carries on)",
    )
    gate_sure_prior: float = Field(
        0.9,
        ge=0.0,
        description="gate: a region the suspect prior scores at least this needs only the blend fit "
        "and continuation checks, not the detector's confidence and the opacity (above 1: off; "
        "`eval-real --split train --family train --seed 1 --sweep-gate`: 0.8 harmed no train "
        "photo, 0.7 did; 0.9 keeps a step back)",
    )
    gate_max_flattened: Share = Field(
        1.0,
        description="gate: ... and it lost at most this share of the surrounding texture (1: not checked)",
        json_schema_extra=_doc("1 (off)"),
    )

    # Engines.
    backend: str = Field(
        "auto", description=f"engine backend: {', '.join(BACKENDS)}", json_schema_extra=_doc("`auto`")
    )
    device: str = Field(
        "auto",
        description="engine device: cpu, cuda, cuda:N, or auto: cuda when a GPU is usable here (torch, "
        "TensorRT with pycuda, or onnxruntime's CUDA provider sees one), else cpu; the engines log "
        "which they chose",
        json_schema_extra=_doc("`auto`"),
    )
    threads: int = Field(0, ge=0, description="CPU threads per engine (0: the library's default)")
    engine_dir: str = Field(
        "",
        description="where exported ONNX models and TensorRT engines are kept",
        json_schema_extra=_doc("`<data dir>/engines`", derived=True),
    )
    trt_workspace_mb: int = Field(2048, ge=1, description="TensorRT builder workspace (MiB)")
    worker_build_budget_s: int = Field(
        0,
        ge=0,
        description="0: a worker only loads its engines, and one whose engine file (ONNX export, "
        "TensorRT engine for this GPU, TensorRT version and weights) is missing refuses to start, "
        "naming `clearmark engines build`; above 0: it builds what is missing before it starts "
        "(one process at a time: the others wait and load), and refuses to start when that takes "
        "longer than this many seconds",
        json_schema_extra=_doc("0 (load only)"),
    )

    # Celery.
    queue_uploads: str = Field(
        "clearmark.uploads", min_length=1, description="queue of storefront uploads (API)"
    )
    queue_bulk: str = Field(
        "clearmark.bulk",
        min_length=1,
        description="queue of catalogue runs (`clearmark bulk`, `submit --bulk`)",
    )
    queue_webhooks: str = Field(
        "clearmark.webhooks", min_length=1, description="queue of webhook deliveries and reaper passes"
    )
    soft_time_limit_s: int = Field(
        240, ge=1, description="a task running longer fails its job (`time_limit`); below the hard limit"
    )
    hard_time_limit_s: int = Field(
        300, ge=1, description="a task running longer is killed; its lease runs out and the reaper decides"
    )
    max_attempts: int = Field(
        3, ge=1, description="a job whose worker keeps dying fails after this many attempts"
    )
    worker_concurrency: int = Field(
        1, ge=1, description="child processes of `clearmark worker` (-c overrides)"
    )
    jobs_in_flight: int = Field(
        1,
        ge=1,
        le=64,
        description="jobs one worker process runs at once (threads sharing one set of engines; above 1 "
        "`clearmark worker` runs Celery's threads pool, one process); with CLEARMARK_BATCH_MAX their "
        "engine calls are batched together",
    )
    batch_max: int = Field(
        1,
        ge=1,
        le=64,
        description="images per engine call when batching across the jobs in flight (the detector's "
        "and the remover's inputs of one shape); 1: off, each job runs its own calls",
        json_schema_extra=_doc("1 (off)"),
    )
    batch_wait_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="the longest a call waits for others to fill its batch (none when every job in "
        "flight is waiting on an engine)",
    )
    visibility_timeout_s: int = Field(
        0,
        ge=0,
        description="seconds before Redis re-delivers an unacknowledged task (its worker died); must "
        "stay above the hard time limit and every retry delay; 0: hard time limit + 3600",
        json_schema_extra=_doc("hard limit + 3600", derived=True),
    )

    # Leases and the reaper (workers.reaper).
    lease_s: float = Field(
        60.0,
        gt=0,
        description="a running attempt's lease, renewed every third of it; past it the reaper queues "
        "the job again",
    )
    reap_interval_s: float = Field(
        30.0,
        gt=0,
        description="seconds between reaper passes (`clearmark worker --reap`, `clearmark reap "
        "--every`, Celery beat)",
    )
    reap_grace_s: float = Field(
        15.0,
        ge=0,
        description="the reaper leaves alone what changed more recently than this (its publish may "
        "be under way)",
    )
    max_resends: int = Field(
        5,
        ge=1,
        description="the reaper sends a queued job's lost task again at most this many times, then "
        "fails it: `engine_unavailable` when a worker that took it could not load its engines, "
        "else `not_claimed`",
    )
    retry_backoff_max_s: float = Field(
        30.0,
        gt=0,
        description="a transient fault (database, broker, storage) retries with doubling delays "
        "capped at this",
    )
    transient_retry_s: float = Field(
        600.0,
        gt=0,
        description="... for this long in all (then the reaper takes over); a finished attempt waits "
        "up to as long for the database to record it",
    )

    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="port of each worker's Prometheus metrics (the API serves /metrics on its own port)",
        json_schema_extra=_doc("0 (off)"),
    )

    # HTTP API (`clearmark api`).
    api_host: str = Field("127.0.0.1", min_length=1, description="where `clearmark api` listens")
    api_port: int = Field(8000, ge=0, le=65535, description="the port `clearmark api` listens on")
    api_header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a request's headers must all arrive within this many seconds (from the "
        "connection's start or the previous response), else `408` and the connection is closed",
    )
    api_body_timeout_s: float = Field(
        120.0,
        gt=0,
        description="a request's body must all arrive within this many seconds after its headers, "
        "else `408` and the connection is closed",
    )
    public_url: str = Field(
        "",
        description="base of links in API answers and webhooks (http:// or https://; unset: each "
        "request's base URL, and webhooks carry relative links)",
        json_schema_extra=_doc("the request's base URL"),
    )
    rate_limit: str = Field(
        "30/second;600/minute",
        min_length=1,
        description="requests to `/v1` per tenant ([`limits`](https://limits.readthedocs.io) "
        "notation, `;` between limits); over it: `429`",
    )
    rate_limit_bad_keys: str = Field(
        "5/second;60/minute",
        min_length=1,
        description="requests to `/v1` (and sign-ins to `/review`) with a missing or wrong key per "
        "client address; over it, "
        "every request from that address is a `429` until the window passes, before any key is "
        "looked up",
    )
    rate_limit_storage: str = Field(
        "memory://",
        min_length=1,
        description="where the rate counters live: `memory://` counts per API process, a `redis://` "
        "URL across all of them",
        json_schema_extra=SECRET,
    )
    upload_concurrency: int = Field(
        8,
        ge=1,
        description="uploads per tenant in progress at once in one API process; over it: `429`",
    )

    # Webhooks.
    webhook_max_attempts: int = Field(6, ge=1, description="webhook delivery attempts")
    webhook_backoff_s: float = Field(
        5.0, gt=0, description="first webhook retry delay, doubling, capped at 60 s"
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="per-request timeout of a webhook POST")
    webhook_allow_hosts: CommaList = Field(
        (),
        description="comma-separated hosts, IPs or CIDR ranges a callback may reach although they "
        "are loopback, private or link-local",
        json_schema_extra=_doc("none"),
    )

    _derived: frozenset[str] = PrivateAttr(default=frozenset())
    _sources: dict[str, Source] = PrivateAttr(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        env_file = settings_file()
        try:
            super().__init__(_env_file=env_file, **values)
        except ValidationError as exc:
            raise SettingsError(_one_line(exc, env_file, set(values))) from None
        file_values = _file_values(env_file)
        sources: dict[str, Source] = {}
        for name in type(self).model_fields:
            if name in values:
                sources[name] = "override"
            elif os.environ.get(variable(name)):
                sources[name] = "environment"
            elif file_values.get(variable(name)):
                sources[name] = "file"
            else:
                sources[name] = "default"
        self._sources = sources

    # -- checks -------------------------------------------------------------------------

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("backend", mode="after")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value.strip().lower() not in BACKENDS:
            raise PydanticCustomError(
                "backend", "expected one of {backends}", {"backends": ", ".join(BACKENDS)}
            )
        return value

    @field_validator("device", mode="after")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", value.strip().lower()):
            raise PydanticCustomError("device", "expected cpu, cuda, cuda:N or auto")
        return value

    @field_validator("database_url", "broker_url", "result_backend", "rate_limit_storage", mode="after")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value):
            raise PydanticCustomError("url", "expected a URL (scheme://...)")
        return value

    @field_validator("public_url", mode="after")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not re.match(r"https?://[^/]", value):
            raise PydanticCustomError("public_url", "expected an http:// or https:// URL")
        return value

    @field_validator("rate_limit", "rate_limit_bad_keys", mode="after")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        try:
            parse_many(value)
        except ValueError:
            raise PydanticCustomError(
                "rate_limit", "expected limits such as 30/second;600/minute (`;` between limits)"
            ) from None
        return value

    @model_validator(mode="after")
    def _derive_and_check(self) -> Settings:
        derived = set()
        if not self.database_url:
            object.__setattr__(self, "database_url", default_database_url(self.data_dir))
            derived.add("database_url")
        if not self.storage_uri:
            object.__setattr__(self, "storage_uri", (self.data_dir / "storage").as_uri())
            derived.add("storage_uri")
        if not self.engine_dir:
            object.__setattr__(self, "engine_dir", str(self.data_dir / "engines"))
            derived.add("engine_dir")
        if not self.visibility_timeout_s:
            object.__setattr__(self, "visibility_timeout_s", self.hard_time_limit_s + 3600)
            derived.add("visibility_timeout_s")
        self._derived = frozenset(derived)
        problems = contradictions(self)
        if problems:
            raise PydanticCustomError("contradiction", "; ".join(problems))
        return self

    # -- use ----------------------------------------------------------------------------

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` (checked like the rest); values worked out from others (the
        database URL from the data dir...) are worked out again unless given."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        for name in self._derived - set(changes):
            values[name] = type(self).model_fields[name].default
        values.update(changes)
        new = type(self)(**values)
        new._sources = {
            name: "override" if name in changes and changes[name] != getattr(self, name) else source
            for name, source in self._sources.items()
        }
        return new

    def source(self, name: str) -> Source:
        """Where the field `name` came from: default, environment, file or override."""
        return self._sources.get(name, "override")

    @property
    def embedded(self) -> bool:
        """No broker set (environment, settings file or override): the embedded mode, in
        which `clearmark clean` runs its jobs in its own process and no broker is used."""
        return self.source("broker_url") == "default"

    def shown(self, name: str) -> str:
        """The field's value as text, passwords masked."""
        return shown_value(name, getattr(self, name))

    def environment(self, *names: str) -> dict[str, str]:
        """The `CLEARMARK_*` variables that give a subprocess these fields' values (not
        masked), e.g. `dict(os.environ, **s.environment("database_url", ...))`."""
        return {variable(name): _spelled(getattr(self, name)) for name in names}


def is_secret(name: str) -> bool:
    extra = Settings.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("secret"))


def _spelled(value: Any) -> str:
    """`value` as an environment variable spells it."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def shown_value(name: str, value: Any) -> str:
    """`value` of the field `name` as an environment variable would spell it, masked if secret."""
    text = f"{value:g}" if isinstance(value, float) else _spelled(value)
    return mask_secret(text) if name in Settings.model_fields and is_secret(name) else text


def contradictions(s: Settings) -> list[str]:
    """Settings that are each valid but cannot work together, one sentence each."""

    def v(name: str) -> str:
        return f"{variable(name)}={shown_value(name, getattr(s, name))}"

    problems = []
    if s.soft_time_limit_s >= s.hard_time_limit_s:
        problems.append(
            f"{v('soft_time_limit_s')} must be below {v('hard_time_limit_s')} "
            "(the soft limit fails the job cleanly before the hard one kills the task)"
        )
    # Redis hands an unacknowledged task to another worker after the visibility timeout:
    # a task still running, or still waiting out a retry countdown, would run twice.
    if s.visibility_timeout_s <= s.hard_time_limit_s:
        problems.append(
            f"{v('visibility_timeout_s')} must be above {v('hard_time_limit_s')} "
            "(else Redis hands a task that is still running to another worker)"
        )
    if s.visibility_timeout_s <= s.retry_backoff_max_s:
        problems.append(
            f"{v('visibility_timeout_s')} must be above {v('retry_backoff_max_s')} "
            "(a task waiting out its retry delay would be delivered twice)"
        )
    webhook_delay = min(WEBHOOK_BACKOFF_CAP_S, s.webhook_backoff_s * 2 ** max(0, s.webhook_max_attempts - 2))
    if s.visibility_timeout_s <= webhook_delay:
        problems.append(
            f"{v('visibility_timeout_s')} must be above the longest webhook retry delay, "
            f"{webhook_delay:g} s ({v('webhook_backoff_s')} doubled up to "
            f"{v('webhook_max_attempts')}, at most {WEBHOOK_BACKOFF_CAP_S:g} s)"
        )
    if s.retry_backoff_max_s > s.transient_retry_s:
        problems.append(f"{v('retry_backoff_max_s')} must be at most {v('transient_retry_s')}")
    if s.min_side * s.min_side > s.max_pixels:
        problems.append(
            f"{v('min_side')} and {v('max_pixels')} refuse every image "
            "(the smallest accepted image has more pixels than the largest)"
        )
    if 2 * s.remove_crop_margin >= s.remove_max_crop:
        problems.append(
            f"{v('remove_crop_margin')} must be under half of {v('remove_max_crop')} "
            "(a crop holds the margin on both sides of the region)"
        )
    return problems


# -- sources and errors -------------------------------------------------------------------


def settings_file() -> Path | None:
    """The settings file named by CLEARMARK_ENV_FILE, or None (no file is read)."""
    name = os.environ.get(ENV_FILE_VARIABLE, "").strip()
    if not name:
        return None
    path = Path(name).expanduser()
    if not path.is_file():
        raise SettingsError(f"{ENV_FILE_VARIABLE}={name}: no such file")
    return path


def _file_values(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    return {key.upper(): value for key, value in dotenv_values(path).items() if value}


_MESSAGES = {
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be above {gt}",
    "less_than_equal": "must be at most {le}",
    "less_than": "must be below {lt}",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "string_too_short": "must not be empty",
    "extra_forbidden": "not a clearmark setting",
}


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _message(error: ErrorDetails) -> str:
    template = _MESSAGES.get(error["type"])
    if template is None:
        return error["msg"]
    ctx = {key: _number(value) for key, value in error.get("ctx", {}).items()}
    return template.format(**ctx)


def _one_line(exc: ValidationError, env_file: Path | None, given: set[str]) -> str:
    """The validation errors as one line, each naming its variable (secrets masked)."""
    file_values = _file_values(env_file)
    parts = []
    for error in exc.errors(include_url=False):
        if not error["loc"]:  # the cross-field checks name their own variables
            parts.append(_message(error))
            continue
        name = str(error["loc"][0])
        name = name[len(PREFIX) :] if name.upper().startswith(PREFIX) else name
        var = variable(name)
        value = error["input"]
        text = (
            shown_value(name, value) if isinstance(value, str | int | float | bool | tuple) else repr(value)
        )
        where = ""
        if name not in given and not os.environ.get(var) and var in file_values:
            where = f" (in {env_file})"
        parts.append(f"{var}={text}{where}: {_message(error)}")
    return "; ".join(parts)


# -- the README table -----------------------------------------------------------------------


def _default_text(name: str) -> str:
    field = Settings.model_fields[name]
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("default_doc"), str):
        return str(extra["default_doc"])
    default = field.default
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, str):
        return f"`{default}`" if default else "none"
    return shown_value(name, default)


def settings_table_markdown() -> str:
    """The README's settings table: every variable, its default and what it does."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{variable(name)}` | {_default_text(name)} | {meaning} |")
    return "\n".join(lines) + "\n"


# -- the process's settings -------------------------------------------------------------------

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
