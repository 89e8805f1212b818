"""`clearmark report`: one self-contained HTML page about the jobs (no external files).

Counts by status, failure reasons, stage latency percentiles, distributions of detector
confidence and mask area (inline SVG), reviews (per day, time per review, what reviewers
changed), each tenant's catalogue mark templates with the jobs they cleaned, and
before/after/mask thumbnails (base64 JPEG read from storage) for the
needs_review jobs, the lowest-confidence jobs and a random sample.
"""

from __future__ import annotations

import base64
import io
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image, ImageOps
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from clearmark.pipeline.stages import STAGES
from clearmark.pipeline.versions import current_version_pattern
from clearmark.settings import Settings, get_settings
from clearmark.workers.db import (
    WITH_RESULT,
    CatalogueGroup,
    Job,
    JobMetrics,
    JobStatus,
    MarkTemplate,
    Tenant,
    session_scope,
    utcnow,
)
from clearmark.workers.review_history import Review, reviews
from clearmark.workers.storage import read_uri

_Query = TypeVar("_Query", bound=Select[*tuple[Any, ...]])

WITH_RESULT_VALUES = [s.value for s in WITH_RESULT]
COLOURS = {
    "succeeded": "#2e7d32",
    "no_watermark": "#607d8b",
    "needs_review": "#ef6c00",
    "failed": "#c62828",
    "queued": "#1565c0",
    "running": "#6a1b9a",
}
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
  max-width:1180px;color:#1d2733;background:#f6f7f9;padding:0 16px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #d5dae1;padding-bottom:4px}
.meta{color:#5b6675;margin-bottom:12px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #dde2e8;border-radius:8px;padding:10px 14px;min-width:110px}
.card b{display:block;font-size:22px}
.card span{color:#5b6675;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
table{border-collapse:collapse;background:#fff;border:1px solid #dde2e8}
th,td{padding:5px 10px;border-bottom:1px solid #eef0f3;text-align:left;overflow-wrap:anywhere}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.plots{display:flex;flex-wrap:wrap;gap:16px}
.plot{background:#fff;border:1px solid #dde2e8;border-radius:8px;padding:8px}
.plot h3{font-size:14px;margin:2px 6px 6px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:12px}
.job{background:#fff;border:1px solid #dde2e8;border-radius:8px;padding:8px;min-width:0}
.job .imgs{display:flex;gap:6px}
.job figure{margin:0;text-align:center;font-size:11px;color:#5b6675}
.job img{width:170px;height:128px;object-fit:contain;background:#e9ecf0;display:block;
  border-radius:4px}
.job .cap{font-size:12px;margin-top:6px;overflow-wrap:anywhere}
.job .name{display:-webkit-box;-webkit-box-orient:vertical;-webkit-line-clamp:3;line-clamp:3;
  overflow:hidden;color:#5b6675}
.badge{color:#fff;border-radius:10px;padding:1px 8px;font-size:11px}
.missing{width:170px;height:128px;display:flex;align-items:center;justify-content:center;
  background:#e9ecf0;border-radius:4px;color:#8a94a3}
.empty{color:#5b6675}
.why{color:#b45309}
code{font-size:12px}
.nowrap{white-space:nowrap}
"""


def _query_filters(q: _Query, tenant: str | None, since: datetime | None) -> _Query:
    if tenant:
        q = q.where(Job.tenant_id == select(Tenant.id).where(Tenant.name == tenant).scalar_subquery())
    if since:
        q = q.where(Job.created_at >= since)
    return q


def thumbnail(uri: str | None, size: int = 256) -> str | None:
    """A data: URI of a small JPEG of the image at `uri`, or None when it cannot be read."""
    if not uri:
        return None
    try:
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(read_uri(uri, 64 << 20))))
        img.thumbnail((size, size))
        if img.mode in ("RGBA", "LA", "P"):
            img = img.convert("RGBA")
            back = Image.new("RGB", img.size, (255, 255, 255))
            back.paste(img, mask=img.getchannel("A"))
            img = back
        out = io.BytesIO()
        img.convert("RGB").save(out, "JPEG", quality=75)
    except Exception:  # noqa: BLE001 - a missing or bad file is shown as missing
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def histogram_svg(
    values: ArrayLike,
    title: str,
    bins: int = 20,
    lo: float = 0.0,
    hi: float | None = None,
    fmt: str = "{:.2f}",
    width: int = 540,
    height: int = 210,
) -> str:
    """Bars of `values` over [lo, hi] as inline SVG with axis labels."""
    data = np.asarray(values, dtype=float)
    hi = hi if hi is not None else (float(data.max()) if data.size else 1.0) or 1.0
    counts, edges = np.histogram(data, bins=bins, range=(lo, hi))
    left, bottom, top, plot_w = 44, height - 28, 10, width - 56
    plot_h = bottom - top
    peak = max(int(counts.max()) if counts.size else 0, 1)
    bar_w = plot_w / bins
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}" font-size="11" fill="#5b6675">'
    ]
    for tick in sorted({0, peak // 2, peak}):
        y = bottom - tick / peak * plot_h
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#e3e7ec"/><text x="{left - 6}" y="{y + 4:.1f}" '
            f'text-anchor="end">{tick}</text>'
        )
    for i, n in enumerate(counts):
        h = n / peak * plot_h
        parts.append(
            f'<rect x="{left + i * bar_w + 1:.1f}" y="{bottom - h:.1f}" '
            f'width="{bar_w - 2:.1f}" height="{h:.1f}" fill="#3f7fbf">'
            f"<title>{fmt.format(edges[i])}–{fmt.format(edges[i + 1])}: {n}</title>"
            "</rect>"
        )
    for frac, anchor in ((0, "start"), (0.5, "middle"), (1, "end")):
        x = left + frac * plot_w
        parts.append(
            f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="{anchor}">'
            f"{fmt.format(lo + frac * (hi - lo))}</text>"
        )
    parts.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{bottom}" y2="{bottom}" stroke="#8a94a3"/></svg>'
    )
    return "".join(parts)


def _badge(status: str) -> str:
    return f'<span class="badge" style="background:{COLOURS.get(status, "#555")}">{escape(status)}</span>'


def _job_card(job: Job, m: JobMetrics | None) -> str:
    figures = []
    for label, uri in (("before", job.source_uri), ("after", job.result_uri), ("mask", job.mask_uri)):
        src = thumbnail(uri)
        img = f'<img src="{src}" alt="{label}">' if src else '<div class="missing">missing</div>'
        figures.append(f"<figure>{img}{label}</figure>")
    scores = (
        f"confidence {m.detector_confidence:.2f} · residual {m.residual_score:.2f} · "
        f"mask {m.mask_area_fraction:.1%} · {m.width}×{m.height}"
        if m
        else "no metrics"
    )
    why = (
        f'<br><span class="why">{escape(job.review_reason)}</span>'
        if job.status == JobStatus.needs_review.value and job.review_reason
        else ""
    )
    return (
        f'<div class="job"><div class="imgs">{"".join(figures)}</div><div class="cap">'
        f"{_badge(job.status)} <code>{job.id}</code><br>{scores}<br>"
        f'<span class="name" title="{escape(job.display_name)}">{escape(job.display_name)}</span>'
        f"{why}</div></div>"
    )


def _gallery(title: str, rows: Iterable[tuple[Job, JobMetrics | None]], note: str) -> str:
    cards = "".join(_job_card(job, m) for job, m in rows) or '<p class="empty">none</p>'
    return f'<h2>{escape(title)}</h2><p class="meta">{escape(note)}</p><div class="gallery">{cards}</div>'


def _table(head: list[str], rows: Sequence[Sequence[object]], numeric: tuple[int, ...] = ()) -> str:
    """A table; `rows` hold HTML already escaped; columns in `numeric` align right."""

    def cls(i: int) -> str:
        return ' class="n"' if i in numeric else ""

    th = "".join(f"<th{cls(i)}>{escape(h)}</th>" for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


# What a review did to the pipeline's result, in the order the report lists them.
CHANGES = (
    ("accepted as it was", lambda r: r.decision == "accept" and not r.masks_painted),
    ("mask painted, then accepted", lambda r: r.decision == "accept" and r.masks_painted > 0),
    ("there is no mark", lambda r: r.decision == "no_mark"),
    ("rejected", lambda r: r.decision == "reject"),
)


def _minutes(seconds: list[float], q: float) -> str:
    return f"{np.percentile(seconds, q) / 60:.1f}" if seconds else "-"


def review_section(done: list[Review]) -> str:
    """Reviews per day (UTC) with the time per review (needs_review to the decision,
    median and p90), and what reviewers changed: each kind of decision, and the masks
    they painted."""
    if not done:
        return '<p class="empty">no reviews yet</p>'
    waits = [r.waited_s for r in done if r.waited_s is not None]
    painted = sum(r.masks_painted for r in done)
    cards = [
        (len(done), "reviews"),
        (sum(r.decision == "accept" for r in done), "accepted"),
        (sum(r.decision == "reject" for r in done), "rejected"),
        (sum(r.decision == "no_mark" for r in done), "no mark"),
        (sum(r.masks_painted > 0 for r in done), "with a painted mask"),
        (_minutes(waits, 50), "median minutes"),
    ]
    days: dict[str, list[Review]] = {}
    for r in done:
        days.setdefault(f"{r.at:%Y-%m-%d}", []).append(r)
    per_day = [
        [
            day,
            len(rs),
            *(sum(r.decision == d for r in rs) for d in ("accept", "reject", "no_mark")),
            sum(r.masks_painted > 0 for r in rs),
            _minutes([r.waited_s for r in rs if r.waited_s is not None], 50),
            _minutes([r.waited_s for r in rs if r.waited_s is not None], 90),
        ]
        for day, rs in sorted(days.items())
    ]
    changes = [[label, n, f"{n / len(done):.0%}"] for label, test in CHANGES for n in [sum(map(test, done))]]
    return (
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{v}</b><span>{escape(k)}</span></div>' for v, k in cards)
        + "</div><h3>Reviews per day</h3>"
        + _table(
            [
                "day (UTC)",
                "reviews",
                "accepted",
                "rejected",
                "no mark",
                "mask painted",
                "median min",
                "p90 min",
            ],
            per_day,
            numeric=(1, 2, 3, 4, 5, 6, 7),
        )
        + "<h3>What reviewers changed</h3>"
        + _table(["decision", "reviews", "share"], changes, numeric=(1, 2))
        + f'<p class="meta">{painted} mask(s) painted in all; time per review: from needs_review '
        "to the decision, removals with a painted mask included.</p>"
    )


def templates_table(session: Session, tenant: str | None, since: datetime | None) -> str:
    """The catalogue mark templates (of the tenant), newest first: where the mark sits, how
    it was learned, and the jobs (created since `since`) it cleaned, by status."""
    query = (
        select(MarkTemplate, Tenant.name, CatalogueGroup.name)
        .join(Tenant, Tenant.id == MarkTemplate.tenant_id)
        .outerjoin(CatalogueGroup, CatalogueGroup.template_id == MarkTemplate.id)
        .order_by(MarkTemplate.created_at.desc())
    )
    if tenant:
        query = query.where(Tenant.name == tenant)
    rows = session.execute(query).all()
    if not rows:
        return (
            '<p class="empty">none: <code>clearmark catalogue learn</code>, or uploads that name '
            "a <code>group</code></p>"
        )
    used: dict[str, Counter[str]] = {}
    for method, status, n in session.execute(
        _query_filters(
            select(JobMetrics.method, Job.status, func.count()).join(Job, Job.id == JobMetrics.job_id),
            tenant,
            since,
        )
        .where(JobMetrics.method.is_not(None))
        .group_by(JobMetrics.method, Job.status)
    ):
        used.setdefault((method or "").removeprefix("template:"), Counter())[status] = n

    def jobs(template_id: str) -> str:
        by_status = used.get(template_id, Counter())
        parts = ", ".join(f"{n} {st.replace('_', ' ')}" for st, n in sorted(by_status.items()))
        return f"{sum(by_status.values())}" + (f" ({escape(parts)})" if parts else "")

    return _table(
        ["tenant", "template", "learned from", "mark box in frame", "photos", "quality", "created", "jobs"],
        [
            [
                escape(name),
                f"<code>{t.id}</code>",
                f"group {escape(group)}" if group else "<code>catalogue learn</code>",
                f"{t.box_x0},{t.box_y0}-{t.box_x1},{t.box_y1} in {t.frame_width}x{t.frame_height} ({t.rule})",
                t.images,
                f"{t.quality:.2f}",
                f"{t.created_at:%Y-%m-%d %H:%M}",
                jobs(t.id),
            ]
            for t, name, group in rows
        ],
        numeric=(4, 5),
    )


def build_report(
    tenant: str | None = None,
    since: datetime | None = None,
    sample: int = 6,
    worst: int = 6,
    review: int = 6,
    settings: Settings | None = None,
) -> str:
    s = settings or get_settings()
    with session_scope(s.database_url) as session:
        counts = Counter(
            dict(
                session.execute(
                    _query_filters(select(Job.status, func.count()), tenant, since).group_by(Job.status)
                ).all()
            )
        )
        failures = session.execute(
            _query_filters(select(Job.error_code, func.count(), func.min(Job.error_message)), tenant, since)
            .where(Job.status == JobStatus.failed.value)
            .group_by(Job.error_code)
            .order_by(func.count().desc())
        ).all()
        cols = [
            "detector_confidence",
            "mask_area_fraction",
            "residual_score",
            *(f"ms_{stage}" for stage in (*STAGES, "total")),
        ]
        values = np.array(
            session.execute(
                _query_filters(
                    select(*(getattr(JobMetrics, c) for c in cols)).join(Job, Job.id == JobMetrics.job_id),
                    tenant,
                    since,
                ).where(Job.status.in_(WITH_RESULT_VALUES))
            ).all(),
            dtype=float,
        ).reshape(-1, len(cols))
        metrics = dict(zip(cols, values.T))
        versions = session.execute(
            _query_filters(select(Job.pipeline_version, func.count()), tenant, since)
            .where(Job.pipeline_version.is_not(None))
            .group_by(Job.pipeline_version)
        ).all()
        with_metrics = _query_filters(
            select(Job, JobMetrics).join(JobMetrics, JobMetrics.job_id == Job.id), tenant, since
        )
        review_rows = session.execute(
            with_metrics.where(Job.status == JobStatus.needs_review.value)
            .order_by(JobMetrics.residual_score.desc())
            .limit(review)
        ).all()
        worst_rows = session.execute(
            with_metrics.where(Job.status.in_((JobStatus.succeeded.value, JobStatus.needs_review.value)))
            .order_by(JobMetrics.detector_confidence, Job.id)
            .limit(worst)
        ).all()
        sample_rows = session.execute(
            _query_filters(
                select(Job, JobMetrics).outerjoin(JobMetrics, JobMetrics.job_id == Job.id), tenant, since
            )
            .where(Job.status.in_(WITH_RESULT_VALUES))
            .order_by(func.random())
            .limit(sample)
        ).all()
        reviewed = review_section(reviews(session, tenant, since, created_since=True))
        galleries = (
            _gallery(
                "Needs review",
                review_rows,
                f"{counts['needs_review']} jobs wait for `clearmark review`; highest residual first",
            )
            + _gallery(
                "Lowest detector confidence", worst_rows, "cleaned jobs the detector was least sure about"
            )
            + _gallery("Random sample", sample_rows, f"{len(sample_rows)} of {len(values)} finished jobs")
        )
        template_table = templates_table(session, tenant, since)

    total = sum(counts.values())
    order = ["succeeded", "needs_review", "no_watermark", "failed", "queued", "running"]
    cards = [f'<div class="card"><b>{total}</b><span>jobs</span></div>'] + [
        f'<div class="card" style="border-top:4px solid {COLOURS[st]}"><b>{counts[st]}</b>'
        f"<span>{st.replace('_', ' ')}</span></div>"
        for st in order
    ]
    failure_table = (
        _table(
            ["error code", "jobs", "example message"],
            [
                [f"<code>{escape(code or '-')}</code>", n, escape((msg or "")[:160])]
                for code, n, msg in failures
            ],
            numeric=(1,),
        )
        if failures
        else '<p class="empty">no failures</p>'
    )
    if len(values):
        pct_rows = []
        for stage in (*STAGES, "total"):
            ms = metrics[f"ms_{stage}"]
            ms = ms[~np.isnan(ms)]  # NULL: a job from before its stage was timed (gate, residual)
            if ms.size:
                pct_rows.append(
                    [stage]
                    + [f"{v:,.0f}" for v in np.percentile(ms, [50, 90, 99])]
                    + [f"{ms.max():,.0f}", f"{ms.mean():,.0f}"]
                )
        latency = _table(
            ["stage", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"], pct_rows, numeric=(1, 2, 3, 4, 5)
        )
        conf = metrics["detector_confidence"][metrics["mask_area_fraction"] > 0]
        area = metrics["mask_area_fraction"] * 100
        plots = (
            f'<div class="plot"><h3>Detector confidence (jobs with a mask, n={len(conf)})'
            f"</h3>{histogram_svg(conf, 'detector confidence', hi=1.0)}</div>"
            f'<div class="plot"><h3>Mask area, % of the image (n={len(area)})</h3>'
            f"{histogram_svg(area, 'mask area', fmt='{:.1f}%')}</div>"
            f'<div class="plot"><h3>Residual score (n={len(values)}; review at &ge; '
            f"{s.detector_absent_below:g})</h3>"
            f"{histogram_svg(metrics['residual_score'], 'residual', hi=1.0)}</div>"
            f'<div class="plot"><h3>Total ms per image</h3>'
            f"{histogram_svg(metrics['ms_total'], 'total ms', fmt='{:.0f}')}</div>"
        )
    else:
        latency = plots = '<p class="empty">no finished jobs with metrics</p>'
    current = re.compile(re.escape(current_version_pattern()).replace("%", ".*"))
    version_table = (
        _table(
            ["pipeline version", "jobs", "models"],
            [
                [
                    f'<code class="nowrap">{escape(v)}</code>',
                    n,
                    "current" if current.fullmatch(v) else "outdated",
                ]
                for v, n in versions
                if v is not None  # always: the query keeps set versions only
            ],
            (1,),
        )
        + (
            '<p class="meta">Outdated: made by other code or weights than a worker would use now; '
            "<code>clearmark reprocess --outdated</code> queues them again.</p>"
        )
        if versions
        else '<p class="empty">none yet</p>'
    )
    scope = f"tenant {tenant}" if tenant else "all tenants"
    scope += f", created since {since:%Y-%m-%d %H:%M} UTC" if since else ""
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>clearmark report</title><style>{CSS}</style></head><body>"
        f'<h1>clearmark quality report</h1><div class="meta">{escape(scope)} · generated '
        f"{utcnow():%Y-%m-%d %H:%M} UTC</div>"
        f'<h2>Jobs by status</h2><div class="cards">{"".join(cards)}</div>'
        f"<h2>Failure reasons</h2>{failure_table}"
        f"<h2>Latency percentiles</h2>{latency}"
        f'<h2>Distributions</h2><div class="plots">{plots}</div>'
        f"<h2>Pipeline versions</h2>{version_table}"
        f"<h2>Reviews</h2>{reviewed}"
        f"<h2>Catalogue mark templates</h2>{template_table}"
        f"{galleries}</body></html>"
    )
