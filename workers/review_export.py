"""`clearmark review export`: the photos people reviewed and kept (accepted, or "there is no
mark"), each with its upload, accepted mask and result, as the data set `models.reviewed`
describes. A rejected photo has no accepted result and is left out, as is one whose job
changed after its decision (retried or reprocessed: its files are another run's).
"""

from __future__ import annotations

import csv
import io
import mimetypes
from datetime import datetime
from pathlib import Path

from PIL import Image, ImageOps
from sqlalchemy import select

from clearmark.models.reviewed import FIELDS, MANIFEST
from clearmark.settings import Settings, get_settings
from clearmark.workers.db import Job, JobMetrics, session_scope
from clearmark.workers.review_history import Review, reviews
from clearmark.workers.storage import job_source_uri, read_uri

KEPT = ("accept", "no_mark")


def _extension(uri: str, data: bytes) -> str:
    suffix = Path(uri.split("?", 1)[0]).suffix.lower()
    if suffix and mimetypes.guess_type("x" + suffix)[0]:
        return suffix
    return "." + (Image.open(io.BytesIO(data)).format or "bin").lower().replace("jpeg", "jpg")


def _upright_mask(data: bytes) -> bytes:
    """The job's mask as shown (it is stored like its result, EXIF orientation and all)."""
    buf = io.BytesIO()
    ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L").save(buf, "PNG")
    return buf.getvalue()


def export_reviews(
    out: Path, since: datetime | None = None, tenant: str | None = None, settings: Settings | None = None
) -> int:
    """Write the reviewed photos decided since `since` (of one tenant, or all) under `out`
    with their manifest; returns how many. The latest decision of a job counts."""
    s = settings or get_settings()
    with session_scope(s.database_url) as session:
        latest: dict[str, Review] = {r.job_id: r for r in reviews(session, tenant, since)}
        kept = [r for r in latest.values() if r.decision in KEPT]
        jobs = {
            job.id: (job, m)
            for job, m in session.execute(
                select(Job, JobMetrics)
                .outerjoin(JobMetrics, JobMetrics.job_id == Job.id)
                .where(Job.id.in_([r.job_id for r in kept]))
            )
        }
    out = Path(out)
    for folder in ("uploads", "masks", "results"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    for r in kept:
        job, m = jobs[r.job_id]
        if job.status != r.status or not (job.result_uri and job.mask_uri):
            continue
        source_uri = job_source_uri(job.source_uri, job.tenant_id)
        upload, result = read_uri(source_uri), read_uri(job.result_uri)
        files = {
            "upload": f"uploads/{job.id}{_extension(source_uri, upload)}",
            "mask": f"masks/{job.id}.png",
            "result": f"results/{job.id}{_extension(job.result_uri, result)}",
        }
        (out / files["upload"]).write_bytes(upload)
        (out / files["mask"]).write_bytes(_upright_mask(read_uri(job.mask_uri)))
        (out / files["result"]).write_bytes(result)
        rows.append(
            {
                "job_id": job.id,
                "name": job.display_name,
                "decision": r.decision,
                "status": r.status,
                "masks_painted": r.masks_painted,
                "reviewer": r.reviewer or "",
                "decided_at": r.at.isoformat(),
                "waited_s": "" if r.waited_s is None else f"{r.waited_s:.1f}",
                "review_reason": job.review_reason or "",
                "pipeline_version": job.pipeline_version or "",
                "width": m.width if m else "",
                "height": m.height if m else "",
                **files,
            }
        )
    with (out / MANIFEST).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)
