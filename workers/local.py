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

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session
from tqdm import tqdm

from clearmark.engine_build.base import resolve_device
from clearmark.engine_build.onnx_export import cached_problem, export_onnx, onnx_path
from clearmark.errors import TransientError
from clearmark.models.weights import KINDS
from clearmark.pipeline.process import Engines
from clearmark.pipeline.stages import STAGES
from clearmark.settings import Settings, get_settings, set_settings
from clearmark.workers import migrate
from clearmark.workers.attempts import process_job
from clearmark.workers.db import FINISHED, Job, JobMetrics, JobStatus, session_scope, utcnow
from clearmark.workers.jobs import create_batch, create_job, ensure_tenant, set_status

log = logging.getLogger(__name__)


@dataclass
class Summary:
    batch_id: str
    seconds: float
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # name, code, message
    unfinished: list[tuple[str, str]] = field(default_factory=list)  # name, status
    reviews: list[tuple[str, str]] = field(default_factory=list)  # name, why
    skipped: list[str] = field(default_factory=list)  # not images
    mean_ms: dict[str, float] = field(default_factory=dict)

    def render(self) -> str:
        total = sum(self.counts.values())
        lines = [
            f"batch {self.batch_id}: {total} images in {self.seconds:.1f} s",
            f"  cleaned       {self.counts.get('succeeded', 0)}",
            f"  needs review  {self.counts.get('needs_review', 0)}",
            f"  no watermark  {self.counts.get('no_watermark', 0)}",
            f"  failed        {self.counts.get('failed', 0)}",
        ]
        if self.unfinished:
            lines.append(f"  NOT FINISHED  {len(self.unfinished)}")
        if self.mean_ms:
            stages = " + ".join(f"{s} {self.mean_ms[s]:.0f}" for s in STAGES)
            lines.append(f"  mean ms per image: {stages} = total {self.mean_ms['total']:.0f}")
        for name, code, message in self.failures:
            lines.append(f"  FAILED {name}: {code}: {message}")
        for name, status in self.unfinished:
            lines.append(f"  NOT FINISHED {name}: still {status}")
        for name, why in self.reviews:
            lines.append(f"  REVIEW {name}: {why}")
        if self.skipped:
            lines.append(
                f"  skipped {len(self.skipped)} file(s) that are not images by their "
                f"extension: {', '.join(self.skipped)}"
            )
        return "\n".join(lines)

    @property
    def ok(self) -> bool:
        return not (self.counts.get("failed") or self.unfinished)


def _give_up(db_url: str, job_id: str, attempts: int, error: Exception) -> None:
    """Fail a job whose transient errors outlasted the retries (e.g. an output that cannot
    be written), so that it does not stay queued with nothing left to run it."""
    with session_scope(db_url) as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.queued.value:
            return
        set_status(session, job, JobStatus.failed, error_code="too_many_attempts")
        job.error_code = "too_many_attempts"
        job.error_message = f"gave up after {attempts} attempts: {error}"[:2000]
        job.finished_at = utcnow()


def _run_with_retries(job_id: str, engines: Engines, settings: Settings) -> None:
    for attempt in range(1, settings.max_attempts + 1):
        try:
            process_job(job_id, engines, settings)
            return
        except TransientError as exc:
            if attempt == settings.max_attempts:
                log.warning("job %s: %s; giving up", job_id, exc)
                _give_up(settings.database_url, job_id, attempt, exc)
                return
            log.warning("job %s: transient error (%s); retrying", job_id, exc)
            time.sleep(min(2 ** (attempt - 1), 10))


def prepare_engines(settings: Settings) -> None:
    """Export the ONNX files the engines load, once, with a progress line: the first run
    on a machine spends about a minute here. Done in this process before any worker
    process starts, so they do not race to export the same files."""
    if (
        settings.backend not in ("auto", "onnxruntime", "ort", "onnx")
        or resolve_device(settings.device) != "cpu"
    ):
        return
    missing = [k for k in KINDS if cached_problem(onnx_path(k, "fp32", settings.engine_dir), k) is not None]
    if not missing:
        return
    with tqdm(total=len(missing), desc="preparing engines (first run only)", unit="model") as bar:
        for kind in missing:
            export_onnx(kind, "fp32", settings.engine_dir)
            bar.update()


_worker_engines: Engines | None = None  # per worker process, loaded by _init_worker


def _init_worker(settings: Settings, threads: int) -> None:
    global _worker_engines
    torch.set_num_threads(threads)
    set_settings(settings)
    _worker_engines = Engines.load(settings)


def _run_in_worker(job_id: str) -> str:
    assert _worker_engines is not None  # the pool runs _init_worker first
    _run_with_retries(job_id, _worker_engines, get_settings())
    return job_id


def _create_jobs(
    settings: Settings, images: list[tuple[Path, Path]], out_dir: Path, masks_dir: Path | None
) -> tuple[str, dict[str, Path]]:
    """A batch with a job per image; returns the batch id and each job's relative path."""
    with session_scope(settings.database_url) as session:
        tenant = ensure_tenant(session)
        batch = create_batch(session, tenant, "clean", description=f"clean -> {out_dir}", total=len(images))
        names: dict[str, Path] = {}
        for path, rel in images:
            mask_uri = (masks_dir / rel).with_suffix(".png").resolve().as_uri() if masks_dir else None
            job, _ = create_job(
                session,
                tenant,
                path.resolve().as_uri(),
                batch=batch,
                result_uri=(out_dir / rel).resolve().as_uri(),
                mask_uri=mask_uri,
                source_name=str(path),
            )
            names[job.id] = rel
        return batch.id, names


def _stage_ms(session: Session, job_ids: list[str]) -> dict[str, float]:
    """Mean ms per stage (and total) over the jobs that have metrics."""
    rows = session.scalars(select(JobMetrics).where(JobMetrics.job_id.in_(job_ids))).all()
    if not rows:
        return {}
    return {stage: sum(getattr(r, f"ms_{stage}") for r in rows) / len(rows) for stage in (*STAGES, "total")}


def _summarise(
    settings: Settings, batch_id: str, names: dict[str, Path], seconds: float, skipped: list[str]
) -> Summary:
    summary = Summary(batch_id, seconds, skipped=skipped)
    with session_scope(settings.database_url) as session:
        jobs = session.scalars(select(Job).where(Job.batch_id == batch_id)).all()
        for job in sorted(jobs, key=lambda j: str(names.get(j.id, j.source_uri))):
            name = str(names.get(job.id, job.source_uri))
            if JobStatus(job.status) not in FINISHED:
                summary.unfinished.append((name, job.status))
                continue
            summary.counts[job.status] += 1
            if job.status == "failed":
                summary.failures.append((name, job.error_code or "?", job.error_message or ""))
            if job.status == "needs_review":
                summary.reviews.append((name, job.review_reason or ""))
        summary.mean_ms = _stage_ms(session, [j.id for j in jobs])
    return summary


def clean_folder(
    images: list[tuple[Path, Path]],
    out_dir: Path,
    masks_dir: Path | None,
    workers: int = 1,
    skipped: list[str] | None = None,
) -> Summary:
    """Create a batch of jobs for `images` and run them here; returns the summary
    (`skipped`: files left out as not images, listed in it)."""
    settings = get_settings()
    migrate.upgrade(settings.database_url)
    batch_id, names = _create_jobs(settings, images, out_dir, masks_dir)
    job_ids = list(names)
    prepare_engines(settings)
    started = time.perf_counter()
    progress = tqdm(total=len(job_ids), unit="img", desc="cleaning")
    if workers == 1:
        engines = Engines.load(settings)
        for job_id in job_ids:
            _run_with_retries(job_id, engines, settings)
            progress.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(settings, threads)
        ) as pool:
            for _ in pool.map(_run_in_worker, job_ids):
                progress.update()
    progress.close()
    return _summarise(settings, batch_id, names, time.perf_counter() - started, skipped or [])
