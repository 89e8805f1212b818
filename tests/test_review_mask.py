"""Fixing the mask: `pipeline.process.remove_with_mask` (only the given pixels change, encoded
as process_image encodes), the review page's mask upload (CSRF, tenancy, bad masks) and a
removal with a reviewer's mask through a real worker, the job back in needs_review with
every attempt kept."""

from __future__ import annotations

import io

import numpy as np
import pytest
import redis
from PIL import Image
from sqlalchemy import select

from clearmark.errors import BadInput
from clearmark.pipeline.process import remove_with_mask
from clearmark.workers.celery_app import app as celery_app
from clearmark.workers.celery_app import configure
from clearmark.workers.db import Job, JobEvent, JobMetrics, session_scope
from clearmark.workers.jobs import MASK_EVENT
from clearmark.workers.review import Decision, decide
from clearmark.workers.review_auth import CSRF_HEADER
from clearmark.workers.review_mask import ask_removal
from clearmark.workers.storage import get_storage, read_uri
from clearmark.workers.tenants import create_tenant
from tests.badfiles import encode, photo
from tests.services import product_photo, wait_for
from tests.test_pipeline import assert_jpeg_exact, cfg, fake_engines, pixels
from tests.test_review_page import add_job, last_event, reviewer_key, shops, signed_in  # noqa: F401

BOX = (30, 20, 70, 45)  # x0, y0, x1, y1 of the painted rectangle


def painted(w: int, h: int, box=BOX) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def mask_png(mask: np.ndarray) -> bytes:
    return encode(Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L"), "PNG")


def rgb(data: bytes) -> np.ndarray:
    return np.asarray(pixels(data).convert("RGB"))


# -- the pipeline -------------------------------------------------------------------------


def test_remove_with_mask_changes_only_the_given_pixels():
    src = photo(128, 96, seed=3)
    inside = painted(128, 96)
    r = remove_with_mask(encode(Image.fromarray(src), "PNG"), inside, fake_engines(), cfg())
    out = rgb(r.image_bytes)
    assert r.status == "needs_review" and r.extension == ".png"
    assert np.array_equal(out[~inside], src[~inside])  # exactly the upload outside
    assert (out[inside] == 128).all()  # the (grey) remover's output inside
    assert np.array_equal(np.asarray(pixels(r.mask_png)), np.where(inside, 255, 0))
    assert "do-no-harm gate does not judge" in r.review_reason and r.details["gate"] == []
    [region] = r.details["suspects"]
    assert region["detector"] == "reviewer" and region["box"] == list(BOX)
    assert r.metrics["mask_area_fraction"] == pytest.approx(inside.mean())


def test_remove_with_mask_keeps_a_jpegs_coefficients_outside_the_change():
    src = photo(160, 128, seed=4)
    data = encode(Image.fromarray(src), "JPEG", quality=90)
    r = remove_with_mask(data, painted(160, 128), fake_engines(), cfg())
    assert r.extension == ".jpg"
    assert_jpeg_exact(r, rgb(r.image_bytes), rgb(data))


def test_a_mask_of_another_size_is_bad_input():
    data = encode(Image.fromarray(photo(64, 48)), "PNG")
    with pytest.raises(BadInput) as caught:
        remove_with_mask(data, np.ones((64, 48), bool), fake_engines(), cfg())
    assert caught.value.code == "mask_size" and "48x64" in caught.value.message


# -- the page's upload ----------------------------------------------------------------------


def test_the_mask_upload_needs_csrf_its_own_tenant_and_a_usable_png(settings, shops):  # noqa: F811
    client, csrf = signed_in(reviewer_key("shop-a", "ana"))
    mine, theirs = shops["a"][1][0], shops["b"][1][0]
    good = mask_png(painted(120, 90))

    def post(job_id, body, headers=None):
        headers = {CSRF_HEADER: csrf, "Content-Type": "image/png"} if headers is None else headers
        return client.post(f"/review/api/jobs/{job_id}/mask", content=body, headers=headers)

    assert post(mine, good, {"Content-Type": "image/png"}).json()["error"]["code"] == "csrf_refused"
    assert post(theirs, good).status_code == 404
    for body, code in (
        (b"not an image", "not_png"),
        (encode(Image.new("L", (120, 90), 255), "JPEG"), "not_png"),
        (mask_png(painted(90, 120)), "mask_size"),
        (mask_png(np.zeros((90, 120), bool)), "empty_mask"),
    ):
        r = post(mine, body)
        assert (r.status_code, r.json()["error"]["code"]) == (422, code), r.text
    with session_scope(settings.database_url) as session:
        assert {session.get(Job, j).status for j in (mine, theirs)} == {"needs_review"}

    r = post(mine, good)
    assert r.status_code == 202 and r.json() == {"id": mine, "status": "queued", "edit": 1}
    event = last_event(settings, mine)
    assert (event.kind, event.from_status, event.to_status) == (MASK_EVENT, "needs_review", "queued")
    assert {k: event.detail[k] for k in ("edit", "reviewer", "via", "pixels")} == {
        "edit": 1,
        "reviewer": "ana",
        "via": "page",
        "pixels": 40 * 25,
    }
    stored = np.asarray(Image.open(io.BytesIO(read_uri(event.detail["mask_uri"]))))
    assert np.array_equal(stored > 0, painted(120, 90))
    with session_scope(settings.database_url) as session:
        job = session.get(Job, mine)
        assert (job.status, job.attempts) == ("queued", 0)
        # The result it replaces stays where it was, named in the event.
        assert event.detail["replaces"] == {"result_uri": job.result_uri, "mask_uri": job.mask_uri}
    assert redis.Redis.from_url(settings.broker_url).llen(settings.queue_uploads) == 1
    # Queued now: no second mask, no decision, until the attempt is back in review.
    assert post(mine, good).json()["error"]["code"] == "not_in_review"
    page = client.get(f"/review/api/jobs/{mine}").json()
    assert page["events"][-1] | {"at": None} == {
        "kind": MASK_EVENT,
        "from": "needs_review",
        "to": "queued",
        "at": None,
        "reviewer": "ana",
        "via": "page",
        "edit": 1,
        "pixels": 1000,
    }
    # Without a broker nothing changes: a queued job would leave the reviewer's hands.
    configure(celery_app, settings.replace(broker_url="redis://127.0.0.1:1/0"))
    try:
        down = post(shops["a"][1][1], good)
    finally:
        configure(celery_app, settings)
    assert (down.status_code, down.json()["error"]["code"]) == (503, "broker_unavailable")
    assert last_event(settings, shops["a"][1][1]).kind != MASK_EVENT
    client.post("/review/api/sign-out", headers={CSRF_HEADER: csrf})
    assert post(shops["a"][1][1], good).status_code == 401


# -- through a real worker ------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_a_removal_with_the_reviewers_mask_runs_on_a_worker(service, workers):
    upload = product_photo(5, (160, 120))
    with session_scope(service.database_url) as session:
        tenant, _ = create_tenant(session, "shop")
        job_id = add_job(session, tenant, 1)
        job = session.get(Job, job_id)
        job.source_uri = get_storage().put(f"sources/{tenant.id}/p.png", encode(upload, "PNG"))
        metrics = session.get(JobMetrics, job_id)
        metrics.width, metrics.height = upload.size
        first_result = job.result_uri
    inside = painted(160, 120, (40, 50, 120, 70))
    assert ask_removal(job_id, mask_png(inside), "ana", settings=service) == 1
    workers(service)
    done = wait_for(
        lambda: (j := session_get(service, job_id)).status != "queued" and j.status != "running" and j,
        300,
        "the attempt with the reviewer's mask",
    )
    assert done.status == "needs_review", done.error_message
    assert done.result_uri.endswith(f"/results/{job_id}-edit1-1.png")
    out, src = rgb(read_uri(done.result_uri)), np.asarray(upload)
    assert np.array_equal(out[~inside], src[~inside])  # only inside the mask
    assert not np.array_equal(out[inside], src[inside])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(read_uri(done.mask_uri)))) > 0, inside)
    finish = last_event(service, job_id)
    assert (
        finish.detail["given_mask"]["edit"] == 1
        and finish.detail["given_mask"]["result_uri"] == done.result_uri
    )
    assert "not applied" in finish.detail["given_mask"]["gate"]
    assert "reviewer's mask" in done.review_reason
    assert read_uri(first_result)  # the pipeline's own result is kept
    assert decide(job_id, Decision.accept, "ana", settings=service) == "succeeded"


def session_get(settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as session:
        return session.get(Job, job_id)


def test_mask_events_only_count_since_the_last_finish(settings, shops):  # noqa: F811
    """A job queued again after its mask attempt finished (an operator's retry) detects as usual."""
    from clearmark.workers.jobs import claim_job, queued_mask, requeue_job

    job_id = shops["a"][1][0]
    ask_removal(job_id, mask_png(painted(120, 90)), "ana", settings=settings)
    claim = claim_job(settings.database_url, job_id, max_attempts=3)
    assert claim.given_mask is not None and claim.given_mask[0] == 1
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        session.add(JobEvent(job_id=job_id, kind="status", from_status="running", to_status="failed"))
        job.status = "failed"
        session.flush()
        requeue_job(session, job, "retry")
        assert queued_mask(session, job) is None
        assert session.scalars(select(JobEvent.kind).where(JobEvent.job_id == job_id)).all()[-1] == "retry"
