"""Catalogue groups: a tenant's uploads that name one `group` (the API's form field) carry
one mark at one place, so a worker learns that mark as a template from them.

When a grouped job finishes, its worker calls `learn`. Once the group has
CLEARMARK_TEMPLATE_MIN_GROUP finished uploads (failed ones aside), the mark is estimated
from the newest MAX_PHOTOS of them (`pipeline.catalogue.estimate`). Learned, it becomes a
template of the tenant (`workers.templates`: every later upload of the tenant is matched
against it) and the group's jobs that went to `needs_review` or found `no_watermark` are
queued again as a reprocess batch on the bulk queue, which cleans them with it. Refused,
the reason goes on the group's row and, as a `catalogue` event, on each job whose photo was
tried. Either way the group is tried again at twice the uploads, up to MAX_PHOTOS: the
estimate improves with K (README, "Catalogue marks"), so a template learned from 4 is
replaced by the one from 8, then 16.

One try at a time per group: a worker claims the try on the group's locked row
(`tried_with`), then estimates without holding it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clearmark.errors import BadInput
from clearmark.pipeline import catalogue
from clearmark.pipeline.imaging import decode_image
from clearmark.settings import Settings
from clearmark.workers import reprocess, templates
from clearmark.workers.db import WITH_RESULT, CatalogueGroup, Job, JobEvent, JobStatus, Tenant, session_scope
from clearmark.workers.storage import job_source_uri, read_uri

log = logging.getLogger(__name__)
MAX_PHOTOS = 16  # photos an estimate reads at most (K = 16 is where the dev numbers stop growing)
EVENT = "catalogue"
REQUEUED = (JobStatus.needs_review.value, JobStatus.no_watermark.value)  # not cleaned: again, with it


@dataclass
class Learned:
    template_id: str | None  # None: refused
    reason: str | None  # why it was refused
    photos: int  # the photos tried
    batch_id: str | None = None  # the reprocess batch of the group's jobs queued again
    requeued: int = 0


def learn(settings: Settings, tenant_id: str, name: str) -> Learned | None:
    """Try to learn the group's template (see the module docstring); None when the group
    is not due a try."""
    tried = _claim_try(settings, tenant_id, name)
    if tried is None:
        return None
    ids, photos = read_photos(settings, tenant_id, name, tried)
    try:
        t = catalogue.estimate(photos)
    except catalogue.RejectedGroup as exc:
        with session_scope(settings.database_url) as session:
            _group(session, tenant_id, name).reason = str(exc)
            session.add_all(
                JobEvent(job_id=j, kind=EVENT, detail={"group": name, "refused": str(exc)}) for j in ids
            )
        log.info("group %s: no template from %d photos: %s", name, len(ids), exc)
        return Learned(None, str(exc), len(ids))
    used = [job_id for job_id, ok in zip(ids, t.agreeing) if ok]
    with session_scope(settings.database_url) as session:
        tenant = session.get_one(Tenant, tenant_id)
        row = templates.save(session, tenant.name, t, used)
        group = _group(session, tenant_id, name)
        replaced, group.template_id, group.reason = group.template_id, row.id, None
        if replaced is not None:
            templates.delete(session, replaced)
        session.add_all(
            JobEvent(job_id=j, kind=EVENT, detail={"group": name, "template": row.id, "used": j in used})
            for j in ids
        )
        template_id, tenant_name = row.id, tenant.name
    batch_id = reprocess.start(
        reprocess.Selection(tenant=tenant_name, statuses=REQUEUED, group=name), settings
    )
    requeued = sum(reprocess.run(batch_id, settings=settings))
    log.info("group %s: template %s from %d photos; %d jobs again", name, template_id, len(used), requeued)
    return Learned(template_id, None, len(ids), batch_id, requeued)


def read_photos(
    settings: Settings, tenant_id: str, name: str, jobs: list[tuple[str, str]]
) -> tuple[list[str], list[np.ndarray]]:
    """(job ids, photos) of the (job id, source URI) pairs whose upload still decodes; the
    others are left out with a warning (they finished, so they were usable once)."""
    ids, photos = [], []
    for job_id, uri in jobs:
        try:
            data = read_uri(job_source_uri(uri, tenant_id), max_bytes=settings.max_bytes)
            photos.append(decode_image(data, settings).rgb)
            ids.append(job_id)
        except BadInput as exc:
            log.warning("group %s: job %s's photo is left out: %s", name, job_id, exc.message)
    return ids, photos


def _claim_try(settings: Settings, tenant_id: str, name: str) -> list[tuple[str, str]] | None:
    """(job id, source URI) of the newest MAX_PHOTOS finished uploads of the group, when it
    is due a try (the first at CLEARMARK_TEMPLATE_MIN_GROUP, then at twice the uploads of
    the last while that had fewer than MAX_PHOTOS), recording the try."""
    with session_scope(settings.database_url) as session:
        group = _group(session, tenant_id, name)
        grouped = select(Job.id, Job.source_uri).where(
            Job.tenant_id == tenant_id,
            Job.catalogue_group == name,
            Job.status.in_([s.value for s in WITH_RESULT]),
        )
        count = session.scalar(select(func.count()).select_from(grouped.subquery())) or 0
        if group.tried_with >= MAX_PHOTOS or count < max(settings.template_min_group, 2 * group.tried_with):
            return None
        group.tried_with = count
        rows = session.execute(grouped.order_by(Job.created_at.desc(), Job.id).limit(MAX_PHOTOS)).all()
        return [(job_id, uri) for job_id, uri in rows]


def _group(session: Session, tenant_id: str, name: str) -> CatalogueGroup:
    """The group's row, locked (made on its first use)."""
    query = select(CatalogueGroup).where(CatalogueGroup.tenant_id == tenant_id, CatalogueGroup.name == name)
    group = session.scalar(query.with_for_update())
    if group is None:
        try:
            with session.begin_nested():
                group = CatalogueGroup(tenant_id=tenant_id, name=name)
                session.add(group)
        except IntegrityError:  # another worker made it meanwhile
            group = session.scalars(query.with_for_update()).one()
    return group
