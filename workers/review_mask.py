"""A reviewer's own mask: "Remove with this mask" on the review page.

`ask_removal` checks the mask (a PNG of the upright photo's size), stores it, and queues
the job again as an attempt of its own with a `mask_edit` event (edit number, the mask's
URI, who, and the result and mask it replaces, which stay in storage). The worker that
claims the job finds that event (`jobs.queued_mask`) and runs
`pipeline.process.remove_with_mask` on it instead of detecting; the job comes back to
`needs_review` with the new result for the reviewer to decide on.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
from PIL import Image
from sqlalchemy import func, select

from clearmark.errors import ServiceUnavailable
from clearmark.settings import Settings, get_settings
from clearmark.workers import broker
from clearmark.workers.db import JobEvent, JobMetrics, JobStatus, session_scope
from clearmark.workers.jobs import MASK_EVENT, set_status
from clearmark.workers.review import locked_in_review
from clearmark.workers.storage import get_storage

log = logging.getLogger(__name__)


class BadMask(ValueError):
    """The mask cannot be used: `code` says why (not_png, mask_size, empty_mask)."""

    def __init__(self, message: str, *, code: str):
        super().__init__(message)
        self.code = code


def read_mask(data: bytes, width: int, height: int) -> np.ndarray:
    """The mask in `data` as bool H x W: a PNG of `width` x `height` (any mode, read as
    8-bit grey; >= 128 is inside) with at least one pixel inside. The size is checked
    before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - whatever Pillow raised, it is not a mask we can read
        raise BadMask("the mask is not an image", code="not_png") from None
    if im.format != "PNG":
        raise BadMask(f"the mask must be a PNG, not {im.format}", code="not_png")
    if im.size != (width, height):
        raise BadMask(
            f"the mask is {im.size[0]}x{im.size[1]}, the photo {width}x{height}: "
            "paint over the photo as shown",
            code="mask_size",
        )
    try:
        inside = np.asarray(im.convert("L")) >= 128
    except Exception:  # noqa: BLE001 - a truncated or corrupt PNG
        raise BadMask("the mask's PNG cannot be decoded", code="not_png") from None
    if not inside.any():
        raise BadMask("the mask is empty: paint over the mark first", code="empty_mask")
    return inside


def _png(inside: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.where(inside, 255, 0).astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def ask_removal(
    job_id: str,
    data: bytes,
    reviewer: str,
    *,
    tenant_id: str | None = None,
    via: str = "page",
    settings: Settings | None = None,
) -> int:
    """Queue the job for a removal with the mask in `data`; returns the edit number.
    LookupError for an unknown job (or another tenant's), ValueError for one not in
    needs_review, BadMask for a mask it cannot use, ServiceUnavailable when the broker
    cannot be reached: then nothing changed and the job stays in review (a job queued
    with no broker would leave the reviewer's hands until a worker runs). The attempt gets
    a fresh attempt budget, as a retry does."""
    s = settings or get_settings()
    broker.check_reachable(s)
    with session_scope(s.database_url) as session:
        job = locked_in_review(session, job_id, tenant_id)
        metrics = session.get(JobMetrics, job.id)
        if metrics is None:
            raise ValueError(f"job {job_id} has no size recorded")
        inside = read_mask(data, int(metrics.width), int(metrics.height))
        edit = 1 + (
            session.scalar(select(func.count()).where(JobEvent.job_id == job.id, JobEvent.kind == MASK_EVENT))
            or 0
        )
        uri = get_storage().put(f"masks/{job.id}-edit{edit}-given.png", _png(inside))
        set_status(
            session,
            job,
            JobStatus.queued,
            kind=MASK_EVENT,
            edit=edit,
            mask_uri=uri,
            pixels=int(inside.sum()),
            reviewer=reviewer or None,
            via=via,
            replaces={"result_uri": job.result_uri, "mask_uri": job.mask_uri},
        )
        job.attempts = 0
        job.finished_at = job.lease_expires_at = None
    try:
        broker.enqueue(job_id, s.queue_uploads)
    except ServiceUnavailable as exc:  # lost since the check: queued, the reaper sends it
        log.warning("job %s: mask %d recorded but not sent yet: %s", job_id, edit, exc)
    return edit
