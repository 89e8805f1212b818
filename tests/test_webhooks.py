"""Webhook signing (ours and Standard Webhooks), the callback URL guard, delivery to the
vetted address only (a rebinding DNS, TLS to a pinned IP), and delivery through a real
webhook worker (compose's command) to a receiver that is down."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from clearmark.settings import Settings, set_settings
from clearmark.workers import migrate, webhooks
from clearmark.workers.db import METRIC_FIELDS, Job, JobEvent, JobStatus, Tenant, session_scope
from clearmark.workers.jobs import claim_job, create_job, ensure_tenant, finish_job
from clearmark.workers.webhooks import (
    UnsafeCallback,
    check_callback_url,
    deliver,
    deliver_webhook,
    notify_finished,
    sign,
    signed_headers,
    verify_signature,
)
from tests.services import statuses, wait_for
from tests.test_api import (  # noqa: F401 - fixtures used here
    Receiver,
    _webhook_events,
    api_settings,
    free_port,
    receiver,
)
from tests.test_compose import compose_command


def test_signature_covers_timestamp_and_body():
    header = sign("s3cret", 1_700_000_000, b'{"a":1}')
    assert verify_signature("s3cret", header, b'{"a":1}', now=1_700_000_100)
    assert not verify_signature("s3cret", header, b'{"a":2}', now=1_700_000_100)
    assert not verify_signature("other", header, b'{"a":1}', now=1_700_000_100)
    assert not verify_signature("s3cret", header, b'{"a":1}', now=1_700_001_000)  # too old
    forged = header.replace("t=1700000000", "t=1700000900")
    assert not verify_signature("s3cret", forged, b'{"a":1}', now=1_700_000_900)
    assert not verify_signature("s3cret", "garbage", b'{"a":1}')


def test_callback_guard():
    closed = Settings(webhook_allow_hosts=())
    for url in (
        "http://127.0.0.1/",
        "http://localhost:8080/x",
        "http://10.0.0.8/",
        "http://[::1]/",
        "http://169.254.169.254/",
        "http://[::ffff:192.168.1.1]/",
        "http://0.0.0.0/",
        "http://100.64.0.1/",
        "file:///etc/passwd",
        "http:///nohost",
        # IPv4 inside IPv6: mapped, IPv4-compatible, NAT64, 6to4
        "http://[::ffff:127.0.0.1]/",
        "http://[::127.0.0.1]/",
        "http://[::a00:1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[64:ff9b::c0a8:101]/",
        "http://[2002:7f00:1::1]/",
        "http://[2002:a9fe:a9fe::]/",
        "http://[2002:a00:1::5]/",
        # local-use NAT64 (whatever it holds), IPv4-translated (SIIT), site-local, multicast
        "http://[64:ff9b:1::7f00:1]/",
        "http://[64:ff9b:1:a00:1::]/",
        "http://[64:ff9b:1::5db8:d70e]/",
        "http://[::ffff:0:7f00:1]/",
        "http://[::ffff:0:c0a8:101]/",
        "http://[fec0::1]/",
        "http://224.0.0.1/",
        "http://239.255.255.250/",
        "http://[ff0e::1]/",
        "http://[::ffff:224.0.0.1]/",
        "http://[64:ff9b::e000:1]/",
    ):
        with pytest.raises(UnsafeCallback):
            check_callback_url(url, closed)
    for url in (
        "https://93.184.215.14/hook",
        "http://[64:ff9b::5db8:d70e]/",
        "http://[2002:5db8:d70e::1]/",
        "http://[::ffff:93.184.215.14]/",
        "http://[::ffff:0:5db8:d70e]/",
    ):
        assert check_callback_url(url, closed).address, url  # public inside too
    opened = Settings(webhook_allow_hosts=("10.0.0.0/8", "receiver"))
    assert check_callback_url("http://10.1.2.3:8080/hook", opened)
    assert check_callback_url("http://[::ffff:10.1.2.3]/hook", opened)
    assert check_callback_url("http://receiver/hook", opened)  # named: not even resolved
    with pytest.raises(UnsafeCallback):
        check_callback_url("http://192.168.0.1/", opened)


def test_callback_urls_must_be_short_and_free_of_control_characters():
    closed = Settings(webhook_allow_hosts=())
    base = "https://93.184.215.14/"
    assert check_callback_url(base + "a" * (2048 - len(base)), closed)
    for url in (
        base + "a" * (2049 - len(base)),
        base + "a" * 70_000,
        base + "a" * 900_000,
        base + "hook\x01",
        base + "ho\nok",
        base + "hook\x7f",
        base + "hook\x85",
        "https://[93.184.215.14/",  # the sending client cannot parse it
    ):
        with pytest.raises(UnsafeCallback):
            check_callback_url(url, closed)


def finished_job(settings: Settings, callback_url: str | None) -> str:
    """A job that a worker has finished (without running the pipeline)."""
    with session_scope(settings.database_url) as session:
        job, _ = create_job(
            session, ensure_tenant(session, "shop"), "file:///in.png", callback_url=callback_url
        )
    claim = claim_job(settings.database_url, job.id, settings.max_attempts)
    finish_job(
        settings.database_url,
        claim,
        JobStatus.succeeded,
        result_uri="file:///out.png",
        mask_uri="file:///mask.png",
        metrics={name: 1 for name in METRIC_FIELDS},
        pipeline_version="test",
    )
    return job.id


@pytest.mark.integration
@pytest.mark.slow
def test_receiver_down_retries_with_backoff_then_fails(api_settings, workers):
    down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    job_id = finished_job(api_settings, down)
    command = compose_command("worker-webhooks", {"-Q": api_settings.queue_webhooks})
    workers(api_settings, "hooks", *command[1:])
    notify_finished(job_id, api_settings)
    events = wait_for(
        lambda: (e := _webhook_events(api_settings, job_id)) and len(e) >= 3 and e,
        60,
        "three delivery attempts",
        interval=0.1,
    )
    assert [e["outcome"] for e in events] == ["retry", "retry", "failed"]
    assert [e["attempt"] for e in events] == [1, 2, 3]
    assert all("ConnectError" in e["error"] for e in events)
    with session_scope(api_settings.database_url) as session:
        times = [
            e.created_at
            for e in session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.kind == "webhook")
                .order_by(JobEvent.id)
            )
        ]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6, gaps  # backoff 0.3 s, doubling
    assert statuses(api_settings.database_url, [job_id])[job_id].status == "succeeded"


@pytest.mark.integration
def test_delivery_is_signed_and_refuses_private_urls(api_settings, receiver):
    job_id = finished_job(api_settings, receiver.url)
    assert deliver(job_id, 1, api_settings) == "delivered"
    headers, body = receiver.requests[0]
    assert headers["Clearmark-Event-Id"].startswith(job_id)
    with session_scope(api_settings.database_url) as session:
        secret = session.scalar(select(Tenant.webhook_secret).where(Tenant.name == "shop"))
    assert verify_signature(secret, headers["Clearmark-Signature"], body)
    assert not verify_signature("", headers["Clearmark-Signature"], body)
    standard = {k.lower(): v for k, v in headers.items() if k.lower().startswith("webhook-")}
    assert standard["webhook-id"] == headers["Clearmark-Event-Id"] == json.loads(body)["id"]
    assert Webhook(secret).verify(body, standard)["job"]["id"] == job_id  # the library's check
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", standard)
    receiver.status = 500
    assert deliver(job_id, 2, api_settings) == "retry"
    assert deliver(job_id, 3, api_settings) == "failed"  # the last attempt
    closed = api_settings.replace(webhook_allow_hosts=())
    assert deliver(job_id, 4, closed) == "refused" and len(receiver.requests) == 3


def test_no_callback_needs_no_broker(tmp_path, monkeypatch):
    """`clearmark clean`: nothing to notify, so the (absent) broker is never touched; a
    broker that is down only costs a logged event, never the job."""
    from kombu.exceptions import OperationalError

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to the broker. Connection refused.")

    monkeypatch.setattr(webhooks.deliver_webhook, "apply_async", broker_down)
    s = Settings(data_dir=tmp_path)
    migrate.upgrade(s.database_url)
    quiet = finished_job(s, None)
    notify_finished(quiet, s)
    assert _webhook_events(s, quiet) == []
    loud = finished_job(s, "https://93.184.215.14/hook")
    notify_finished(loud, s)
    assert [e["outcome"] for e in _webhook_events(s, loud)] == ["not_enqueued"]
    assert statuses(s.database_url, [loud])[loud].status == "succeeded"


def test_a_callback_url_removed_before_delivery_settles_the_webhook(tmp_path):
    """The tenant removed its webhook URL while a delivery was due: the delivery ends as
    `dropped` (an event says so) and the job's webhook is no longer due, so the reaper
    does not send it again and again."""
    s = Settings(data_dir=tmp_path)
    migrate.upgrade(s.database_url)
    with session_scope(s.database_url) as session:
        ensure_tenant(session, "shop").webhook_url = "https://93.184.215.14/hook"
    job_id = finished_job(s, None)
    with session_scope(s.database_url) as session:
        assert session.get(Job, job_id).webhook_pending
        session.scalar(select(Tenant).where(Tenant.name == "shop")).webhook_url = None
    set_settings(s)
    try:
        assert deliver_webhook.apply(args=[job_id]).get() == "dropped"
    finally:
        set_settings(None)
    assert [e["outcome"] for e in _webhook_events(s, job_id)] == ["dropped"]
    with session_scope(s.database_url) as session:
        assert not session.get(Job, job_id).webhook_pending


def test_any_delivery_error_is_a_recorded_attempt_that_counts(tmp_path, monkeypatch):
    """Whatever the HTTP client raises, the attempt is recorded and counts toward the
    limit, so the webhook settles as failed instead of being sent again for ever; a URL
    stored before the URL checks existed is refused, once."""
    s = Settings(data_dir=tmp_path, webhook_max_attempts=3, webhook_backoff_s=0.01)
    migrate.upgrade(s.database_url)
    job_id = finished_job(s, "https://93.184.215.14/hook")
    crashes = []

    def crash(*args, **kwargs):
        crashes.append(1)
        raise httpx.InvalidURL("Invalid non-printable ASCII character in URL")

    monkeypatch.setattr(webhooks, "post_pinned", crash)
    set_settings(s)
    try:
        assert deliver_webhook.apply(args=[job_id]).get() == "failed"
        events = _webhook_events(s, job_id)
        assert [e["outcome"] for e in events] == ["retry", "retry", "failed"] and len(crashes) == 3
        assert all(e["error"].startswith("InvalidURL: Invalid non-printable") for e in events)
        with session_scope(s.database_url) as session:
            assert not session.get(Job, job_id).webhook_pending
        stored = finished_job(s, "https://93.184.215.14/" + "a" * 900_000)  # no check here
        assert deliver_webhook.apply(args=[stored]).get() == "refused"
    finally:
        set_settings(None)
    (refused,) = _webhook_events(s, stored)
    assert "longer than 2048" in refused["error"] and len(refused["url"]) == 2048
    assert len(crashes) == 3


def test_legacy_secrets_sign_standard_webhooks_with_their_bytes():
    """Secrets from before `whsec_`: the Standard Webhooks key is the secret's own bytes."""
    headers = signed_headers("plain-old-secret", "evt_1", b'{"a":1}', int(time.time()))
    standard = {k: v for k, v in headers.items() if k.startswith("webhook-")}
    assert Webhook(b"plain-old-secret").verify(b'{"a":1}', standard) == {"a": 1}
    assert verify_signature("plain-old-secret", headers["Clearmark-Signature"], b'{"a":1}')


@pytest.mark.integration
def test_delivery_connects_to_the_vetted_address_despite_dns_rebinding(api_settings, monkeypatch):
    """The host resolves to an allow-listed address once, then (a rebinding DNS) to another
    one: the signed POST still goes to the vetted address, and nothing resolves it twice."""
    rebound = Receiver("127.0.0.1")
    port = rebound.server_address[1]
    vetted = Receiver("127.0.0.2", port)  # same port, another loopback address
    for server in (vetted, rebound):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = api_settings.replace(webhook_allow_hosts=("127.0.0.2/32",))
    job_id = finished_job(settings, f"http://shop.rebind.test:{port}/hooks")
    lookups = []
    real_getaddrinfo = socket.getaddrinfo

    def rebinding_dns(host, *args, **kwargs):
        if host != "shop.rebind.test":
            return real_getaddrinfo(host, *args, **kwargs)
        lookups.append(host)
        answer = "127.0.0.2" if len(lookups) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answer, args[0] if args else 80))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_dns)
    try:
        assert deliver(job_id, 1, settings) == "delivered"
    finally:
        for server in (vetted, rebound):
            server.shutdown()
            server.server_close()
    assert lookups == ["shop.rebind.test"] and rebound.requests == []
    headers, _ = vetted.requests[0]
    assert headers["Host"] == f"shop.rebind.test:{port}"
    assert _webhook_events(settings, job_id)[0]["address"] == "127.0.0.2"


def test_https_to_a_pinned_address_checks_the_certificate_for_the_url_host(tmp_path, monkeypatch):
    """Connecting to the IP keeps TLS honest: SNI and the certificate check use the host of
    the URL (a certificate for another name is refused)."""
    import ssl

    import certifi

    from clearmark.workers.webhooks import Callback, post_pinned

    cert, key = self_signed(tmp_path, "hooks.shop.test")
    server = Receiver()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(certifi, "where", lambda: str(cert))  # trust the test certificate
    port = server.server_address[1]
    try:
        answer = post_pinned(Callback(f"https://hooks.shop.test:{port}/h", "127.0.0.1"), b"{}", {}, 10)
        assert answer.status_code == 200
        assert server.requests[0][0]["Host"] == f"hooks.shop.test:{port}"
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            post_pinned(Callback(f"https://other.shop.test:{port}/h", "127.0.0.1"), b"{}", {}, 10)
    finally:
        server.shutdown()
        server.server_close()


def self_signed(folder, host: str):
    """A self-signed certificate for `host` and its key, as PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path
