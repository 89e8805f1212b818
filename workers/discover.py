"""Catalogue marks found by themselves: a tenant's recent uploads that named no `group` and
were not cleaned (`needs_review` or `no_watermark`) are looked through for photos that
share one mark at one place, and those become a group of their own (`found-<w>x<h>` for
photos of one size, `found-<w>:<h>` for one aspect ratio, the mark at the same place
relative to the size).

Candidates are clustered by size, then the rest by aspect ratio; a cluster of at least
CLEARMARK_TEMPLATE_MIN_GROUP photos is tried with `pipeline.catalogue.estimate` on its
newest MAX_PHOTOS. Without a seller saying the photos share a mark, the estimate alone is
not enough evidence: a catalogue's photos share a size and a composition, which the median
gradient keeps as well as a mark. So a found mark must also lie where the single-image
detectors flagged a region on at least MIN_FLAGGED of the photos that carry it (the job's
recorded suspects); else the cluster is refused and left alone. When a mark is found, the
photos that carry it are put in the found group (a `catalogue` event on each says so) and
`workers.groups.learn` takes over as for a group named on upload: the template is saved and
the group's jobs are cleaned again with it.

`clearmark catalogue discover` runs it; a worker runs it for the tenant after every
CLEARMARK_TEMPLATE_DISCOVER_EVERY-th upload without a group that it could not clean.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from math import gcd
from typing import Any

from sqlalchemy import ColumnElement, func, select

from clearmark.pipeline import catalogue
from clearmark.settings import Settings
from clearmark.workers import groups
from clearmark.workers.db import Job, JobEvent, JobMetrics, Tenant, session_scope

log = logging.getLogger(__name__)
RECENT = 200  # uploads looked through, newest first
# Share of the photos carrying a found mark on which a detector flagged a region there: a
# catalogue's photos share a size and a composition (produce centred on white, models posed
# alike), and the median gradient keeps that as well as a mark; on the clean product photos
# of the train split, 14 of 35 same-size groups of up to 16 passed the estimate alone.
MIN_FLAGGED = 0.5
PREFIX = "found-"


@dataclass
class Found:
    group: str  # the found group's name (tried, whether or not a mark was found)
    photos: int  # the photos the estimate read
    learned: groups.Learned | None = None  # the group's template, when a mark was found
    reason: str | None = None  # why no mark was found


def _uncleaned(tenant_id: str) -> tuple[ColumnElement[bool], ...]:
    """Where a job is one of the tenant's uploads without a group that finished uncleaned:
    the candidates (`_candidates`) and what `due` counts."""
    return Job.tenant_id == tenant_id, Job.catalogue_group.is_(None), Job.status.in_(groups.REQUEUED)


def _candidates(settings: Settings, tenant_id: str, recent: int) -> list[tuple[str, str, int, int]]:
    """(job id, source URI, width, height) of the tenant's newest uploads without a group
    that finished uncleaned, newest first."""
    with session_scope(settings.database_url) as session:
        rows = session.execute(
            select(Job.id, Job.source_uri, JobMetrics.width, JobMetrics.height)
            .join(JobMetrics, JobMetrics.job_id == Job.id)
            .where(*_uncleaned(tenant_id))
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
    ids, photos = groups.read_photos(settings, tenant_id, name, members)
    try:
        t = catalogue.estimate(photos)
    except catalogue.RejectedGroup as exc:
        return Found(name, len(ids), reason=str(exc))
    carrying = [j for j, ok in zip(ids, t.agreeing) if ok]
    sizes = [p.shape[:2] for p, ok in zip(photos, t.agreeing) if ok]
    flagged = _flagged_there(settings, carrying, sizes, t)
    if flagged < MIN_FLAGGED * len(carrying):
        reason = (
            f"no shared mark: the structure {len(carrying)} photos share at {list(t.box)} is where the "
            f"detectors flagged something on {flagged} of them (needed {MIN_FLAGGED:.0%}): the "
            "photos' composition, not a mark"
        )
        return Found(name, len(ids), reason=reason)
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


def _flagged_there(
    settings: Settings, job_ids: list[str], sizes: list[tuple[int, int]], t: catalogue.Template
) -> int:
    """How many of the jobs had a region flagged by some detector (their last attempt's
    suspects) mostly inside the template's box, scaled from its frame to each photo's size."""
    latest: dict[str, list[dict[str, Any]]] = {}
    with session_scope(settings.database_url) as session:
        events = session.execute(
            select(JobEvent.job_id, JobEvent.detail)
            .where(JobEvent.job_id.in_(job_ids), JobEvent.kind == "status")
            .order_by(JobEvent.id)
        ).all()
    for job_id, detail in events:
        if detail and "suspects" in detail:
            latest[job_id] = detail["suspects"] or []
    (fh, fw), (x0, y0, x1, y1) = t.frame, t.box
    n = 0
    for job_id, (h, w) in zip(job_ids, sizes):
        box = (x0 * w / fw, y0 * h / fh, x1 * w / fw, y1 * h / fh)
        n += any(_mostly_inside(s["box"], box) for s in latest.get(job_id, []))
    return n


def _mostly_inside(region: list[int], box: tuple[float, ...]) -> bool:
    """Whether at least a quarter of the flagged `region` lies in `box`: a region flagged
    over the whole photo (a tiled pattern) is no evidence of a mark at one place."""
    w = min(region[2], box[2]) - max(region[0], box[0])
    h = min(region[3], box[3]) - max(region[1], box[1])
    area = (region[2] - region[0]) * (region[3] - region[1])
    return w > 0 and h > 0 and w * h >= 0.25 * area


def due(settings: Settings, tenant_id: str) -> bool:
    """Whether the tenant's uncleaned uploads without a group have just reached a multiple
    of CLEARMARK_TEMPLATE_DISCOVER_EVERY (0: never)."""
    every = settings.template_discover_every
    if every <= 0:
        return False
    with session_scope(settings.database_url) as session:
        n = session.scalar(select(func.count()).where(*_uncleaned(tenant_id))) or 0
    return n >= settings.template_min_group and n % every == 0
