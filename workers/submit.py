"""Submitting files as jobs on the broker (`clearmark submit`)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

from workers.db import session_scope
from workers.jobs import create_batch, create_job, ensure_tenant
from workers.settings import get_settings
from workers.storage import get_storage


def submit_files(paths: list[Path], tenant: str = "local", bulk: bool = False
                 ) -> Iterator[tuple[str, Path]]:
    """Copy each file into storage, create its job and enqueue it. The idempotency key is
    the file's sha256, so resubmitting a file returns its existing job."""
    from workers.tasks import enqueue

    settings = get_settings()
    storage = get_storage()
    queue = settings.queue_bulk if bulk else settings.queue_uploads
    with session_scope(settings.database_url) as session:
        owner = ensure_tenant(session, tenant)
        batch = create_batch(session, owner, "bulk" if bulk else "submit", total=len(paths))
        created = []
        for path in paths:
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            source_uri = storage.put(f"sources/{owner.id}/{digest}{path.suffix.lower()}", data)
            job, is_new = create_job(session, owner, source_uri, batch=batch,
                                     idempotency_key=digest, source_sha256=digest)
            created.append((job.id, path, is_new))
    # Enqueue only after the rows are committed, so a worker always finds its job.
    for job_id, path, is_new in created:
        if is_new:
            enqueue(job_id, queue)
        yield job_id, path
