"""Prometheus metrics after a few real jobs: the API's /metrics (jobs table and broker) and a
prefork worker's metrics port (what its child measured)."""

from __future__ import annotations

import socket

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from clearmark.workers import api
from clearmark.workers.db import JobMetrics, session_scope
from clearmark.workers.submit import submit_files, submit_sources
from tests.services import all_done, product_photo, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, ((label, value), ...)): value} from Prometheus text format."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_api_and_worker_metrics(service, workers, tmp_path, monkeypatch):
    for i in range(4):
        product_photo(i, size=(256, 192)).save(tmp_path / f"p{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    port = free_port()
    monkeypatch.setenv("CLEARMARK_METRICS_PORT", str(port))  # the worker subprocess's env
    # Two prefork children: the one port must merge what both measured.
    workers(service, "m", "-Q", service.queue_uploads, "-c", "2")  # bulk queue left waiting
    uploads = [j for j, _ in submit_files([tmp_path / "p0.png", tmp_path / "p1.png", tmp_path / "bad.png"])]
    list(submit_sources([tmp_path / "p2.png", tmp_path / "p3.png"], bulk=True))
    jobs = wait_for(lambda: all_done(service.database_url, uploads), 180, "the uploads")
    cleaned = [j for j in jobs.values() if j.status != "failed"]
    assert len(cleaned) == 2

    def worker_metrics():
        try:
            got = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        except httpx.HTTPError:
            return None
        done = sum(v for (name, _), v in got.items() if name == "clearmark_worker_jobs_total")
        return got if done == 3 else None

    got = wait_for(worker_metrics, 60, "the worker's counters", interval=0.5)
    assert got[("clearmark_worker_jobs_total", (("status", "failed"),))] == 1
    # Every stage, the gate and the residual check included, as the jobs' metrics hold it.
    for stage in ("decode", "detect", "remove", "gate", "encode", "residual", "total"):
        assert got[("clearmark_stage_seconds_count", (("stage", stage),))] == 2, stage
        with session_scope(service.database_url) as session:
            ms = session.scalar(select(func.sum(getattr(JobMetrics, f"ms_{stage}"))))
        assert ms > 0, stage
        assert got[("clearmark_stage_seconds_sum", (("stage", stage),))] == pytest.approx(ms / 1000, rel=1e-6)
    backend = [
        labels for (name, labels), v in got.items() if name == "clearmark_worker_backend_info" and v == 1
    ]
    assert [dict(b)["pipeline_version"] for b in backend] == [cleaned[0].pipeline_version]

    text = TestClient(api.app).get("/metrics")
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    state = samples(text.text)
    jobs_by = {dict(labels)["status"]: v for (name, labels), v in state.items() if name == "clearmark_jobs"}
    assert jobs_by["queued"] == 2 and jobs_by["failed"] == 1 and jobs_by["running"] == 0
    assert jobs_by["succeeded"] + jobs_by["no_watermark"] + jobs_by["needs_review"] == 2
    assert state[("clearmark_images_per_second", ())] == pytest.approx(3 / 60)
    assert state[("clearmark_queue_depth", (("queue", service.queue_bulk),))] == 2
    assert state[("clearmark_queue_depth", (("queue", service.queue_uploads),))] == 0
