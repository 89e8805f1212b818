"""One attempt at a job: claim it, run the pipeline on its image, store the outputs and
record the outcome (`process_job`), used alike by the Celery task and the in-process
`clearmark clean`. The state changes themselves are `jobs`'s; this module is the part that
runs the pipeline (and so loads torch): the API never imports it.
"""

from __future__ import annotations

import io
import logging
import time

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from clearmark.errors import BadInput, ClearmarkError, StorageUnavailable, TransientError
from clearmark.pipeline.process import Engines, process_image, remove_with_mask
from clearmark.pipeline.stages import OverTime
from clearmark.settings import Settings, get_settings
from clearmark.workers import discover, groups, webhooks
from clearmark.workers.db import WITH_RESULT, JobStatus
from clearmark.workers.jobs import (
    Claim,
    TooManyAttempts,
    claim_job,
    fail_job,
    finish_job,
    release_for_retry,
)
from clearmark.workers.leases import Heartbeat
from clearmark.workers.storage import delete_uri, get_storage, job_source_uri, read_uri, write_uri
from clearmark.workers.templates import tenant_templates
from clearmark.workers.transient import retry_database

log = logging.getLogger(__name__)


def output_uris(claim: Claim, extension: str) -> tuple[str, str]:
    """Where the result and mask go: preset on the job (clean), else keys of this attempt
    in storage (`results/<job>-<attempt><ext>`), never shared with another attempt. An
    attempt with a reviewer's mask always writes keys of its own
    (`results/<job>-edit<n>-<attempt><ext>`): the results before it stay."""
    storage = get_storage()
    if claim.given_mask is not None:
        key = f"{claim.job_id}-edit{claim.given_mask[0]}-{claim.attempt}"
        return storage.uri(f"results/{key}{extension}"), storage.uri(f"masks/{key}.png")
    key = f"{claim.job_id}-{claim.attempt}"
    result = claim.result_uri or storage.uri(f"results/{key}{extension}")
    mask = claim.mask_uri or storage.uri(f"masks/{key}.png")
    return result, mask


def _given_mask(uri: str) -> np.ndarray:
    """The reviewer's mask as stored (workers.review_mask): grey PNG, >= 128 inside."""
    return np.asarray(Image.open(io.BytesIO(read_uri(uri))).convert("L")) >= 128


def _given_mask_record(claim: Claim) -> dict[str, object] | None:
    if claim.given_mask is None:
        return None
    edit, uri = claim.given_mask
    return {"edit": edit, "uri": uri, "gate": "not applied: a reviewer's mask is the reviewer's to judge"}


def _discard_outputs(claim: Claim, uris: tuple[str, str]) -> None:
    """A losing attempt removes the files it wrote under its own keys (best effort)."""
    for uri, preset in zip(uris, (claim.result_uri, claim.mask_uri)):
        if uri != preset:
            delete_uri(uri)


def process_job(job_id: str, engines: Engines, settings: Settings | None = None) -> str | None:
    """One attempt at a job. Returns the final status, or None when nothing was done.
    Bad input fails the job; TransientError propagates (after releasing the job; a storage
    outage gives the attempt back) so the caller can retry; any other exception fails the
    job with `internal_error`. A job this attempt finished gets its webhook enqueued (when
    it has a callback URL)."""
    settings = settings or get_settings()
    status, claim = _attempt(job_id, engines, settings)
    if status is not None:
        webhooks.notify_finished(job_id, settings)
    if claim is not None and claim.catalogue_group and status in _CLEANED:
        _learn_group(claim, settings)
    elif claim is not None and not claim.catalogue_group and status in groups.REQUEUED:
        _discover(claim, settings)
    return status


_CLEANED = {s.value for s in WITH_RESULT}


def _learn_group(claim: Claim, settings: Settings) -> None:
    """The job's group may now have enough uploads for a template (workers.groups); the job
    is finished whatever happens here."""
    assert claim.catalogue_group is not None
    try:
        groups.learn(settings, claim.tenant_id, claim.catalogue_group)
    except Exception:  # noqa: BLE001 - learning is extra: the group's next job tries again
        log.exception("job %s: learning group %s failed", claim.job_id, claim.catalogue_group)


def _discover(claim: Claim, settings: Settings) -> None:
    """Every CLEARMARK_TEMPLATE_DISCOVER_EVERY-th upload without a group that was not
    cleaned, look for a mark the tenant's recent ones share (workers.discover); extra work,
    as `_learn_group`."""
    try:
        if discover.due(settings, claim.tenant_id):
            discover.discover_for(settings, claim.tenant_id)
    except Exception:  # noqa: BLE001 - the job is finished; the next due upload tries again
        log.exception("job %s: looking for a shared mark failed", claim.job_id)


def _attempt(job_id: str, engines: Engines, settings: Settings) -> tuple[str | None, Claim | None]:
    try:
        claim = claim_job(settings.database_url, job_id, settings.max_attempts, settings.lease_s)
    except TooManyAttempts as exc:
        log.warning("%s: failed as too_many_attempts", exc)
        return JobStatus.failed.value, None  # finished now: its webhook goes out like any other
    if claim is None:
        return None, None
    # The lease stops being renewed at the hard time limit: an attempt hung where no pool
    # can stop it (Celery's threads pool) lets its job go to the reaper, which sends it again.
    with Heartbeat(settings.database_url, claim, settings.lease_s, max_s=settings.hard_time_limit_s):
        return _run_claimed(claim, engines, settings), claim


def _run_claimed(claim: Claim, engines: Engines, settings: Settings) -> str | None:
    """Run the pipeline for a claimed job and record the outcome. The records wait out a
    database outage (retry_database): the work is done, only its bookkeeping is left."""
    db_url, what = settings.database_url, f"job {claim.job_id}"

    def failed(code: str, message: str) -> str | None:
        done = retry_database(lambda: fail_job(db_url, claim, code, message), settings, what)
        return JobStatus.failed.value if done else None

    deadline = time.monotonic() + settings.soft_time_limit_s  # kept by the threads pool too
    try:
        data = read_uri(job_source_uri(claim.source_uri, claim.tenant_id), max_bytes=settings.max_bytes)
        if claim.given_mask is None:
            templates = retry_database(lambda: tenant_templates(settings, claim.tenant_id), settings, what)
            result = process_image(data, engines, settings, templates, deadline)
        else:
            mask = _given_mask(claim.given_mask[1])
            result = remove_with_mask(data, mask, engines, settings, deadline)
        uris = output_uris(claim, result.extension)
        write_uri(uris[0], result.image_bytes)
        write_uri(uris[1], result.mask_png)
    except BadInput as exc:
        log.info("job %s failed: %s (%s)", claim.job_id, exc.message, exc.code)
        return failed(exc.code, exc.message)
    except TransientError as exc:
        reason, spent = str(exc), not isinstance(exc, StorageUnavailable)
        retry_database(lambda: release_for_retry(db_url, claim, reason, spent), settings, what)
        raise
    except ClearmarkError as exc:
        return failed(exc.code, exc.message)
    except (SoftTimeLimitExceeded, OverTime):
        return failed("time_limit", f"took longer than the soft time limit ({settings.soft_time_limit_s} s)")
    except Exception as exc:  # a bug or an unexpected library error: fail this job only
        log.exception("job %s: unexpected error", claim.job_id)
        return failed("internal_error", f"{type(exc).__name__}: {exc}")
    status = JobStatus(result.status)
    won = retry_database(
        lambda: finish_job(
            db_url,
            claim,
            status,
            result_uri=uris[0],
            mask_uri=uris[1],
            metrics=result.metrics,
            pipeline_version=engines.version,
            review_reason=result.review_reason,
            gate=result.details.get("gate"),
            encoding=result.encoding,
            suspects=result.details.get("suspects"),
            given_mask=_given_mask_record(claim),
        ),
        settings,
        what,
    )
    if won:
        log.info("job %s %s in %.0f ms", claim.job_id, status.value, result.metrics["ms_total"])
        return status.value
    _discard_outputs(claim, uris)
    return None
