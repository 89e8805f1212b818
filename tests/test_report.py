"""`clearmark report` from a seeded database: a self-contained page with every section."""

from __future__ import annotations

import io
import re
from dataclasses import replace
from datetime import UTC, datetime
from html import escape

import numpy as np
from click.testing import CliRunner
from PIL import Image

from clearmark.pipeline.catalogue import Template
from clearmark.workers import templates
from clearmark.workers.cli import cli
from clearmark.workers.db import METRIC_FIELDS, CatalogueGroup, JobMetrics, session_scope
from clearmark.workers.jobs import create_job, ensure_tenant
from clearmark.workers.report_html import CSS, build_report
from clearmark.workers.storage import get_storage


def png(colour, size=(64, 48), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, "PNG")
    return out.getvalue()


def seed(settings) -> dict[str, str]:
    storage = get_storage()
    names = {}
    rows = [
        ("ok1", "succeeded", 0.95),
        ("ok2", "succeeded", 0.41),
        ("nw", "no_watermark", 0.0),
        ("rev", "needs_review", 0.62),
        ("bad1", "failed", None),
        ("bad2", "failed", None),
        ("other", "succeeded", 0.99),
    ]
    with session_scope(settings.database_url) as session:
        for i, (name, status, conf) in enumerate(rows):
            tenant = ensure_tenant(session, "other" if name == "other" else "shop")
            job, _ = create_job(session, tenant, storage.put(f"sources/{name}.png", png("red")))
            job.status = status
            job.created_at = datetime(2026, 6, 1 + i, tzinfo=UTC)
            names[name] = job.id
            if status == "failed":
                job.error_code = "not_an_image" if name == "bad1" else "truncated_image"
                job.error_message = f"<b>{name}</b> could not be read"
                continue
            job.result_uri = storage.put(f"results/{name}.png", png("white"))
            job.mask_uri = (
                storage.uri(f"masks/{name}.png")
                if name == "ok2"  # never written
                else storage.put(f"masks/{name}.png", png(0, mode="L"))
            )
            job.pipeline_version = "pipeline-1+detector:abc:torch+remover:def:torch"
            if status == "needs_review":
                job.review_reason = "the detector still sees a <mark> (residual 0.70 >= 0.5)"
            session.flush()
            values = {f: 10.0 * (i + 1) for f in METRIC_FIELDS}
            values.update(
                detector_confidence=conf,
                mask_area_fraction=0.01 * i,
                residual_score=0.7 if status == "needs_review" else 0.1,
            )
            if name == "ok1":
                values["ms_gate"] = None
            session.add(JobMetrics(job_id=job.id, **values))
    return names


def test_report_has_every_section(settings, tmp_path):
    names = seed(settings)
    out = tmp_path / "report.html"
    result = CliRunner().invoke(
        cli, ["report", "--tenant", "shop", "--since", "2026-06-01", "--out", str(out), "--sample", "3"]
    )
    assert result.exit_code == 0, result.output
    html = out.read_text()
    for section in (
        "Jobs by status",
        "Failure reasons",
        "Latency percentiles",
        "Distributions",
        "Pipeline versions",
        "Needs review",
        "Lowest detector confidence",
        "Random sample",
    ):
        assert f"<h2>{section}</h2>" in html, section
    assert "tenant shop" in html and names["other"] not in html  # another tenant's job
    assert re.search(r"<b>6</b><span>jobs</span>", html)
    assert re.search(r"<b>2</b><span>failed</span>", html)
    assert "not_an_image" in html and "truncated_image" in html
    assert "&lt;b&gt;bad1&lt;/b&gt;" in html and "<b>bad1</b>" not in html  # escaped
    for stage in ("decode", "detect", "remove", "gate", "encode", "residual", "total"):
        assert f"<td>{stage}</td>" in html
    # ok1 finished before the gate was timed (NULL): the gate's figures are the others'.
    gate = html.split("<td>gate</td>")[1].split("</tr>")[0]
    assert re.findall(r'<td class="n">([\d,]+)</td>', gate) == ["30", "38", "40", "40", "30"]
    assert html.count("<svg") == 4 and "detector confidence" in html
    assert "<td>outdated</td>" in html  # seeded with other weights than the shipped ones
    # Galleries: the review job first; the lowest confidence (0.41) leads its section.
    review = html.split("<h2>Needs review</h2>")[1].split("<h2>")[0]
    assert names["rev"] in review and names["ok1"] not in review
    assert "the detector still sees a &lt;mark&gt; (residual 0.70 &gt;= 0.5)" in review
    worst = html.split("<h2>Lowest detector confidence</h2>")[1].split("<h2>")[0]
    assert worst.index(names["ok2"]) < worst.index(names["rev"]) < worst.index(names["ok1"])
    assert "data:image/jpeg;base64," in html and "missing" in worst  # ok2's mask is gone
    # Self-contained: nothing fetched from anywhere.
    assert not re.search(r"""(src|href)=["'](?!data:)""", html)


def css_rules(css: str) -> dict[str, dict[str, str]]:
    """Selector -> {property: value} of a flat style sheet (no @-rules)."""
    return {
        selector.strip(): dict(
            d.split(":", 1) for d in (d.strip() for d in body.replace("\n", "").split(";")) if d
        )
        for selector, body in re.findall(r"([^{}]+)\{([^}]*)\}", css)
    }


def test_a_long_file_name_stays_inside_its_card(settings, tmp_path):
    """A card shows the job's file name, however long: it wraps anywhere (never widening the
    card, so the page does not scroll sideways), at most three lines of it, and the whole name
    is the element's tooltip."""
    name = "catalogue/" + "spring-collection-" * 30 + 'shoes/<red> shoe "1".jpg'
    with session_scope(settings.database_url) as session:
        job, _ = create_job(
            session,
            ensure_tenant(session, "shop"),
            get_storage().put("sources/ab12.png", png("red")),
            source_name=name,
        )
        job.status, job.review_reason = "needs_review", "a mark is left"
        session.flush()
        session.add(JobMetrics(job_id=job.id, **dict.fromkeys(METRIC_FIELDS, 0.5)))
    html = build_report(settings=settings)
    review = html.split("<h2>Needs review</h2>")[1].split("<h2>")[0]
    shown = escape(name)
    assert f'<span class="name" title="{shown}">{shown}</span>' in review
    assert "sources/ab12.png" not in review  # the storage key is not what people see

    rules = css_rules(CSS)
    assert rules[".job"]["min-width"] == "0"  # a grid item may shrink below its content
    assert rules[".job .cap"]["overflow-wrap"] == "anywhere"  # even a name without spaces
    name_rule = rules[".job .name"]
    assert name_rule["overflow"] == "hidden" and name_rule["-webkit-line-clamp"] == "3"
    assert name_rule["display"] == "-webkit-box" and name_rule["-webkit-box-orient"] == "vertical"
    assert rules["th,td"]["overflow-wrap"] == "anywhere"  # long error messages in tables
    # The cards' fixed content (three 170 px thumbnails) fits the gallery's column.
    column = int(re.search(r"minmax\((\d+)px", rules[".gallery"]["grid-template-columns"]).group(1))
    assert 3 * 170 + 2 * 6 + 2 * 8 + 2 <= column <= 1180


def test_report_lists_each_tenants_templates_and_the_jobs_they_cleaned(settings, tmp_path):
    names = seed(settings)
    mark = Template(
        np.full((8, 10), 0.5, np.float32), np.full((8, 10, 3), 60.0, np.float32), (5, 6, 15, 14), (48, 64)
    )
    with session_scope(settings.database_url) as session:
        learned = templates.save(session, "shop", replace(mark, images=8, quality=0.71), ["a.jpg"])
        grouped = templates.save(session, "shop", replace(mark, images=5, quality=0.52), [])
        theirs = templates.save(session, "other", mark, [])
        tenant = ensure_tenant(session, "shop")
        session.add(CatalogueGroup(tenant_id=tenant.id, name="spring <sale>", template_id=grouped.id))
        for job, template in (("ok1", learned), ("rev", learned), ("other", theirs)):
            session.get_one(JobMetrics, names[job]).method = f"template:{template.id}"
    html = build_report(tenant="shop", settings=settings)
    section = html.split("<h2>Catalogue mark templates</h2>")[1].split("<h2>")[0]
    rows = {row.split("<code>")[1].split("</code>")[0]: row for row in section.split("<tr>")[2:]}
    assert set(rows) == {learned.id, grouped.id}  # not the other tenant's
    assert "<code>catalogue learn</code>" in rows[learned.id]
    assert (
        "5,6-15,14 in 64x48 (absolute)" in rows[learned.id] and '<td class="n">0.71</td>' in rows[learned.id]
    )
    assert "<td>2 (1 needs review, 1 succeeded)</td>" in rows[learned.id]
    assert "group spring &lt;sale&gt;" in rows[grouped.id] and "<td>0</td>" in rows[grouped.id]
    assert theirs.id not in html
    empty = build_report(tenant="nobody", settings=settings)
    assert '<h2>Catalogue mark templates</h2><p class="empty">none' in empty
