"""The HTTP API on real PostgreSQL and Redis; one test goes upload -> real `clearmark api`
-> real worker -> signed webhook to a local receiver -> result download."""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import redis
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from starlette.routing import compile_path

from clearmark.settings import set_settings
from clearmark.workers import api
from clearmark.workers.attempts import process_job
from clearmark.workers.cli import cli
from clearmark.workers.db import WITH_RESULT, Job, JobEvent, JobStatus, Tenant, session_scope
from clearmark.workers.jobs import claim_job, create_job, fail_job
from clearmark.workers.storage import InvalidSourceUri, get_storage, read_uri
from clearmark.workers.submit import submit_sources
from clearmark.workers.tenants import create_tenant
from clearmark.workers.webhooks import SIGNATURE_HEADER, verify_signature
from tests.services import Service, product_photo, wait_for
from tests.test_compose import compose_command

pytestmark = [pytest.mark.integration]


@dataclass
class Shop:
    id: str
    key: str
    secret: str

    @property
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def api_settings(service):
    """The service settings with webhooks allowed to 127.0.0.1 and quick retries."""
    s = service.replace(webhook_allow_hosts=("127.0.0.1",), webhook_backoff_s=0.3, webhook_max_attempts=3)
    set_settings(s)
    return s


@pytest.fixture
def make_shop(api_settings):
    def make(name: str, webhook: str | None = None) -> Shop:
        with session_scope(api_settings.database_url) as session:
            tenant, key = create_tenant(session, name, webhook_url=webhook)
            return Shop(tenant.id, key, tenant.webhook_secret)

    return make


def assert_documented(response: httpx.Response) -> None:
    """The answer's status code is declared for its route in the OpenAPI document (the
    check schemathesis makes); the `client` fixture runs it on every answer."""
    request = response.request
    for path, operations in api.app.openapi()["paths"].items():
        operation = operations.get(request.method.lower())
        if operation and compile_path(path)[0].match(request.url.path):
            assert str(response.status_code) in operation["responses"], (
                request.method,
                path,
                response.status_code,
                list(operation["responses"]),
            )
            return


def documented_client(**options) -> TestClient:
    """A TestClient that checks each answer with assert_documented."""
    client = TestClient(api.app, **options)
    client.event_hooks = {"response": [assert_documented]}
    return client


@pytest.fixture
def client(api_settings):
    return documented_client()


class Receiver(ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1 that records each POST and answers `status`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.requests: list[tuple[dict, bytes]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__((host, port), Handler)
        self.url = f"http://{host}:{self.server_address[1]}/hooks/clearmark"


@pytest.fixture
def receiver():
    server = Receiver()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def png(seed: int = 0, size=(160, 120)) -> bytes:
    buf = io.BytesIO()
    product_photo(seed, size).save(buf, format="PNG")
    return buf.getvalue()


def upload(client, shop: Shop, data: bytes, content_type="image/png", **form):
    headers = dict(shop.auth)
    if "key" in form:
        headers["Idempotency-Key"] = form.pop("key")
    return client.post(
        "/v1/images", headers=headers, data=form, files={"file": ("photo.png", data, content_type)}
    )


def count_jobs(settings) -> int:
    with session_scope(settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(Job))


def queued_messages(settings) -> int:
    return redis.Redis.from_url(settings.broker_url).llen(settings.queue_uploads)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_upload_worker_webhook_end_to_end(api_settings, make_shop, receiver, workers, tmp_path):
    shop = make_shop("shop", webhook=receiver.url)
    s = api_settings
    workers(s, "e2e", "-Q", f"{s.queue_uploads},{s.queue_webhooks}")
    port = str(free_port())
    server = Service(
        s, tmp_path / "api.log", *compose_command("api", {"--host": "127.0.0.1", "--port": port})
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=shop.auth, timeout=30) as http:
            wait_for(lambda: _get_ok(http, "/readyz"), 60, "the API to be ready", interval=0.2)
            data = png(7, (320, 240))
            r = http.post("/v1/images", files={"file": ("p.png", data, "image/png")})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            assert r.headers["location"] == f"http://127.0.0.1:{port}/v1/jobs/{job_id}"

            wait_for(lambda: receiver.requests, 240, "the webhook", interval=0.2)
            headers, body = receiver.requests[0]
            assert verify_signature(shop.secret, headers[SIGNATURE_HEADER], body)
            assert not verify_signature(shop.secret, headers[SIGNATURE_HEADER], body + b" ")
            event = json.loads(body)
            assert event["type"] == "job.finished" and event["job"]["id"] == job_id
            assert JobStatus(event["job"]["status"]) in WITH_RESULT
            assert event["job"]["metrics"]["width"] == 320

            job = http.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] == event["job"]["status"] and job["links"]["result"]
            result = http.get(job["links"]["result"])
            assert result.status_code == 200 and result.headers["content-type"] == "image/png"
            with session_scope(s.database_url) as session:
                stored = session.get(Job, job_id)
                assert result.content == read_uri(stored.result_uri)
            assert Image.open(io.BytesIO(result.content)).size == (320, 240)
            assert Image.open(io.BytesIO(http.get(job["links"]["mask"]).content)).size == (320, 240)
            page = http.get("/v1/jobs").json()
            assert [j["id"] for j in page["jobs"]] == [job_id]
    finally:
        server.stop()
    delivered = wait_for(lambda: _webhook_events(s, job_id), 30, "the delivery event")
    assert delivered[0]["outcome"] == "delivered" and delivered[0]["status_code"] == 200


def _get_ok(http, path) -> bool:
    try:
        return http.get(path).status_code == 200
    except httpx.TransportError:
        return False


def _webhook_events(settings, job_id) -> list[dict]:
    with session_scope(settings.database_url) as session:
        return [
            e.detail
            for e in session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.kind == "webhook")
                .order_by(JobEvent.id)
            )
        ]


def test_same_upload_gives_one_job(api_settings, client, make_shop):
    shop = make_shop("shop")
    first, again = upload(client, shop, png(1)), upload(client, shop, png(1))
    assert (first.status_code, again.status_code) == (202, 200), first.text
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["source_name"] == "photo.png"  # the upload's file name, not the storage key
    keyed = upload(client, shop, png(2), key="order-17/photo-1")
    same_key = upload(client, shop, png(2), key="order-17/photo-1")
    assert (keyed.status_code, same_key.status_code) == (202, 200)
    assert keyed.json()["id"] == same_key.json()["id"]

    data = png(4)
    with ThreadPoolExecutor(8) as pool:
        racing = list(pool.map(lambda _: upload(TestClient(api.app), shop, data), range(8)))
    assert sorted(r.status_code for r in racing) == [200] * 7 + [202]
    assert len({r.json()["id"] for r in racing}) == 1
    assert count_jobs(api_settings) == 3 and queued_messages(api_settings) == 3


def test_an_idempotency_key_reused_for_another_request_is_a_422(api_settings, client, make_shop):
    """Stripe's rule: the same key with another image or other parameters is refused, and
    the refused upload stores and queues nothing."""
    shop = make_shop("shop")
    first = upload(client, shop, png(2), key="order-17/photo-1", priority="low")
    assert first.status_code == 202, first.text
    storage = Path(api_settings.storage_uri.removeprefix("file://"))
    stored = sorted(storage.rglob("*"))
    for data, form in (
        (png(3), {"priority": "low"}),  # another image
        (png(2), {}),  # another priority
        (png(2), {"priority": "low", "callback_url": "http://127.0.0.1:9/h"}),
    ):
        r = upload(client, shop, data, key="order-17/photo-1", **form)
        assert r.status_code == 422, (form, r.text)
        assert r.json()["error"]["code"] == "idempotency_conflict"
        assert first.json()["id"] in r.json()["error"]["message"]
    with session_scope(api_settings.database_url) as session:  # as a reprocess run does
        session.get(Job, first.json()["id"]).priority = "normal"
    again = upload(client, shop, png(2), key="order-17/photo-1", priority="low")
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])
    assert sorted(storage.rglob("*")) == stored
    assert count_jobs(api_settings) == 1
    assert redis.Redis.from_url(api_settings.broker_url).llen(api_settings.queue_bulk) == 1


def test_auth_and_tenant_isolation(client, make_shop):
    a, b = make_shop("a"), make_shop("b")
    missing = client.get("/v1/jobs")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer cm_wrong"}).status_code == 401
    assert client.get("/v1/jobs", headers={"Authorization": f"Basic {a.key}"}).status_code == 401
    job_id = upload(client, a, png(1)).json()["id"]
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/result", f"/v1/jobs/{job_id}/mask"):
        assert client.get(path, headers=b.auth).status_code == 404, path
    assert client.post(f"/v1/jobs/{job_id}/retry", headers=b.auth).status_code == 404
    assert client.get("/v1/jobs", headers=b.auth).json()["jobs"] == []
    assert client.get(f"/v1/jobs/{job_id}", headers=a.auth).json()["status"] == "queued"
    assert client.get(f"/v1/jobs/{job_id}/result", headers=a.auth).status_code == 409


def test_rejected_uploads_store_and_queue_nothing(api_settings, client, make_shop, tmp_path):
    set_settings(api_settings.replace(max_bytes=100_000, max_pixels=200 * 200))
    shop = make_shop("shop")
    plain = io.BytesIO()
    Image.new("RGB", (400, 300), "white").save(plain, format="PNG")
    cases = [
        (plain.getvalue(), "image/png", 413, "too_many_pixels"),
        (b"\x89PNG" + bytes(120_000), "image/png", 413, "too_large_bytes"),  # read limit
        (bytes(900_000), "image/png", 413, "too_large_bytes"),  # Content-Length
        (b"name,price\nshoe,10\n", "text/csv", 415, "unsupported_media_type"),
        (b"<html>a login page</html>", "image/gif", 415, "not_an_image"),
        (png(1)[:20], "image/png", 422, "truncated_image"),  # no whole header
    ]
    for data, content_type, status, code in cases:
        r = upload(client, shop, data, content_type)
        assert r.status_code == status, (content_type, status, r.text)
        assert r.json()["error"]["code"] == code
    assert count_jobs(api_settings) == 0 and queued_messages(api_settings) == 0
    storage = Path(api_settings.storage_uri.removeprefix("file://"))
    assert not storage.exists() or not any(p.is_file() for p in storage.rglob("*"))
    # The API reads headers only: broken pixel data behind a good header is the worker's
    # to find (the job fails as truncated_image there, tests/test_bad_inputs.py).
    assert upload(client, shop, png(1)[:300]).status_code == 202


def test_callback_url_must_be_public_unless_allow_listed(api_settings, client, make_shop):
    shop = make_shop("shop")
    for url in (
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest",
        "http://[::1]:8080/",
        "ftp://example.com/hook",
        "http://127.0.0.1:9/hook\x01",  # allow-listed, but no URL has a control character
        "http://127.0.0.1:9/" + "a" * 70_000,  # nor more than 2,048 characters
    ):
        r = upload(client, shop, png(1), callback_url=url)
        assert r.status_code == 422 and r.json()["error"]["code"] == "unsafe_callback_url", url
    assert upload(client, shop, png(1), callback_url="http://127.0.0.1:9/hook").status_code == 202
    set_settings(api_settings.replace(webhook_allow_hosts=()))
    assert upload(client, shop, png(2), callback_url="http://127.0.0.1:9/hook").status_code == 422
    assert count_jobs(api_settings) == 1


def test_list_pages_and_retry(api_settings, client, make_shop):
    shop = make_shop("shop")
    ids = [upload(client, shop, png(i), priority="low").json()["id"] for i in range(3)]
    first = client.get("/v1/jobs?limit=2", headers=shop.auth).json()
    rest = client.get(f"/v1/jobs?limit=2&cursor={first['next_cursor']}", headers=shop.auth).json()
    assert [j["id"] for j in first["jobs"] + rest["jobs"]] == ids and rest["next_cursor"] is None
    assert all(j["priority"] == "low" for j in first["jobs"])
    assert client.get("/v1/jobs?status=failed", headers=shop.auth).json()["jobs"] == []
    assert client.get("/v1/jobs?since=2999-01-01T00:00:00Z", headers=shop.auth).json()["jobs"] == []
    for query in ("cursor=nonsense", "since=0.5", "since=1700000000"):  # since: ISO 8601 only
        refused = client.get(f"/v1/jobs?{query}", headers=shop.auth)
        assert refused.status_code == 422, query
        assert refused.json()["error"]["code"] == ("bad_cursor" if "cursor" in query else "invalid_request")

    claim = claim_job(api_settings.database_url, ids[0], api_settings.max_attempts)
    fail_job(api_settings.database_url, claim, "internal_error", "boom")
    assert client.get("/v1/jobs?status=failed", headers=shop.auth).json()["jobs"][0]["error"] == {
        "code": "internal_error",
        "message": "boom",
    }
    retried = client.post(f"/v1/jobs/{ids[0]}/retry", headers=shop.auth)
    assert retried.status_code == 202
    assert (retried.json()["status"], retried.json()["attempts"], retried.json()["error"]) == (
        "queued",
        0,
        None,
    )
    assert client.post(f"/v1/jobs/{ids[0]}/retry", headers=shop.auth).status_code == 409
    bulk = redis.Redis.from_url(api_settings.broker_url).llen(api_settings.queue_bulk)
    assert bulk == 4  # three uploads at low priority and the retry, all on the bulk queue


def test_needs_review_job_carries_its_reason(api_settings, client, make_shop):
    """finish_job(needs_review, review_reason=...) -> jobs row -> the job document (GET and
    list); other statuses, and the job once a reviewer accepted it, show null."""
    from clearmark.workers.jobs import finish_job
    from clearmark.workers.review import Decision, decide

    reason = (
        "the gate put back a region the detector was sure of (0.91) at (10, 20, 300, 80):"
        " change not explained by one overlay colour (0.62 < 0.85)"
    )
    metrics = dict(
        width=160,
        height=120,
        mask_area_fraction=0.05,
        detector_confidence=0.91,
        residual_score=0.1,
        ms_decode=1.0,
        ms_detect=1.0,
        ms_remove=1.0,
        ms_encode=1.0,
        ms_total=4.0,
    )
    shop = make_shop("shop")
    review_id, ok_id = (upload(client, shop, png(i)).json()["id"] for i in range(2))
    assert client.get(f"/v1/jobs/{review_id}", headers=shop.auth).json()["review_reason"] is None
    for job_id, status in ((review_id, JobStatus.needs_review), (ok_id, JobStatus.succeeded)):
        claim = claim_job(api_settings.database_url, job_id, api_settings.max_attempts)
        assert finish_job(
            api_settings.database_url,
            claim,
            status,
            result_uri="file:///r.png",
            mask_uri="file:///m.png",
            metrics=metrics,
            pipeline_version="v",
            review_reason=reason,
        )
    doc = client.get(f"/v1/jobs/{review_id}", headers=shop.auth).json()
    assert (doc["status"], doc["review_reason"], doc["error"]) == ("needs_review", reason, None)
    # The whole document, as the response model writes it: every field, times as Python
    # writes them, the metrics finish_job was given (null: not given).
    assert list(doc) == [
        "id",
        "status",
        "priority",
        "source_name",
        "source_sha256",
        "idempotency_key",
        "attempts",
        "pipeline_version",
        "created_at",
        "updated_at",
        "finished_at",
        "error",
        "review_reason",
        "metrics",
        "links",
        "group",
    ]
    assert (doc["id"], doc["priority"], doc["attempts"]) == (review_id, "normal", 1)
    assert doc["pipeline_version"] == "v"
    assert doc["created_at"].endswith("+00:00") and doc["finished_at"] > doc["created_at"]
    null = dict.fromkeys(("ms_gate", "ms_residual", "jpeg_exact", "jpeg_blocks_changed", "method"))
    assert doc["metrics"] == {**metrics, **null}
    path = f"http://testserver/v1/jobs/{review_id}"
    assert doc["links"] == {"self": path, "result": f"{path}/result", "mask": f"{path}/mask"}
    listed = client.get("/v1/jobs?status=needs_review", headers=shop.auth).json()["jobs"]
    assert [(j["id"], j["review_reason"]) for j in listed] == [(review_id, reason)]
    assert client.get(f"/v1/jobs/{ok_id}", headers=shop.auth).json()["review_reason"] is None

    assert decide(review_id, Decision.accept, reviewer="ana", settings=api_settings) == "succeeded"
    doc = client.get(f"/v1/jobs/{review_id}", headers=shop.auth).json()
    assert (doc["status"], doc["review_reason"]) == ("succeeded", None)
    with session_scope(api_settings.database_url) as session:
        assert session.get(Job, review_id).review_reason == reason  # kept as history


def test_health_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}
    paths = client.get("/v1/openapi.json").json()["paths"]
    assert {
        "/v1/images",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/result",
        "/v1/jobs/{job_id}/retry",
        "/healthz",
        "/readyz",
    } <= set(paths)


def test_tenants_create_prints_a_working_key_once(api_settings, client):
    runner = CliRunner()
    created = runner.invoke(cli, ["tenants", "create", "shop", "--webhook", "http://127.0.0.1:9/h"])
    assert created.exit_code == 0, created.output
    key = re.search(r"api key\s+(\S+)", created.output).group(1)
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    with session_scope(api_settings.database_url) as session:
        tenant = session.scalars(select(Tenant)).one()
    assert tenant.api_key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert tenant.webhook_secret in created.output
    again = runner.invoke(cli, ["tenants", "create", "shop"])
    assert again.exit_code == 1 and "already has an API key" in again.output
    private = runner.invoke(cli, ["tenants", "create", "other", "--webhook", "http://10.0.0.1/h"])
    assert private.exit_code == 1 and "private" in private.output
    long = runner.invoke(cli, ["tenants", "create", "other", "--webhook", "http://127.0.0.1:9/" + "a" * 2048])
    assert long.exit_code == 1 and "longer than 2048" in long.output
    listed = runner.invoke(cli, ["tenants", "list"])
    assert "shop" in listed.output and key not in listed.output


def _traversals(storage, a_id: str, b_id: str, name: str) -> list[str]:
    """Every encoded way of climbing from tenant a's prefix into b's (or out of storage)."""
    own = f"{storage.root_uri}/sources/{a_id}"
    return [
        f"{own}/%2e%2e/{b_id}/{name}",
        f"{own}/%2E%2e/{b_id}/{name}",
        f"{own}/..%2f{b_id}/{name}",
        f"{own}/%2e%2e%2f{b_id}/{name}",
        f"{own}/%252e%252e/{b_id}/{name}",
        f"{own}/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc/passwd",
        f"{own}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/dev/zero",
        f"{own}/p1.png%00.png",
        f"{own}/%00",
        f"{own}/a%5c..%5c..%5c{b_id}%5c{name}",
        f"{own}/link-out.png",
        f"{own}/link-theirs.png",
        f"{own}/catalogue",
        f"{own}/%0a.png",
    ]


def test_source_uri_traversal_is_refused_alike(api_settings, client, make_shop):
    a, b = make_shop("a"), make_shop("b")
    storage = get_storage()
    storage.put(f"sources/{a.id}/catalogue/p1.png", png(5))
    theirs = storage.put(f"sources/{b.id}/p2.png", png(6))
    root = Path(api_settings.storage_uri.removeprefix("file://"))
    (root / "sources" / a.id / "link-out.png").symlink_to("/etc/passwd")
    (root / "sources" / a.id / "link-theirs.png").symlink_to(root / "sources" / b.id / "p2.png")
    answers = set()
    for uri in _traversals(storage, a.id, b.id, "p2.png"):
        r = client.post("/v1/images", headers=a.auth, data={"source_uri": uri})
        assert r.status_code == 422, (uri, r.text)
        answers.add((r.json()["error"]["code"], r.json()["error"]["message"]))
    assert len(answers) == 1 and next(iter(answers))[0] == "invalid_source_uri", answers
    assert count_jobs(api_settings) == 0
    assert read_uri(theirs) == png(6)  # untouched, and never reached by a
    own_link = root / "sources" / a.id / "alias.png"
    own_link.symlink_to(root / "sources" / a.id / "catalogue" / "p1.png")
    alias = f"{storage.root_uri}/sources/{a.id}/alias.png"
    r = client.post("/v1/images", headers=a.auth, data={"source_uri": alias})
    assert r.status_code == 202, r.text
    with session_scope(api_settings.database_url) as session:  # the job names the real file
        assert session.get(Job, r.json()["id"]).source_uri.endswith(f"sources/{a.id}/catalogue/p1.png")


def test_bulk_refuses_another_tenants_source(api_settings, make_shop):
    a, b = make_shop("a"), make_shop("b")
    storage = get_storage()
    theirs = storage.put(f"sources/{b.id}/p2.png", png(6))
    result = CliRunner().invoke(cli, ["bulk", theirs, "--tenant", "a"])
    assert result.exit_code == 1 and "sources/" in result.output and "Traceback" not in result.output
    for uri in [theirs, *_traversals(storage, a.id, b.id, "p2.png")[:10]]:
        with pytest.raises(InvalidSourceUri):
            list(submit_sources([uri], tenant="a", bulk=True))
    assert count_jobs(api_settings) == 0


def test_worker_refuses_a_recorded_traversal(api_settings, make_shop):
    """A job recorded with a crafted source before the API checked it fails on its own."""
    a, b = make_shop("a"), make_shop("b")
    storage = get_storage()
    storage.put(f"sources/{b.id}/p2.png", png(6))
    with session_scope(api_settings.database_url) as session:
        crafted = _traversals(storage, a.id, b.id, "p2.png")[0]
        job, _ = create_job(session, session.get_one(Tenant, a.id), crafted)
        job_id = job.id
    assert process_job(job_id, engines=None, settings=api_settings) == "failed"  # type: ignore[arg-type]
    with session_scope(api_settings.database_url) as session:
        job = session.get_one(Job, job_id)
        assert (job.error_code, job.result_uri) == ("invalid_source_uri", None)


def test_upload_by_source_uri_inside_own_prefix(api_settings, client, make_shop):
    a, b = make_shop("a"), make_shop("b")
    storage = get_storage()
    mine = storage.put(f"sources/{a.id}/catalogue/p1.png", png(5))
    theirs = storage.put(f"sources/{b.id}/p2.png", png(6))
    r = client.post("/v1/images", headers=a.auth, data={"source_uri": mine})
    assert r.status_code == 202, r.text
    with session_scope(api_settings.database_url) as session:
        assert session.get(Job, r.json()["id"]).source_uri == mine
    for uri in (
        theirs,
        f"{storage.root_uri}/sources/{a.id}/../{b.id}/p2.png",
        "file:///etc/passwd",
        f"{storage.root_uri}/sources/{a.id}/missing.png",
    ):
        r = client.post("/v1/images", headers=a.auth, data={"source_uri": uri})
        assert r.status_code == 422, (uri, r.text)
    both = client.post(
        "/v1/images",
        headers=a.auth,
        data={"source_uri": mine},
        files={"file": ("p.png", png(5), "image/png")},
    )
    neither = client.post("/v1/images", headers=a.auth, data={"priority": "low"})
    for r in (both, neither):
        assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request")
        assert "exactly one of 'file' or 'source_uri'" in r.json()["error"]["message"]
    text_field = client.post("/v1/images", headers=a.auth, data={"file": "photo.png"})
    assert (text_field.status_code, text_field.json()["error"]["code"]) == (422, "not_a_file")
    assert count_jobs(api_settings) == 1
