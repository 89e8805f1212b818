"""Batching across jobs (engine_build.batching): each caller gets its own rows back, and a
photo cleaned among others comes out as it does alone."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clearmark.engine_build import load_engine
from clearmark.engine_build.batching import Batcher, InFlight
from clearmark.engine_build.bench import sample_batch
from clearmark.models.evaluate import psnr
from clearmark.pipeline.process import Engines, process_image
from clearmark.settings import get_settings
from clearmark.workers.pipeline_bench import bench_images
from clearmark.workers.submit import submit_files
from tests.services import all_done, product_photo, wait_for


@pytest.fixture(scope="module")
def detector():
    return load_engine("detector", backend="onnxruntime", device="cpu")


def test_each_caller_gets_its_own_rows_from_a_shared_batch(detector):
    shared = InFlight(jobs=6, max_batch=8, wait_ms=2000)
    batcher = Batcher(detector, shared)
    # Six callers: four of one shape (batched together), two of another (a batch of their own).
    inputs = [sample_batch("detector", 1, 64, 96, seed=i) for i in range(4)]
    inputs += [sample_batch("detector", 2, 48, 48, seed=10 + i) for i in range(2)]
    alone = [detector.run(x) for x in inputs]
    with ThreadPoolExecutor(len(inputs)) as pool:
        together = list(pool.map(batcher.run, inputs))
    for x, a, t in zip(inputs, alone, together):
        assert t.shape == a.shape == (len(x), 1, *x.shape[-2:])
        assert np.abs(t - a).max() < 1e-4
    # Every caller was waiting, so nothing waited for the 2 s: two runs, of 4 and 2 calls.
    assert batcher.sizes == {4: 1, 2: 1}
    distinct = [np.abs(together[0] - t).max() for t in together[1:4]]
    assert min(distinct) > 1e-3  # different photos, different outputs: no row went astray


def test_one_job_in_flight_runs_at_once_and_errors_reach_the_caller(detector):
    batcher = Batcher(detector, InFlight(jobs=1, max_batch=8, wait_ms=60_000))
    x = sample_batch("detector", 1, 32, 32, seed=1)
    assert np.array_equal(batcher.run(x), detector.run(x))  # did not wait the minute
    with pytest.raises(ValueError, match="multiples of 16"):
        batcher.run(np.zeros((1, 3, 40, 32), np.float32))
    assert batcher.run(x).shape == (1, 1, 32, 32)  # and it still serves


def test_a_photo_batched_with_others_comes_out_as_it_does_alone():
    base = get_settings().replace(backend="onnxruntime", device="cpu")
    photos = bench_images(4, 384, studio_only=True)  # watermarked studio shots, as JPEG uploads
    plain = Engines.load(base)
    alone = [process_image(data, plain, base) for data in photos]
    settings = base.replace(jobs_in_flight=4, batch_max=8, batch_wait_ms=500)
    engines = Engines.load(settings)
    with ThreadPoolExecutor(4) as pool:
        batched = list(pool.map(lambda data: process_image(data, engines, settings), photos))
    assert isinstance(engines.detector, Batcher) and isinstance(engines.remover, Batcher)
    assert max(engines.detector.sizes) > 1  # the detector did run photos together
    mask = lambda r: np.asarray(Image.open(io.BytesIO(r.mask_png)))  # noqa: E731
    pixels = lambda r: np.asarray(Image.open(io.BytesIO(r.image_bytes)).convert("RGB"))  # noqa: E731
    assert any(mask(a).any() for a in alone)  # something was removed
    for a, b in zip(alone, batched):
        assert b.status == a.status
        assert np.array_equal(mask(b), mask(a))
        assert psnr(pixels(b), pixels(a)) >= 50.0


def test_a_worker_with_jobs_in_flight_runs_them_in_one_process(service, workers, tmp_path, monkeypatch):
    monkeypatch.setenv("CLEARMARK_JOBS_IN_FLIGHT", "3")
    monkeypatch.setenv("CLEARMARK_BATCH_MAX", "4")
    paths = []
    for i in range(4):
        product_photo(i).save(tmp_path / f"p{i}.jpg")
        paths.append(tmp_path / f"p{i}.jpg")
    worker = workers(service)
    submitted = dict(submit_files(paths))
    jobs = wait_for(lambda: all_done(service.database_url, list(submitted)), 240, "all jobs")
    assert all(j.status != "failed" and j.attempts == 1 for j in jobs.values())
    assert worker.alive()
    assert "concurrency: 3 (thread)" in Path(worker.log.name).read_text()
