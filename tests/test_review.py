"""The review loop: list needs_review jobs, accept or reject them (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import select

from clearmark.workers.cli import cli
from clearmark.workers.db import METRIC_FIELDS, Job, JobEvent, JobMetrics, session_scope
from clearmark.workers.jobs import create_job, ensure_tenant
from clearmark.workers.review import REJECTED, Decision, decide, pending
from clearmark.workers.storage import read_uri


def seed(db_url: str) -> list[str]:
    """Three jobs in needs_review (two for tenant a) and one that succeeded."""
    ids = []
    with session_scope(db_url) as session:
        for i, (tenant, status) in enumerate(
            [("a", "needs_review"), ("a", "needs_review"), ("b", "needs_review"), ("a", "succeeded")]
        ):
            job, _ = create_job(session, ensure_tenant(session, tenant), f"file:///s/{i}.png")
            job.status, job.result_uri = status, f"file:///r/{i}.png"
            if status == "needs_review":
                job.review_reason = f"the detector still sees a mark in the result (job {i})"
            job.finished_at = datetime(2026, 5, 1, 12, i, tzinfo=UTC)
            session.flush()
            values = {
                **{f: 1.0 for f in METRIC_FIELDS},
                "detector_confidence": 0.3 + i / 10,
                "residual_score": 0.6,
            }
            session.add(JobMetrics(job_id=job.id, **values))
            ids.append(job.id)
    return ids


def test_review_list_accept_reject(settings):
    ids = seed(settings.database_url)
    assert [job.id for job, _ in pending()] == ids[:3]
    assert [job.id for job, _ in pending(tenant="a")] == ids[:2]

    listed = CliRunner().invoke(cli, ["review", "list", "--tenant", "a"])
    assert listed.exit_code == 0, listed.output
    assert ids[0] in listed.output and "conf 0.30  resid 0.60" in listed.output
    assert ids[2] not in listed.output
    # Each job is followed by its reason.
    lines = listed.output.splitlines()
    for i in (0, 1):
        at = next(n for n, line in enumerate(lines) if line.startswith(ids[i]))
        assert lines[at + 1].strip() == (f"why: the detector still sees a mark in the result (job {i})")
    assert "(job 2)" not in listed.output

    assert decide(ids[0], Decision.accept, reviewer="ana") == "succeeded"
    result = CliRunner().invoke(cli, ["review", "reject", ids[1], "--note", "ghost of the logo"])
    assert result.exit_code == 0 and f"{ids[1]}\tfailed" in result.output
    with session_scope(settings.database_url) as session:
        accepted, rejected = session.get(Job, ids[0]), session.get(Job, ids[1])
        assert accepted.status == "succeeded" and accepted.error_code is None
        # The reason is history: kept after the decision.
        assert (accepted.review_reason, rejected.review_reason) == (
            "the detector still sees a mark in the result (job 0)",
            "the detector still sees a mark in the result (job 1)",
        )
        assert (rejected.status, rejected.error_code, rejected.error_message) == (
            "failed",
            REJECTED,
            "ghost of the logo",
        )
        event = session.scalars(
            select(JobEvent).where(JobEvent.job_id == ids[0]).order_by(JobEvent.id.desc())
        ).first()
        assert (event.kind, event.from_status, event.to_status, event.detail["reviewer"]) == (
            "review",
            "needs_review",
            "succeeded",
            "ana",
        )
    assert [job.id for job, _ in pending()] == [ids[2]]

    # Only needs_review jobs can be decided; unknown ids are errors.
    again = CliRunner().invoke(cli, ["review", "accept", ids[3]])
    assert again.exit_code != 0 and "not needs_review" in again.output
    with pytest.raises(LookupError):
        decide("nope", Decision.reject)


def test_accepting_an_unchanged_upload_is_no_watermark_not_a_removal(settings):
    ids = seed(settings.database_url)
    with session_scope(settings.database_url) as session:
        session.get(JobMetrics, ids[0]).mask_area_fraction = 0.0  # the gate put everything back
    assert decide(ids[0], Decision.accept, reviewer="ana") == "no_watermark"
    with session_scope(settings.database_url) as session:
        event = session.scalars(
            select(JobEvent).where(JobEvent.job_id == ids[0]).order_by(JobEvent.id.desc())
        ).first()
        assert event.detail["decision"] == "accept" and event.detail["unchanged_upload"] is True


def test_no_mark_delivers_the_upload_with_an_empty_mask(settings):
    ids = seed(settings.database_url)
    result = CliRunner().invoke(cli, ["review", "no-mark", ids[0], "--note", "it is the print"])
    assert result.exit_code == 0 and f"{ids[0]}\tno_watermark" in result.output, result.output
    with session_scope(settings.database_url) as session:
        job = session.get(Job, ids[0])
        assert job.result_uri == job.source_uri and job.error_code is None
        mask = np.asarray(Image.open(io.BytesIO(read_uri(job.mask_uri))))
        assert mask.shape == (1, 1) and not mask.any()  # the seed's metrics say 1 x 1
        assert session.get(JobMetrics, ids[0]).mask_area_fraction == 0.0
        event = session.scalars(
            select(JobEvent).where(JobEvent.job_id == ids[0]).order_by(JobEvent.id.desc())
        ).first()
        assert (event.detail["decision"], event.detail["note"]) == ("no_mark", "it is the print")


def test_review_list_shows_the_file_name_made_harmless(settings):
    """The list shows the name the file was submitted under (the API's upload name is the
    client's to choose): a terminal escape or a bidi override in it is shown as U+FFFD,
    and an overlong one keeps its end."""
    ids = seed(settings.database_url)
    with session_scope(settings.database_url) as session:
        named, _ = create_job(
            session,
            ensure_tenant(session, "a"),
            "file:///s/9f86d081.png",
            source_name="\x1b[2Jshoe\u202egpj.png",
        )
        long, _ = create_job(
            session, ensure_tenant(session, "a"), "file:///s/e3b0c442.png", source_name="d/" * 600 + "hat.png"
        )
        for job in (named, long):
            job.status, job.finished_at = "needs_review", datetime(2026, 5, 2, tzinfo=UTC)
    listed = CliRunner().invoke(cli, ["review", "list", "--tenant", "a"]).output
    assert "\x1b" not in listed and "\u202e" not in listed
    assert "  \ufffd[2Jshoe\ufffdgpj.png  -" in listed and "9f86d081" not in listed
    assert "  …" + ("d/" * 600 + "hat.png")[-999:] + "  -" in listed
    assert "file:///s/0.png" in listed  # a job created without a name shows its source
    assert ids[0] in listed
