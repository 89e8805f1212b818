"""Jobs on S3-compatible storage (s3fs), against a local S3 server (moto) on 127.0.0.1."""

from __future__ import annotations

import io

import fsspec
import pytest
from PIL import Image

from clearmark.settings import set_settings
from clearmark.workers.attempts import process_job
from clearmark.workers.db import Job, session_scope
from clearmark.workers.jobs import create_job, ensure_tenant
from clearmark.workers.storage import InvalidSourceUri, Storage, read_uri, tenant_source_uri
from tests.test_pipeline import GreyRemover, MagentaDetector, fake_engines, marked


@pytest.fixture
def s3_bucket(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    # compose.yaml sets FSSPEC_S3_ENDPOINT_URL for MinIO; fsspec reads that variable into
    # fsspec.config.conf at import, which has happened already in this process.
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": f"http://{host}:{port}"})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # moto keeps buckets in process-wide state, so the bucket may exist from a previous test.
    fsspec.filesystem("s3", skip_instance_cache=True).makedirs("clearmark", exist_ok=True)
    yield "s3://clearmark"
    server.stop()


def test_job_reads_and_writes_s3(settings, s3_bucket):
    storage = Storage(s3_bucket)
    buf = io.BytesIO()
    Image.fromarray(marked()).save(buf, "PNG")
    local = settings.replace(storage_uri=s3_bucket)
    set_settings(local)
    with session_scope(local.database_url) as session:
        tenant = ensure_tenant(session)
        source = storage.put(f"sources/{tenant.id}/photo.png", buf.getvalue())  # the tenant's own
        job, _ = create_job(session, tenant, source)
        job_id = job.id
    assert process_job(job_id, fake_engines(MagentaDetector(), GreyRemover()), local) == "succeeded"
    with session_scope(local.database_url) as session:
        job = session.get(Job, job_id)
        assert job.result_uri == f"{s3_bucket}/results/{job_id}-1.png"  # attempt 1's key
        result = Image.open(io.BytesIO(read_uri(job.result_uri)))
        assert result.size == Image.open(buf).size
        assert Image.open(io.BytesIO(read_uri(job.mask_uri))).mode == "L"


def test_a_tenant_cannot_name_another_tenants_object_on_s3(settings, s3_bucket):
    set_settings(settings.replace(storage_uri=s3_bucket))
    Storage(s3_bucket).put("sources/b/x.png", b"theirs")
    for uri in (
        f"{s3_bucket}/sources/b/x.png",
        f"{s3_bucket}/sources/a/%2e%2e/b/x.png",
        f"{s3_bucket}/sources/a/..%2fb/x.png",
        f"{s3_bucket}/sources/a/../b/x.png",
    ):
        with pytest.raises(InvalidSourceUri):
            tenant_source_uri(uri, "a")
    assert tenant_source_uri(f"{s3_bucket}/sources/a/y.png", "a") == f"{s3_bucket}/sources/a/y.png"
