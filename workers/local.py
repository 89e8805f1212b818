"""In-process execution for `clearmark clean`: the same jobs and pipeline as the workers,
run here with a progress bar, on SQLite by default."""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from sqlalchemy import select
from tqdm import tqdm

from workers import migrate
from workers.db import METRIC_FIELDS, Job, JobMetrics, session_scope
from workers.errors import TransientError
from workers.jobs import create_batch, create_job, ensure_tenant, process_job
from workers.settings import Settings, get_settings, set_settings

log = logging.getLogger(__name__)
STAGES = ("decode", "detect", "remove", "encode", "total")


@dataclass
class Summary:
    batch_id: str
    seconds: float
    counts: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    mean_ms: dict[str, float] = field(default_factory=dict)

    def render(self) -> str:
        total = sum(self.counts.values())
        lines = [f"batch {self.batch_id}: {total} images in {self.seconds:.1f} s",
                 f"  cleaned       {self.counts.get('succeeded', 0)}",
                 f"  needs review  {self.counts.get('needs_review', 0)}",
                 f"  no watermark  {self.counts.get('no_watermark', 0)}",
                 f"  failed        {self.counts.get('failed', 0)}"]
        if self.mean_ms:
            stages = ", ".join(f"{s} {self.mean_ms[s]:.0f}" for s in STAGES)
            lines.append(f"  mean ms per image: {stages}")
        for source, code, message in self.failures:
            lines.append(f"  FAILED {source}: {code}: {message}")
        return "\n".join(lines)


def _run_with_retries(job_id: str, engines, settings: Settings) -> None:
    for attempt in range(settings.max_attempts):
        try:
            process_job(job_id, engines, settings)
            return
        except TransientError as exc:
            log.warning("job %s: transient error (%s); retrying", job_id, exc)
            time.sleep(min(2 ** attempt, 10))


_worker_engines = None


def _init_worker(settings: Settings, threads: int) -> None:
    global _worker_engines
    import torch

    from workers.pipeline import Engines

    torch.set_num_threads(threads)
    set_settings(settings)
    _worker_engines = Engines.load(settings)


def _run_in_worker(job_id: str) -> str:
    _run_with_retries(job_id, _worker_engines, get_settings())
    return job_id


def _create_jobs(settings: Settings, images: list[tuple[Path, Path]], out_dir: Path,
                 masks_dir: Path | None) -> tuple[str, list[str]]:
    with session_scope(settings.database_url) as session:
        tenant = ensure_tenant(session)
        batch = create_batch(session, tenant, "clean", description=f"clean -> {out_dir}",
                             total=len(images))
        job_ids = []
        for path, rel in images:
            mask_uri = (masks_dir / rel).with_suffix(".png").resolve().as_uri() if masks_dir else None
            job, _ = create_job(session, tenant, path.resolve().as_uri(), batch=batch,
                                result_uri=(out_dir / rel).resolve().as_uri(), mask_uri=mask_uri)
            job_ids.append(job.id)
        return batch.id, job_ids


def _summarise(settings: Settings, batch_id: str, seconds: float) -> Summary:
    summary = Summary(batch_id, seconds)
    with session_scope(settings.database_url) as session:
        jobs = session.scalars(select(Job).where(Job.batch_id == batch_id)).all()
        metrics = session.scalars(select(JobMetrics).join(Job).where(Job.batch_id == batch_id)).all()
        for job in jobs:
            summary.counts[job.status] += 1
            if job.status == "failed":
                summary.failures.append((job.source_uri, job.error_code or "?",
                                         job.error_message or ""))
        if metrics:
            summary.mean_ms = {s: sum(getattr(m, f"ms_{s}") for m in metrics) / len(metrics)
                               for s in STAGES if f"ms_{s}" in METRIC_FIELDS}
    return summary


def clean_folder(images: list[tuple[Path, Path]], out_dir: Path, masks_dir: Path | None,
                 workers: int = 1) -> Summary:
    """Create a batch of jobs for `images` and run them here; returns the summary."""
    settings = get_settings()
    migrate.upgrade(settings.database_url)
    batch_id, job_ids = _create_jobs(settings, images, out_dir, masks_dir)
    started = time.perf_counter()
    progress = tqdm(total=len(job_ids), unit="img", desc="cleaning")
    if workers == 1:
        from workers.pipeline import Engines

        engines = Engines.load(settings)
        for job_id in job_ids:
            _run_with_retries(job_id, engines, settings)
            progress.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                 initializer=_init_worker, initargs=(settings, threads)) as pool:
            for _ in pool.map(_run_in_worker, job_ids):
                progress.update()
    progress.close()
    return _summarise(settings, batch_id, time.perf_counter() - started)
