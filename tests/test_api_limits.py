"""What the API refuses before it reads an upload (a wrong key, an oversize or chunked body,
a tenant over its limits), outages as JSON 503s, unexpected errors as JSON 500s with a
request id, and an OpenAPI document that declares every status code. The streaming tests
talk raw HTTP/1.1 to a real uvicorn, so they see exactly what a client sees."""

from __future__ import annotations

import errno
import http.client
import json
import select
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn
from click.testing import CliRunner
from fsspec.implementations.local import LocalFileSystem

from clearmark.settings import set_settings
from clearmark.workers import api, api_guard
from clearmark.workers.cli import cli
from clearmark.workers.commands import web
from clearmark.workers.slow_clients import DeadlineH11Protocol
from clearmark.workers.storage import get_storage
from tests.services import Service, wait_for
from tests.test_api import (  # noqa: F401 - fixtures used here
    api_settings,
    client,
    count_jobs,
    documented_client,
    free_port,
    make_shop,
    png,
    queued_messages,
    upload,
)
from tests.test_storage import disk_fills_up

pytestmark = [pytest.mark.integration]
UNREACHABLE_PG = "postgresql+psycopg://postgres@127.0.0.1:1/test"
FILE_PART = (
    b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="p.png"\r\n'
    b"Content-Type: image/png\r\n\r\n"
)  # the start of a multipart body


@pytest.fixture
def live_api(api_settings):
    """`workers.api.app` served by uvicorn on a free port (in this process, so it uses the
    settings the test installs); yields the port."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            api.app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            http=DeadlineH11Protocol,  # as `clearmark api` serves it
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "uvicorn to start", interval=0.05)
    yield port
    server.should_exit = True
    thread.join(10)


def upload_head(key: str, framing: str) -> bytes:
    return (
        f"POST /v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary=xyz\r\n{framing}\r\n\r\n"
    ).encode()


def answer(sock: socket.socket) -> tuple[int, dict, dict]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    headers = {k.lower(): v for k, v in response.getheaders()}
    return response.status, headers, json.loads(response.read())


def test_a_wrong_key_is_refused_before_the_body_is_read(live_api):
    with socket.create_connection(("127.0.0.1", live_api), timeout=30) as sock:
        sock.sendall(upload_head("cm_wrong", "Content-Length: 8000000"))  # and no body at all
        status, headers, body = answer(sock)
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    assert headers["connection"] == "close" and headers["www-authenticate"] == "Bearer"


def test_an_oversize_chunked_upload_is_refused_while_it_streams(api_settings, live_api, make_shop):
    from clearmark.settings import set_settings

    set_settings(api_settings.replace(max_bytes=100_000))
    shop = make_shop("shop")
    chunk = b"x" * 32768
    with socket.create_connection(("127.0.0.1", live_api), timeout=30) as sock:
        sock.sendall(upload_head(shop.key, "Transfer-Encoding: chunked"))
        sock.sendall(b"%x\r\n%s\r\n" % (len(FILE_PART), FILE_PART))
        for _ in range(64):  # up to 2 MiB; the closing zero-length chunk is never sent
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break
            if select.select([sock], [], [], 0)[0]:
                break
        status, headers, body = answer(sock)
    assert (status, body["error"]["code"]) == (413, "too_large_bytes")
    assert headers["connection"] == "close"
    assert count_jobs(api_settings) == 0


def trickle(sock: socket.socket, pieces) -> None:
    """Send each piece 0.2 s after the last, until the server answers or hangs up."""
    for piece in pieces:
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return
        if select.select([sock], [], [], 0.2)[0]:
            return


def closed(sock: socket.socket) -> bool:
    """Whether the server closed the connection: an end of stream, or a reset when bytes
    the client trickled in were still unread in the server's buffer as it closed."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_slow_headers_and_bodies_are_cut_off_with_408(api_settings, live_api, make_shop):
    set_settings(api_settings.replace(api_header_timeout_s=1, api_body_timeout_s=1))
    shop = make_shop("shop")
    kept_alive = http.client.HTTPConnection("127.0.0.1", live_api, timeout=30)
    for _ in range(2):  # prompt requests on one connection: each has its own deadline
        kept_alive.request("GET", "/healthz")
        assert kept_alive.getresponse().read() == b'{"status":"ok"}'
        time.sleep(0.6)
    kept_alive.close()
    slow_headers = [b"GET /healthz HTTP/1.1\r\n"] + [b"X-Slow-%d: 1\r\n" % i for i in range(50)]
    slow_body = [upload_head(shop.key, "Content-Length: 100000") + FILE_PART] + [b"x" * 10] * 50
    for pieces, what in ((slow_headers, "headers"), (slow_body, "body")):
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", live_api), timeout=30) as sock:
            trickle(sock, pieces)  # 10 s in all, if nothing stops it
            status, headers, body = answer(sock)
            assert closed(sock)
        assert (status, body["error"]["code"]) == (408, "request_timeout"), what
        assert what in body["error"]["message"] and headers["connection"] == "close"
        assert time.monotonic() - started < 3, what
    assert count_jobs(api_settings) == 0


def test_clearmark_api_serves_with_the_deadlines(monkeypatch):
    served = []
    monkeypatch.setattr(web.uvicorn, "run", lambda app, **options: served.append(options))
    assert CliRunner().invoke(cli, ["api", "--port", "8123"]).exit_code == 0
    assert served[0]["http"] is DeadlineH11Protocol


def test_uploads_in_flight_per_tenant_are_limited(api_settings, live_api, make_shop):
    from clearmark.settings import set_settings

    set_settings(api_settings.replace(upload_concurrency=1))
    shop, other = make_shop("shop"), make_shop("other")
    body = FILE_PART + png(1) + b"\r\n--xyz--\r\n"
    base = f"http://127.0.0.1:{live_api}"

    def second_upload(who):  # not an image: 415 if it gets in, nothing stored
        return httpx.post(
            f"{base}/v1/images", headers=who.auth, files={"file": ("x.png", b"not an image", "image/png")}
        )

    with socket.create_connection(("127.0.0.1", live_api), timeout=30) as sock:
        sock.sendall(upload_head(shop.key, f"Content-Length: {len(body)}") + body[:100])
        refused = wait_for(
            lambda: (r := second_upload(shop)).status_code == 429 and r,
            30,
            "the first upload to hold the tenant's only slot",
            interval=0.05,
        )
        assert refused.json()["error"]["code"] == "too_many_uploads"
        assert refused.headers["retry-after"] == "1"
        assert second_upload(other).status_code == 415  # another tenant has its own slots
        sock.sendall(body[100:])
        status, _, job = answer(sock)
    assert status == 202 and job["status"] == "queued"
    wait_for(lambda: second_upload(shop).status_code == 415, 30, "the slot to be given back", interval=0.05)


@pytest.mark.parametrize("storage", ["memory://", "redis"])
def test_a_tenant_over_its_rate_limit_gets_429_with_retry_after(api_settings, client, make_shop, storage):
    from clearmark.settings import set_settings

    if storage == "redis":  # the counters all API processes share
        storage = api_settings.broker_url
    set_settings(api_settings.replace(rate_limit="3/hour", rate_limit_storage=storage))
    shop, other = make_shop("shop"), make_shop("other")
    assert [client.get("/v1/jobs", headers=shop.auth).status_code for _ in range(3)] == [200] * 3
    over = client.get("/v1/jobs", headers=shop.auth)
    assert (over.status_code, over.json()["error"]["code"]) == (429, "rate_limited")
    assert 0 < int(over.headers["retry-after"]) <= 3600
    assert client.get("/v1/jobs", headers=other.auth).status_code == 200
    if storage != "memory://":  # the counters, named by tenant, would live an hour
        with redis.Redis.from_url(storage) as r:
            counters = [key for t in (shop, other) for key in r.scan_iter(match=f"LIMITS:*{t.id}*")]
            assert len(counters) == 2
            r.delete(*counters)


def test_wrong_keys_are_limited_per_client_address(api_settings, make_shop, monkeypatch):
    """Each wrong key costs a database lookup: past the limit, the address is refused before
    any lookup (its right keys too, until the window passes); other addresses carry on."""
    set_settings(api_settings.replace(rate_limit_bad_keys="3/hour"))
    shop = make_shop("shop")
    lookups = []
    lookup = api_guard.tenant_for_key
    monkeypatch.setattr(
        api_guard, "tenant_for_key", lambda session, key: lookups.append(key) or lookup(session, key)
    )
    attacker = documented_client(client=("203.0.113.7", 5000))
    neighbour = documented_client(client=("198.51.100.9", 5000))
    wrong = {"Authorization": "Bearer cm_wrong"}
    assert [attacker.get("/v1/jobs", headers=wrong).status_code for _ in range(3)] == [401] * 3
    over = attacker.get("/v1/jobs", headers=wrong)
    assert (over.status_code, over.json()["error"]["code"]) == (429, "rate_limited")
    assert 0 < int(over.headers["retry-after"]) <= 3600
    assert attacker.get("/v1/jobs", headers=shop.auth).status_code == 429
    assert len(lookups) == 3
    assert neighbour.get("/v1/jobs", headers=shop.auth).status_code == 200
    assert neighbour.get("/v1/jobs", headers=wrong).status_code == 401


def test_database_down_is_a_json_503(api_settings, client, caplog):
    from clearmark.settings import set_settings

    set_settings(api_settings.replace(database_url=UNREACHABLE_PG))
    for path in ("/v1/jobs", "/v1/jobs/abc", "/metrics"):
        r = client.get(path, headers={"Authorization": "Bearer cm_anything"})
        assert r.status_code == 503, (path, r.text)
        assert r.json()["error"]["code"] == "database_unavailable", path
        assert int(r.headers["retry-after"]) > 0
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unavailable"
    # /readyz needs no key: where the database is and what its driver said go to the log only
    assert "127.0.0.1" not in ready.text and "psycopg" not in ready.text.lower()
    assert any("database unavailable" in r.message and "127.0.0.1" in r.message for r in caplog.records)


@pytest.mark.slow
def test_broker_down_on_upload_is_a_json_503(api_settings, make_shop, tmp_path):
    """A real `clearmark api` whose broker is unreachable: the answer is a JSON 503 with
    Retry-After, and the upload's job stays queued for the reaper to send
    (tests/test_reaper.py follows it through)."""
    shop = make_shop("shop")
    port = free_port()
    server = Service(
        api_settings.replace(broker_url="redis://127.0.0.1:1/0"),
        tmp_path / "api.log",
        "api",
        "--port",
        str(port),
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=shop.auth) as http:
            wait_for(lambda: _answers(http), 60, "the API to listen", interval=0.1)
            r = http.post("/v1/images", files={"file": ("p.png", png(1), "image/png")})
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "broker_unavailable"
            assert int(r.headers["retry-after"]) > 0
            jobs = http.get("/v1/jobs").json()["jobs"]
            assert [(j["status"], j["error"]) for j in jobs] == [("queued", None)]
    finally:
        server.stop()


def _answers(http: httpx.Client) -> bool:
    try:
        return http.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def test_anything_unexpected_is_a_json_500_with_the_request_id(api_settings, make_shop, monkeypatch):
    shop = make_shop("shop")
    client = documented_client(raise_server_exceptions=False)
    job_id = upload(client, shop, png(1)).json()["id"]

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(api, "job_document", broken)
    r = client.get(f"/v1/jobs/{job_id}", headers=shop.auth)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
    assert "a bug" not in r.text
    assert client.get("/healthz").headers["x-request-id"] != r.headers["x-request-id"]


def test_every_route_declares_the_errors_every_request_can_meet(client):
    paths = client.get("/v1/openapi.json").json()["paths"]
    assert {
        "/v1/images",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/result",
        "/v1/jobs/{job_id}/mask",
        "/v1/jobs/{job_id}/retry",
        "/v1/jobs/{job_id}/review",
        "/healthz",
        "/readyz",
        "/metrics",
    } == set(paths)
    for path, operations in paths.items():
        for method, operation in operations.items():
            declared = operation["responses"]
            assert "500" in declared, (method, path)
            if path.startswith("/v1/"):
                assert {"401", "422", "429", "503"} <= set(declared), (method, path)
                for code in set(declared) - {"200", "202"}:
                    assert "ErrorBody" in json.dumps(declared[code]), (method, path, code)


def test_storage_down_is_a_json_503_and_stores_nothing(api_settings, client, make_shop, monkeypatch):
    """A full storage on upload, failing reads on a source_uri: 503 storage_unavailable with
    Retry-After (no server path in the answer); no job, no message, no partial file."""
    shop = make_shop("shop")
    source = get_storage().put(f"sources/{shop.id}/p.png", png(2))
    storage_root = Path(api_settings.storage_uri.removeprefix("file://"))
    with monkeypatch.context() as full:
        disk_fills_up(full)
        r = upload(client, shop, png(1))
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "storage_unavailable" and str(storage_root) not in r.text
    assert int(r.headers["retry-after"]) > 0
    assert count_jobs(api_settings) == 0 and queued_messages(api_settings) == 0
    assert [p.name for p in storage_root.rglob("*") if p.is_file()] == ["p.png"]

    def failing_open(self, path, mode="rb", **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(LocalFileSystem, "_open", failing_open)
    r = client.post("/v1/images", headers=shop.auth, data={"source_uri": source})
    assert (r.status_code, r.json()["error"]["code"]) == (503, "storage_unavailable")
    assert count_jobs(api_settings) == 0
