"""Submitting files as jobs on the broker (`clearmark submit`, `clearmark bulk`)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import fsspec

from clearmark.errors import ServiceUnavailable
from clearmark.settings import get_settings
from clearmark.workers import broker
from clearmark.workers.db import Batch, Priority, session_scope
from clearmark.workers.jobs import create_batch, create_job, ensure_tenant
from clearmark.workers.storage import get_storage, job_source_uri
from clearmark.workers.transient import DATABASE_ERRORS


def submit_sources(
    sources: list[Path | str], tenant: str = "local", bulk: bool = False, chunk: int = 500
) -> Iterator[tuple[str, Path | str, bool, str]]:
    """Create a job per source as one batch and enqueue it; yields (job id, source, created,
    batch id).

    A local file is copied into storage and keyed by its sha256; a URI (a bucket object)
    is used in place and keyed by the URI. Either way, submitting the same source again
    for the same tenant gives its existing job (not sent again: a queued job whose task was
    lost is the reaper's, and a re-run of a large import must not double the queue). Rows
    are committed a chunk at a time, and each chunk is enqueued only after its commit, so a
    worker always finds its job; a crash or a broker outage in between leaves queued jobs
    without a task, which the reaper sends. When every source was already known, the batch
    (empty) is removed at the end. Raises ServiceUnavailable (broker, database or storage
    down) after yielding what was sent."""
    try:
        yield from _submit(sources, tenant, bulk, chunk)
    except DATABASE_ERRORS as exc:
        raise ServiceUnavailable("database", f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def _submit(
    sources: list[Path | str], tenant: str, bulk: bool, chunk: int
) -> Iterator[tuple[str, Path | str, bool, str]]:
    settings = get_settings()
    storage = get_storage()
    with session_scope(settings.database_url) as session:
        owner = ensure_tenant(session, tenant)
    sources = [s if isinstance(s, Path) else job_source_uri(s, owner.id) for s in sources]
    priority = (Priority.low if bulk else Priority.normal).value
    queue = broker.queue_for(priority, settings)
    with session_scope(settings.database_url) as session:
        batch = create_batch(session, owner, "bulk" if bulk else "submit", total=len(sources))
    any_new = False
    for start in range(0, len(sources), chunk):
        created = []
        with session_scope(settings.database_url) as session:
            for source in sources[start : start + chunk]:
                if isinstance(source, Path):
                    data = source.read_bytes()
                    digest = hashlib.sha256(data).hexdigest()
                    uri = storage.put(f"sources/{owner.id}/{digest}{source.suffix.lower()}", data)
                    key = digest
                else:
                    uri, key, digest = source, f"uri:{source}", None
                job, is_new = create_job(
                    session,
                    owner,
                    uri,
                    batch=batch,
                    idempotency_key=key,
                    source_sha256=digest,
                    priority=priority,
                    source_name=str(source),
                )
                created.append((job.id, source, is_new))
        for i, (job_id, source, is_new) in enumerate(created):
            if is_new:
                try:
                    broker.enqueue(job_id, queue)  # looked up here: tests replace it
                except ServiceUnavailable as exc:
                    unsent = sum(new for _, _, new in created[i:])
                    raise ServiceUnavailable(
                        exc.service,
                        f"{exc.detail} "
                        f"({unsent} job(s) recorded but not sent; the "
                        "reaper sends them when it is back)",
                    ) from None
            any_new = any_new or is_new
            yield job_id, source, is_new, batch.id
    if not any_new:
        with session_scope(settings.database_url) as session:
            session.delete(session.get(Batch, batch.id))


def submit_files(paths: list[Path], tenant: str = "local", bulk: bool = False) -> Iterator[tuple[str, Path]]:
    """Copy each file into storage, create its job and enqueue it (one batch)."""
    for job_id, source, _, _ in submit_sources(list(paths), tenant=tenant, bulk=bulk):
        yield job_id, Path(source)  # one of `paths` (submit_sources yields what it was given)


def list_uri(uri: str, extensions: Iterable[str]) -> list[str]:
    """URIs of the objects under a bucket prefix (any fsspec URI) with these extensions."""
    fs, root = fsspec.core.url_to_fs(uri)
    extensions = {e.lower() for e in extensions}
    return [fs.unstrip_protocol(p) for p in sorted(fs.find(root)) if Path(p).suffix.lower() in extensions]
