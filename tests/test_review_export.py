"""Learning from reviews: `clearmark review export`, then `clearmark eval-real --reviewed` and
`clearmark train --reviewed` on what it wrote, and the report's review numbers on a
hand-made history."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clearmark.models import reviewed_data
from clearmark.models.evaluate import PSNR_CAP
from clearmark.models.feed import BatchRecipe
from clearmark.models.reviewed import FIELDS, MANIFEST, read_reviewed
from clearmark.models.train import make_batch
from clearmark.models.weights import WEIGHTS_DIR
from clearmark.workers.attempts import process_job
from clearmark.workers.cli import cli
from clearmark.workers.db import Job, JobEvent, session_scope
from clearmark.workers.jobs import MASK_EVENT, create_job, ensure_tenant
from clearmark.workers.report_html import build_report
from clearmark.workers.review import Decision, decide
from clearmark.workers.review_history import reviews
from clearmark.workers.review_mask import ask_removal
from clearmark.workers.storage import read_uri
from tests.test_pipeline import fake_engines
from tests.test_review_mask import mask_png, painted
from tests.test_review_page import shops  # noqa: F401


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_export_then_eval_real_and_train_read_it(settings, shops, tmp_path, grocery_data):  # noqa: F811
    accepted, edited, rejected = shops["a"][1]
    no_mark, waiting = shops["b"][1]
    decide(accepted, Decision.accept, "ana")
    inside = painted(120, 90, (5, 60, 50, 80))
    ask_removal(edited, mask_png(inside), "ana", settings=settings)
    assert process_job(edited, fake_engines(), settings) == "needs_review"  # as a worker would
    decide(edited, Decision.accept, "ana")
    decide(rejected, Decision.reject, "ana")
    decide(no_mark, Decision.no_mark, "bo")

    out = tmp_path / "reviewed"
    result = CliRunner().invoke(cli, ["review", "export", "--since", "1d", str(out)])
    assert result.exit_code == 0, result.output
    assert "3 reviewed photo(s)" in result.output
    with (out / MANIFEST).open() as f:
        rows = {r["job_id"]: r for r in csv.DictReader(f)}
    assert set(rows) == {accepted, edited, no_mark} and list(next(iter(rows.values()))) == list(FIELDS)
    assert [rows[j]["decision"] for j in (accepted, edited, no_mark)] == ["accept", "accept", "no_mark"]
    assert [rows[j]["masks_painted"] for j in (accepted, edited, no_mark)] == ["0", "1", "0"]
    with session_scope(settings.database_url) as session:
        for job_id, row in rows.items():
            job = session.get(Job, job_id)
            assert (out / row["upload"]).read_bytes() == read_uri(job.source_uri)
            assert (out / row["result"]).read_bytes() == read_uri(job.result_uri)
    masks = {j: np.asarray(Image.open(out / rows[j]["mask"])) for j in rows}
    assert np.array_equal(masks[edited] == 255, inside) and not masks[no_mark].any()
    assert (masks[accepted][20:40, 10:60] == 200).all() and masks[accepted].sum() == 200 * 50 * 20
    photos = read_reviewed(out)
    assert [p.job_id for p in photos] == list(rows)
    one_tenant = CliRunner().invoke(cli, ["review", "export", "--tenant", "shop-b", str(tmp_path / "b")])
    assert "1 reviewed photo(s)" in one_tenant.output

    report = tmp_path / "eval.json"
    result = CliRunner().invoke(
        cli, ["eval-real", "--reviewed", str(out), "--weights", str(WEIGHTS_DIR), "--json", str(report)]
    )
    assert result.exit_code == 0, result.output
    assert f"reviewed photos in {out}: 2 marked + 1 clean photos" in result.output
    scored = json.loads(report.read_text())["rows"]
    names = {r["name"]: r for r in scored["model"]}
    assert set(names) == {"photo-0.png", "photo-1.png", "photo-10.png"}
    assert {r["style"] for r in scored["model"]} == {"accept", "painted", "no_mark"}
    assert all("f1" in r for r in scored["model"] if r["marked"])
    # Doing nothing on the "no mark" photo is exactly its accepted result; the true-mask
    # baseline's mask is the accepted one.
    [clean] = [r for r in scored["none"] if not r["marked"]]
    assert clean["psnr"] == PSNR_CAP and clean["changed"] is False
    assert all(r["f1"] == 1.0 for r in scored["telea"] if r["marked"])

    # ... and `clearmark train` learns from it: a quarter of each batch's crops are reviewed
    # photos, the rest of the batch as it would have been.
    recipe = BatchRecipe("detector", seed=3, batch=16, crop=48, data_dir=grocery_data)
    plain, mixed = make_batch(recipe, 0), make_batch(replace(recipe, reviewed=out), 0)
    swapped = [i for i in range(16) if not np.array_equal(plain[0][i], mixed[0][i])]
    assert 0 < len(swapped) < 16
    kept = [i for i in range(16) if i not in swapped]
    assert np.array_equal(plain[0][kept], mixed[0][kept]) and np.array_equal(plain[1][kept], mixed[1][kept])
    photos = reviewed_data.load(str(out))
    assert sorted(int(p.mark.sum()) for p in photos) == sorted([0, 50 * 20, int(inside.sum())])
    for kind in ("detector", "remover"):
        weights = tmp_path / kind
        trained = CliRunner().invoke(
            cli,
            ["train", kind, "--reviewed", str(out), "--steps", "2", "--batch", "4", "--crop", "48"]
            + ["--out", str(weights), "--data", str(grocery_data)],
        )
        assert trained.exit_code == 0, trained.output
        entry = json.loads((weights / "manifest.json").read_text())[kind]
        assert entry["recipe"]["reviewed"] == {"path": str(out), "photos": 3, "share": 0.25}
    refused = CliRunner().invoke(cli, ["train", "detector", "--reviewed", str(tmp_path), "--steps", "1"])
    assert refused.exit_code == 2 and "no " in refused.output and "review export" in refused.output


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 6, day, hour, minute, tzinfo=UTC)


HISTORY = {  # each job's events after its creation: (kind, from, to, when, detail)
    "plain": [("status", "running", "needs_review", at(1, 10)), ("review", "accept", at(1, 10, 5))],
    "painted": [
        ("status", "running", "needs_review", at(1, 11)),
        (MASK_EVENT, "needs_review", "queued", at(1, 11, 2)),
        ("status", "queued", "running", at(1, 11, 2)),
        ("status", "running", "needs_review", at(1, 11, 3)),
        ("review", "accept", at(1, 11, 10)),
    ],
    "false_alarm": [("status", "running", "needs_review", at(2, 9)), ("review", "no_mark", at(2, 9, 1))],
    "bad": [("status", "running", "needs_review", at(2, 9)), ("review", "reject", at(2, 9, 30))],
    "retried": [
        ("status", "running", "needs_review", at(2, 7)),
        ("retry", "needs_review", "queued", at(2, 8)),
        ("status", "queued", "running", at(2, 11, 58)),
        ("status", "running", "needs_review", at(2, 12)),
        ("review", "accept", at(2, 12, 2)),
    ],
}
STATUS = {"accept": "succeeded", "no_mark": "no_watermark", "reject": "failed"}


def test_the_report_counts_reviews_per_day_their_time_and_what_changed(settings):
    with session_scope(settings.database_url) as session:
        tenant = ensure_tenant(session, "shop")
        for name, events in HISTORY.items():
            job, _ = create_job(session, tenant, f"file:///{name}.png", source_name=name)
            for e in events:
                if e[0] == "review":
                    kind, frm, to, detail = "review", "needs_review", STATUS[e[1]], {"decision": e[1]}
                else:
                    (kind, frm, to), detail = e[:3], {"edit": 1} if e[0] == MASK_EVENT else None
                session.add(
                    JobEvent(
                        job_id=job.id,
                        kind=kind,
                        from_status=frm,
                        to_status=to,
                        detail=detail,
                        created_at=e[-1],
                    )
                )
            job.status = to
    with session_scope(settings.database_url) as session:
        done = {(session.get(Job, r.job_id).source_name): r for r in reviews(session)}
    assert {k: (r.decision, r.waited_s, r.masks_painted) for k, r in done.items()} == {
        "plain": ("accept", 300.0, 0),
        "painted": ("accept", 600.0, 1),  # the removal with the painted mask is review time
        "false_alarm": ("no_mark", 60.0, 0),
        "bad": ("reject", 1800.0, 0),
        "retried": ("accept", 120.0, 0),  # from the stay in review after the retry
    }
    page = build_report(settings=settings)
    cells = lambda *values: "".join(f'<td class="n">{v}</td>' for v in values)  # noqa: E731
    # 2026-06-01: 300 s and 600 s; 2026-06-02: 60, 1800 and 120 s (median 2 min, p90 24.4)
    assert f"<tr><td>2026-06-01</td>{cells(2, 2, 0, 0, 1, '7.5', '9.5')}</tr>" in page
    assert f"<tr><td>2026-06-02</td>{cells(3, 1, 1, 1, 0, '2.0', '24.4')}</tr>" in page
    for label, n, share in (
        ("accepted as it was", 2, "40%"),
        ("mask painted, then accepted", 1, "20%"),
        ("there is no mark", 1, "20%"),
        ("rejected", 1, "20%"),
    ):
        assert f"<tr><td>{label}</td>{cells(n, share)}</tr>" in page
    assert "1 mask(s) painted in all" in page
    assert "no reviews yet" in build_report(tenant="nobody", settings=settings)
