"""The review page's routes and the HTTP API's review decision, through the real app:
sign-in and sign-out, CSRF, tenant isolation on every route, the queue's filters, one
job's regions and history, and decisions (SQLite and PostgreSQL, the test Redis)."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime

import numpy as np
import pytest
import redis
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from clearmark.pipeline.process import DOUBTED, TAKEN
from clearmark.workers.api import app
from clearmark.workers.celery_app import app as celery_app
from clearmark.workers.celery_app import configure
from clearmark.workers.cli import cli
from clearmark.workers.db import Batch, Job, JobEvent, JobMetrics, JobStatus, Tenant, session_scope
from clearmark.workers.jobs import claim_job, create_job, ensure_tenant, finish_job
from clearmark.workers.review_auth import CSRF_HEADER, SESSION_COOKIE
from clearmark.workers.review_queue import regions
from clearmark.workers.storage import get_storage
from clearmark.workers.tenants import create_tenant
from tests.services import product_photo

SUSPECTS = [
    {"detector": "detector", "box": [10, 20, 60, 40], "score": 0.91, "after": 0.42, "fate": "removed"},
    {"detector": "text", "box": [70, 5, 110, 15], "score": 0.5, "after": None, "fate": "not removed"},
]
GATE = [{"box": [10, 20, 60, 40], "passed": False, "reason": "the change continues the product's edge"}]


def png(seed: int, size=(120, 90), mode="RGB") -> bytes:
    buf = io.BytesIO()
    product_photo(seed, size).convert(mode).save(buf, "PNG")
    return buf.getvalue()


def add_job(
    session,
    tenant: Tenant,
    n: int,
    status: str = "needs_review",
    reason: str = "the detector still sees a mark",
    confidence: float = 0.5,
    batch: Batch | None = None,
    version: str = "pipeline-7+det",
    finished: datetime | None = None,
) -> str:
    storage = get_storage()
    source = storage.put(f"sources/{tenant.id}/{n}.png", png(n))
    job, _ = create_job(session, tenant, source, batch=batch, source_name=f"photo-{n}.png")
    job.status = status
    job.result_uri = storage.put(f"results/{job.id}-1.png", png(n + 100))
    mask = np.zeros((90, 120), np.uint8)
    mask[20:40, 10:60] = 200
    buf = io.BytesIO()
    Image.fromarray(mask, "L").save(buf, "PNG")
    job.mask_uri = storage.put(f"masks/{job.id}-1.png", buf.getvalue())
    job.review_reason = reason if status == "needs_review" else None
    job.pipeline_version = version
    job.finished_at = finished or datetime(2026, 5, 1, 12, n % 60, tzinfo=UTC)
    job.created_at = job.finished_at
    session.flush()
    metrics = {
        "width": 120,
        "height": 90,
        "mask_area_fraction": 0.1,
        "detector_confidence": confidence,
        "residual_score": 0.4,
        **{f"ms_{s}": 1.0 for s in ("decode", "detect", "remove", "encode", "gate", "residual", "total")},
    }
    session.add(JobMetrics(job_id=job.id, **metrics))
    session.add(
        JobEvent(
            job_id=job.id,
            kind="status",
            from_status="running",
            to_status=status,
            detail={"attempt": 1, "suspects": SUSPECTS, "gate": GATE},
        )
    )
    return job.id


@pytest.fixture
def shops(settings):
    """Tenants a (with a webhook) and b, each with needs_review jobs, and their API keys;
    Celery sends to the test's own queues on the test Redis."""
    configure(celery_app, settings)
    with session_scope(settings.database_url) as session:
        a, key_a = create_tenant(session, "shop-a", webhook_url="https://shop-a.example/hooks")
        b, key_b = create_tenant(session, "shop-b")
        ids_a = [add_job(session, a, n) for n in range(3)]
        ids_b = [add_job(session, b, 10 + n) for n in range(2)]
    return {"a": (key_a, ids_a), "b": (key_b, ids_b)}


def reviewer_key(tenant: str, name: str) -> str:
    result = CliRunner().invoke(cli, ["tenants", "reviewer-key", tenant, "--name", name])
    assert result.exit_code == 0, result.output
    return re.search(r"reviewer key\s+(cmr_\S+)", result.output).group(1)


def signed_in(key: str) -> tuple[TestClient, str]:
    """A client signed in with `key`, and its session's CSRF token."""
    client = TestClient(app)
    pre = client.get("/review/api/session").json()
    r = client.post("/review/api/sign-in", json={"key": key}, headers={CSRF_HEADER: pre["csrf"]})
    assert r.status_code == 200, r.text
    session = client.get("/review/api/session").json()
    assert session["signed_in"]
    return client, session["csrf"]


def last_event(settings, job_id: str) -> JobEvent:
    with session_scope(settings.database_url) as session:
        return session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id.desc())
        ).first()


def test_the_page_and_its_assets_are_the_apps_own_under_a_strict_policy(settings):
    client = TestClient(app)
    page = client.get("/review")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "http" not in policy
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
    # No inline script or style the policy would block, and nothing from another host.
    assert re.findall(r"<script(?![^>]*\bsrc=\"/review/static/)", page.text) == []
    assert " style=" not in page.text and " on" + "click=" not in page.text
    assert re.findall(r"(?:src|href)=\"(?!/review/static/)[^\"#]", page.text) == []
    for asset, kind in (("review.js", "text/javascript"), ("review.css", "text/css")):
        r = client.get(f"/review/static/{asset}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert "http://" not in r.text and "https://" not in r.text
    assert client.get("/review/static/../api.py").status_code == 404
    assert client.get("/review/static/review.html").status_code == 404


def test_sign_in_with_a_reviewer_key_then_sign_out(settings, shops):
    key = reviewer_key("shop-a", "ana")
    client = TestClient(app)
    assert client.get("/review/api/queue").status_code == 401
    pre = client.get("/review/api/session").json()
    assert pre["signed_in"] is False and pre["csrf"]
    # Without the sign-in's CSRF token (another site's form), or with a wrong key: refused.
    refused = client.post("/review/api/sign-in", json={"key": key})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_refused"
    wrong = client.post("/review/api/sign-in", json={"key": "cmr_nope"}, headers={CSRF_HEADER: pre["csrf"]})
    assert wrong.status_code == 401
    r = client.post("/review/api/sign-in", json={"key": key}, headers={CSRF_HEADER: pre["csrf"]})
    assert r.status_code == 200 and r.json() == {"signed_in": True, "tenant": "shop-a", "reviewer": "ana"}
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith(SESSION_COOKIE))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/review" in cookie
    token = client.cookies.get(SESSION_COOKIE)
    assert token and token not in r.text  # the token lives in the cookie only

    session = client.get("/review/api/session").json()
    assert (session["reviewer"], session["tenant"]) == ("ana", "shop-a") and session["csrf"] != pre["csrf"]
    assert client.get("/review/api/queue").json()["total"] == 3
    # A reviewer key opens the page only, not the API.
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 401

    assert client.post("/review/api/sign-out").status_code == 403  # no CSRF token
    out = client.post("/review/api/sign-out", headers={CSRF_HEADER: session["csrf"]})
    assert out.status_code == 200
    # The old cookie is dead on the server too, not only dropped by this browser.
    stale = TestClient(app, cookies={SESSION_COOKIE: token})
    assert stale.get("/review/api/queue").status_code == 401
    assert (
        stale.post(
            f"/review/api/jobs/{shops['a'][1][0]}/decision",
            json={"decision": "accept"},
            headers={CSRF_HEADER: session["csrf"]},
        ).json()["error"]["code"]
        == "signed_out"
    )


def test_the_tenants_api_key_signs_in_too_and_a_missing_tenant_is_an_error(settings, shops):
    client, _ = signed_in(shops["a"][0])
    assert client.get("/review/api/session").json()["reviewer"] == "api key"
    result = CliRunner().invoke(cli, ["tenants", "reviewer-key", "no-such-shop", "--name", "x"])
    assert result.exit_code != 0 and "no tenant 'no-such-shop'" in result.output


def test_a_reviewer_never_reaches_another_tenants_jobs(settings, shops):
    client, csrf = signed_in(reviewer_key("shop-a", "ana"))
    ids_a, ids_b = shops["a"][1], shops["b"][1]
    listed = client.get("/review/api/queue").json()
    assert {j["id"] for j in listed["jobs"]} == set(ids_a)
    assert listed["counts"]["needs_review"] == 3
    for status in ("succeeded", "no_watermark"):
        assert client.get("/review/api/queue", params={"status": status}).json()["jobs"] == []
    other = ids_b[0]
    assert client.get(f"/review/api/jobs/{other}").status_code == 404
    for which in ("source", "result", "mask"):
        assert client.get(f"/review/api/jobs/{other}/images/{which}").status_code == 404
        assert client.get(f"/review/api/jobs/{ids_a[0]}/images/{which}").status_code == 200
    decision = client.post(
        f"/review/api/jobs/{other}/decision", json={"decision": "accept"}, headers={CSRF_HEADER: csrf}
    )
    assert decision.status_code == 404
    several = client.post(
        "/review/api/decisions",
        json={"job_ids": [other], "decision": "reject"},
        headers={CSRF_HEADER: csrf},
    ).json()
    assert several["results"] == [{"id": other, "error": {"code": "not_found", "message": f"no job {other}"}}]
    # Through the HTTP API too.
    api = TestClient(app).post(
        f"/v1/jobs/{other}/review",
        json={"decision": "accept"},
        headers={"Authorization": f"Bearer {shops['a'][0]}"},
    )
    assert api.status_code == 404
    with session_scope(settings.database_url) as session:
        assert {session.get(Job, i).status for i in ids_b} == {"needs_review"}


def test_images_are_served_inline_at_full_resolution(settings, shops):
    client, _ = signed_in(shops["a"][0])
    job_id = shops["a"][1][0]
    source = client.get(f"/review/api/jobs/{job_id}/images/source")
    assert source.headers["content-type"] == "image/png" and source.content == png(0)
    result = client.get(f"/review/api/jobs/{job_id}/images/result")
    assert result.content == png(100) and "attachment" not in result.headers.get("content-disposition", "")
    mask = Image.open(io.BytesIO(client.get(f"/review/api/jobs/{job_id}/images/mask").content))
    assert mask.size == (120, 90) and np.asarray(mask)[30, 30] == 200
    assert client.get(f"/review/api/jobs/{job_id}/images/other").status_code == 404
    with session_scope(settings.database_url) as session:  # a TIFF upload is shown as PNG
        job = session.get(Job, job_id)
        buf = io.BytesIO()
        product_photo(3, (64, 48)).save(buf, "TIFF")
        job.source_uri = get_storage().put(f"sources/{job.tenant_id}/t.tiff", buf.getvalue())
    shown = client.get(f"/review/api/jobs/{job_id}/images/source")
    assert shown.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(shown.content)).size == (64, 48)


def test_one_job_shows_each_regions_reason_where_it_is(settings, shops):
    client, _ = signed_in(shops["a"][0])
    job = client.get(f"/review/api/jobs/{shops['a'][1][1]}").json()
    assert job["name"] == "photo-1.png" and job["review_reason"] == "the detector still sees a mark"
    assert job["has_result"] and job["has_mask"] and (job["width"], job["height"]) == (120, 90)
    assert job["regions"] == [
        {
            "kind": "removed",
            "box": [10, 20, 60, 40],
            "label": "detector 0.91 -> 0.42 after: removed",
            "short": "detector: removed",
        },
        {
            "kind": "not_removed",
            "box": [70, 5, 110, 15],
            "label": "text 0.50: not removed",
            "short": "text: not removed",
        },
    ]
    assert [e["to"] for e in job["events"]] == ["queued", "needs_review"]
    # A job finished before suspects were recorded shows its gate verdicts instead.
    with session_scope(settings.database_url) as session:
        event = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job["id"], JobEvent.kind == "status")
        ).all()[-1]
        event.detail = {"attempt": 1, "gate": GATE}
    older = client.get(f"/review/api/jobs/{job['id']}").json()
    assert older["regions"] == [
        {
            "kind": "put_back",
            "box": [10, 20, 60, 40],
            "label": "put back: the change continues the product's edge",
            "short": "put back",
        }
    ]


def test_decisions_from_the_page_need_the_csrf_token_and_record_who(settings, shops):
    client, csrf = signed_in(reviewer_key("shop-a", "ana"))
    first, second, third = shops["a"][1]
    refused = client.post(f"/review/api/jobs/{first}/decision", json={"decision": "accept"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_refused"
    forged = client.post(
        f"/review/api/jobs/{first}/decision", json={"decision": "accept"}, headers={CSRF_HEADER: "guess"}
    )
    assert forged.status_code == 403
    with session_scope(settings.database_url) as session:
        assert session.get(Job, first).status == "needs_review"

    r = client.post(
        f"/review/api/jobs/{first}/decision",
        json={"decision": "accept", "note": "clean"},
        headers={CSRF_HEADER: csrf},
    )
    assert r.json() == {"id": first, "status": "succeeded"}
    event = last_event(settings, first)
    assert (event.kind, event.from_status, event.to_status) == ("review", "needs_review", "succeeded")
    assert {k: event.detail[k] for k in ("decision", "reviewer", "note", "via")} == {
        "decision": "accept",
        "reviewer": "ana",
        "note": "clean",
        "via": "page",
    }
    # The storefront's webhook is due and queued, as for any finish.
    with session_scope(settings.database_url) as session:
        assert session.get(Job, first).webhook_pending
    assert redis.Redis.from_url(settings.broker_url).llen(settings.queue_webhooks) == 1
    again = client.post(
        f"/review/api/jobs/{first}/decision", json={"decision": "reject"}, headers={CSRF_HEADER: csrf}
    )
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_in_review"

    several = client.post(
        "/review/api/decisions",
        json={"job_ids": [second, third, first], "decision": "accept"},
        headers={CSRF_HEADER: csrf},
    ).json()["results"]
    assert [r.get("status") or r["error"]["code"] for r in several] == [
        "succeeded",
        "succeeded",
        "not_in_review",
    ]
    queue = client.get("/review/api/queue").json()
    assert queue["total"] == 0 and queue["counts"]["succeeded"] == 3
    spot = client.get("/review/api/queue", params={"status": "succeeded"}).json()
    assert {j["id"] for j in spot["jobs"]} == {first, second, third}


def test_the_http_api_takes_the_same_decisions(settings, shops):
    key, ids = shops["a"]
    client = TestClient(app, headers={"Authorization": f"Bearer {key}"})
    r = client.post(
        f"/v1/jobs/{ids[0]}/review", json={"decision": "reject", "note": "ghost", "reviewer": "bo"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "failed" and body["error"] == {"code": "rejected_in_review", "message": "ghost"}
    assert last_event(settings, ids[0]).detail["reviewer"] == "bo"
    r = client.post(f"/v1/jobs/{ids[1]}/review", json={"decision": "no_mark"})
    assert r.json()["status"] == "no_watermark"
    assert {k: last_event(settings, ids[1]).detail[k] for k in ("reviewer", "via")} == {
        "reviewer": "api:shop-a",
        "via": "api",
    }
    conflict = client.post(f"/v1/jobs/{ids[0]}/review", json={"decision": "accept"})
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "not_in_review"
    assert client.post(f"/v1/jobs/{ids[2]}/review", json={"decision": "maybe"}).status_code == 422
    operation = app.openapi()["paths"]["/v1/jobs/{job_id}/review"]["post"]
    assert {"200", "404", "409", "401"} <= set(operation["responses"])
    schema = app.openapi()["components"]["schemas"]
    assert set(schema["Decision"]["enum"]) == {"accept", "reject", "no_mark"}
    assert not any(path.startswith("/review") for path in app.openapi()["paths"])


def test_the_queue_filters_orders_and_pages(settings, shops):
    with session_scope(settings.database_url) as session:
        a = session.scalar(select(Tenant).where(Tenant.name == "shop-a"))
        batch = Batch(tenant_id=a.id, kind="bulk", description="spring catalogue")
        session.add(batch)
        session.flush()
        batch_id = batch.id
        in_batch = add_job(
            session,
            a,
            40,
            reason="a text line was put back",
            confidence=0.2,
            batch=batch,
            version="pipeline-8+x",
        )
        late = add_job(session, a, 41, confidence=0.9, finished=datetime(2026, 6, 3, 9, tzinfo=UTC))
    client, _ = signed_in(shops["a"][0])
    ids_a = shops["a"][1]

    def listed(**params):
        return [j["id"] for j in client.get("/review/api/queue", params=params).json()["jobs"]]

    assert listed() == [*ids_a, in_batch, late]  # oldest first (finished earliest)
    assert listed(reason="TEXT LINE") == [in_batch]
    assert listed(reason="100%") == []  # the text is matched as text, not a pattern
    assert listed(batch=batch_id) == [in_batch]
    assert listed(version="pipeline-8") == [in_batch]
    assert listed(since="2026-06-01") == [late]
    assert listed(until="2026-05-01") == [*ids_a, in_batch]
    assert listed(order="uncertain")[:1] == [in_batch] and listed(order="uncertain")[-1] == late
    page = client.get("/review/api/queue", params={"per_page": 2, "page": 2}).json()
    assert [j["id"] for j in page["jobs"]] == [ids_a[2], in_batch] and page["total"] == 5
    data = client.get("/review/api/queue").json()
    assert data["batches"][0]["id"] == batch_id and set(data["versions"]) == {
        "pipeline-7+det",
        "pipeline-8+x",
    }
    assert client.get("/review/api/queue", params={"status": "failed"}).status_code == 422


def test_a_finished_attempt_records_its_suspects_for_the_page(settings):
    """What the page draws comes from the finishing status event: each suspect's detector,
    box, scores and fate (its evidence, the prior's inputs, is left out), as plain JSON."""
    with session_scope(settings.database_url) as session:
        job, _ = create_job(session, ensure_tenant(session, "shop"), "file:///s/x.png")
        job_id = job.id
    claim = claim_job(settings.database_url, job_id, max_attempts=3)
    suspect = {"detector": "detector", "box": [1, 2, 3, 4], "score": np.float32(0.5), "after": None}
    suspect |= {"fate": "removed", "evidence": {"mean": 0.4}}
    metrics = {"width": 4, "height": 4, "mask_area_fraction": 0.1, "detector_confidence": 0.5}
    metrics |= {"residual_score": 0.0, **{f"ms_{s}": 1.0 for s in ("decode", "detect", "remove", "encode")}}
    assert finish_job(
        settings.database_url,
        claim,
        JobStatus.needs_review,
        result_uri="file:///r.png",
        mask_uri="file:///m.png",
        metrics={**metrics, "ms_total": 4.0},
        pipeline_version="p",
        review_reason="why",
        suspects=[suspect],
    )
    with session_scope(settings.database_url) as session:
        event = last_event(settings, job_id)
        assert event.detail["suspects"] == [
            {"detector": "detector", "box": [1, 2, 3, 4], "score": 0.5, "after": None, "fate": "removed"}
        ]
        assert regions(list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id))))[0][
            "short"
        ] == ("detector: removed")


def test_a_region_doubted_in_a_proposal_is_drawn_as_such():
    fate = f"{DOUBTED}: too faint a change for an overlay (opacity 0.12 < 0.2)"
    suspect = {"detector": "detector", "box": [1, 2, 30, 40], "score": 0.9, "after": 0.61, "fate": fate}
    (region,) = regions([JobEvent(detail={"suspects": [suspect]})])
    assert region["kind"] == "doubted" and region["short"] == f"detector: {DOUBTED}"


def test_a_printed_line_taken_whole_in_a_proposal_is_drawn_as_doubted():
    taken = {"detector": "text prior", "box": [5, 6, 70, 20], "score": 0.03, "after": None}
    taken["fate"] = f"{TAKEN} (1.00 of its length)"
    (region,) = regions([JobEvent(detail={"suspects": [taken]})])
    assert region["kind"] == "doubted"
    assert region["short"] == "text prior: doubted as printed text, shown removed for review"
