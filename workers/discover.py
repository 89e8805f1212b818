"""Catalogue marks found by themselves: a tenant's recent uploads that named no `group` and
were not cleaned (`needs_review` or `no_watermark`) are looked through for photos that
share one mark at one place, and those become a group of their own (`found-<w>x<h>` for
photos of one size, `found-<w>:<h>` for one aspect ratio, the mark at the same place
relative to the size).

Candidates are clustered by size, then the rest by aspect ratio; a cluster of at least
CLEARMARK_TEMPLATE_MIN_GROUP photos is tried with `pipeline.catalogue.estimate` on its
newest MAX_PHOTOS. Photos of one size that share no mark (the common case: a catalogue's
photos share a size and a composition, not a mark) are refused by the estimate and left
alone. When a mark is found, the photos that carry it are put in the found group (a
`catalogue` event on each says so) and `workers.groups.learn` takes over as for a group
named on upload: the template is saved and the group's jobs are cleaned again with it.

`clearmark catalogue discover` runs it; a worker runs it for the tenant after every
CLEARMARK_TEMPLATE_DISCOVER_EVERY-th upload without a group that it could not clean.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from math import gcd

from sqlalchemy import func, select

from clearmark.errors import BadInput
from clearmark.pipeline import catalogue
from clearmark.pipeline.imaging import decode_image
from clearmark.settings import Settings
from clearmark.workers import groups
from clearmark.workers.db import Job, JobEvent, JobMetrics, Tenant, session_scope
from clearmark.workers.storage import job_source_uri, read_uri

log = logging.getLogger(__name__)
RECENT = 200  # uploads looked through, newest first
PREFIX = "found-"


@dataclass
class Found:
    group: str  # the found group's name (tried, whether or not a mark was found)
    photos: int  # the photos the estimate read
    learned: groups.Learned | None = None  # the group's template, when a mark was found
    reason: str | None = None  # why no mark was found


def _candidates(settings: Settings, tenant_id: str, recent: int) -> list[tuple[str, str, int, int]]:
    """(job id, source URI, width, height) of the tenant's newest uploads without a group
    that finished uncleaned, newest first."""
    with session_scope(settings.database_url) as session:
        rows = session.execute(
            select(Job.id, Job.source_uri, JobMetrics.width, JobMetrics.height)
            .join(JobMetrics, JobMetrics.job_id == Job.id)
            .where(
                Job.tenant_id == tenant_id,
                Job.catalogue_group.is_(None),
                Job.status.in_(groups.REQUEUED),
            )
            .order_by(Job.created_at.desc(), Job.id)
            .limit(recent)
        ).all()
    return [(job_id, uri, int(w), int(h)) for job_id, uri, w, h in rows]


def clusters(photos: list[tuple[str, str, int, int]], min_group: int) -> dict[str, list[tuple[str, str]]]:
    """Found-group name -> (job id, URI) of its photos: by size, then the photos left over
    by aspect ratio (reduced width:height) when they are of more than one size."""
    by_size: dict[tuple[int, int], list[tuple[str, str, int, int]]] = defaultdict(list)
    for p in photos:
        by_size[(p[2], p[3])].append(p)
    out = {
        f"{PREFIX}{w}x{h}": [(j, u) for j, u, _, _ in ps]
        for (w, h), ps in by_size.items()
        if len(ps) >= min_group
    }
    by_ratio: dict[tuple[int, int], list[tuple[str, str, int, int]]] = defaultdict(list)
    for (w, h), ps in by_size.items():
        if len(ps) < min_group:
            k = gcd(w, h)
            by_ratio[(w // k, h // k)].extend(ps)
    for (rw, rh), ps in by_ratio.items():
        if len(ps) >= min_group and len({(w, h) for _, _, w, h in ps}) > 1:
            out[f"{PREFIX}{rw}:{rh}"] = [(j, u) for j, u, _, _ in ps]
    return out


def discover(settings: Settings, tenant_name: str, recent: int = RECENT) -> list[Found]:
    """Look through the tenant's recent uncleaned uploads for shared marks (module
    docstring); one entry per cluster tried. LookupError for an unknown tenant."""
    with session_scope(settings.database_url) as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant_name))
    if tenant_id is None:
        raise LookupError(f"no tenant {tenant_name!r}")
    return discover_for(settings, tenant_id, recent)


def discover_for(settings: Settings, tenant_id: str, recent: int = RECENT) -> list[Found]:
    """`discover` by the tenant's id (what a worker holds)."""
    candidates = _candidates(settings, tenant_id, recent)
    return [
        _try(settings, tenant_id, name, members[: groups.MAX_PHOTOS])
        for name, members in clusters(candidates, settings.template_min_group).items()
    ]


def _try(settings: Settings, tenant_id: str, name: str, members: list[tuple[str, str]]) -> Found:
    ids, photos = [], []
    for job_id, uri in members:
        try:
            data = read_uri(job_source_uri(uri, tenant_id), max_bytes=settings.max_bytes)
            photos.append(decode_image(data, settings).rgb)
            ids.append(job_id)
        except BadInput as exc:
            log.warning("discover %s: job %s's photo is left out: %s", name, job_id, exc.message)
    try:
        t = catalogue.estimate(photos)
    except catalogue.RejectedGroup as exc:
        return Found(name, len(ids), reason=str(exc))
    carrying = [j for j, ok in zip(ids, t.agreeing) if ok]
    with session_scope(settings.database_url) as session:
        for job in session.scalars(select(Job).where(Job.id.in_(carrying), Job.catalogue_group.is_(None))):
            job.catalogue_group = name
            session.add(JobEvent(job_id=job.id, kind=groups.EVENT, detail={"found": name}))
    learned = groups.learn(settings, tenant_id, name)
    template = learned.template_id if learned else "not due"
    log.info(
        "discover %s: %d of %d photos carry one mark; template %s", name, len(carrying), len(ids), template
    )
    return Found(name, len(ids), learned, None if learned is None or learned.template_id else learned.reason)


def due(settings: Settings, tenant_id: str) -> bool:
    """Whether the tenant's uncleaned uploads without a group have just reached a multiple
    of CLEARMARK_TEMPLATE_DISCOVER_EVERY (0: never)."""
    every = settings.template_discover_every
    if every <= 0:
        return False
    with session_scope(settings.database_url) as session:
        n = (
            session.scalar(
                select(func.count()).where(
                    Job.tenant_id == tenant_id, Job.catalogue_group.is_(None), Job.status.in_(groups.REQUEUED)
                )
            )
            or 0
        )
    return n >= settings.template_min_group and n % every == 0
