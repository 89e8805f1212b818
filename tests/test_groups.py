"""Upload groups (the API's `group`): a worker learns the group's mark once it has
CLEARMARK_TEMPLATE_MIN_GROUP finished uploads and cleans the group's uncleaned jobs again
with it; a group without a shared mark is refused with the reason. Real PostgreSQL, Redis
and worker attempts (`process_job`) with the test pipeline's engines."""

from __future__ import annotations

import numpy as np
import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import select

from clearmark.settings import set_settings
from clearmark.workers import discover, groups
from clearmark.workers.attempts import process_job
from clearmark.workers.cli import cli
from clearmark.workers.db import CatalogueGroup, Job, JobEvent, MarkTemplate, session_scope
from tests.test_api import api_settings, client, make_shop, upload  # noqa: F401 - fixtures
from tests.test_catalogue import _png, background, composite, logo_alpha
from tests.test_pipeline import MAGENTA, IdentityRemover, fake_engines

pytestmark = [pytest.mark.integration]


def _jobs(settings, group: str) -> list[Job]:
    with session_scope(settings.database_url) as session:
        rows = session.scalars(select(Job).where(Job.catalogue_group == group).order_by(Job.created_at))
        return list(rows)


def _events(settings, job_id: str) -> list[dict]:
    with session_scope(settings.database_url) as session:
        query = select(JobEvent.detail).where(JobEvent.job_id == job_id, JobEvent.kind == groups.EVENT)
        return list(session.scalars(query))


def test_a_group_of_uploads_learns_its_mark_and_cleans_its_jobs_again(api_settings, client, make_shop):  # noqa: F811
    settings = api_settings.replace(template_min_group=8)
    set_settings(settings)
    shop = make_shop("shop")
    rng = np.random.default_rng(7)
    alpha = logo_alpha(0.5)
    ids = []
    for _ in range(9):
        r = upload(client, shop, _png(composite(background(rng), alpha)), group="spring")
        assert r.status_code == 202 and r.json()["group"] == "spring"
        ids.append(r.json()["id"])
    lone = upload(client, shop, _png(composite(background(rng), alpha))).json()
    assert lone["group"] is None
    for job_id in ids[:7]:  # the test engines do not see this mark: not cleaned
        assert process_job(job_id, fake_engines(), settings) in groups.REQUEUED
    with session_scope(settings.database_url) as session:
        assert session.scalars(select(MarkTemplate)).all() == []
    assert groups.learn(settings, shop.id, "spring") is None  # 7 of 8
    bulk = redis.Redis.from_url(settings.broker_url)
    assert bulk.llen(settings.queue_bulk) == 0

    # The eighth finished upload: its worker learns the mark from the eight and queues
    # them again (the ninth, still queued, is not part of it).
    assert process_job(ids[7], fake_engines(), settings) in groups.REQUEUED
    with session_scope(settings.database_url) as session:
        group = session.scalars(select(CatalogueGroup)).one()
        template = session.get_one(MarkTemplate, group.template_id)
        assert (group.name, group.tried_with, group.reason) == ("spring", 8, None)
        assert template.images == 8 and sorted(template.sources or []) == sorted(ids[:8])
    jobs = {j.id: j for j in _jobs(settings, "spring")}
    assert all(jobs[i].status == "queued" and jobs[i].batch_id for i in ids[:8])
    assert jobs[ids[8]].batch_id is None
    assert bulk.llen(settings.queue_bulk) == 8
    assert _events(settings, ids[0]) == [{"group": "spring", "template": template.id, "used": True}]
    assert groups.learn(settings, shop.id, "spring") is None  # next at 16

    statuses = []
    for job_id in [*ids, lone["id"]]:  # again, the ninth, and the tenant's other upload
        statuses.append(process_job(job_id, fake_engines(), settings))
        doc = client.get(f"/v1/jobs/{job_id}", headers=shop.auth).json()
        assert doc["metrics"]["method"] == f"template:{template.id}"
    # one result the gate put back: its change continued a backdrop edge (these synthetic
    # backgrounds are flat rectangles)
    assert statuses.count("succeeded") == 9 and statuses.count("needs_review") == 1
    # Reprocessing selects by how a result was made: this template's jobs, or none.
    for method, total in ((f"template:{template.id}", 10), ("template:", 10), ("single-image", 0)):
        res = CliRunner().invoke(cli, ["reprocess", "--tenant", "shop", "--method", method, "--dry-run"])
        assert res.exit_code == 0 and f"(total {total})" in res.output, (method, res.output)


def test_a_group_without_a_shared_mark_is_refused_with_the_reason(api_settings, client, make_shop):  # noqa: F811
    shop = make_shop("shop")
    rng = np.random.default_rng(8)
    ids = [upload(client, shop, _png(background(rng)), group="plain").json()["id"] for _ in range(5)]
    for job_id in ids[:4]:
        assert process_job(job_id, fake_engines(), api_settings) in groups.REQUEUED
    with session_scope(api_settings.database_url) as session:
        group = session.scalars(select(CatalogueGroup)).one()
        assert (group.template_id, group.tried_with) == (None, 4)
        assert group.reason is not None and group.reason.startswith("no shared mark")
    assert _events(api_settings, ids[0]) == [{"group": "plain", "refused": group.reason}]
    assert all(j.status in groups.REQUEUED and j.batch_id is None for j in _jobs(api_settings, "plain")[:4])
    # tried again only at twice the uploads
    assert process_job(ids[4], fake_engines(), api_settings) in groups.REQUEUED
    assert groups.learn(api_settings, shop.id, "plain") is None
    assert len(_events(api_settings, ids[0])) == 1


def test_a_key_reused_with_another_group_is_a_422(api_settings, client, make_shop):  # noqa: F811
    shop = make_shop("shop")
    data = _png(background(np.random.default_rng(9)))
    assert upload(client, shop, data, key="k1", group="a").status_code == 202
    assert upload(client, shop, data, key="k1", group="a").status_code == 200
    again = upload(client, shop, data, key="k1", group="b")
    assert again.status_code == 422 and again.json()["error"]["code"] == "idempotency_conflict"


def flagged_logo(bg: np.ndarray) -> np.ndarray:
    """The groups' logo, with a dot of pure magenta at its centre for the test detector."""
    out = composite(bg, logo_alpha(0.5))
    out[106:114, 146:154] = MAGENTA
    return out


def test_a_mark_shared_without_a_group_is_found_by_a_worker(api_settings, client, make_shop):  # noqa: F811
    """Nine uploads that named no group and that the pipeline could not clean (the test
    detector flags the logo's magenta dot, the remover lifts nothing): six carry one mark at one
    place, three are plain photos of the same size. The ninth's worker looks through them
    (CLEARMARK_TEMPLATE_DISCOVER_EVERY=9), finds the six, learns their mark and queues them
    again; the plain three are left as they were."""
    settings = api_settings.replace(template_min_group=4, template_discover_every=9)
    set_settings(settings)
    shop = make_shop("shop")
    rng = np.random.default_rng(11)
    plain = [upload(client, shop, _png(background(rng))).json()["id"] for _ in range(3)]
    marked = [upload(client, shop, _png(flagged_logo(background(rng)))).json()["id"] for _ in range(6)]
    stuck = fake_engines(remover=IdentityRemover())
    for job_id in [*plain, *marked[:5]]:
        assert process_job(job_id, stuck, settings) in groups.REQUEUED
    with session_scope(settings.database_url) as session:
        assert session.scalars(select(MarkTemplate)).all() == []
    res = CliRunner().invoke(cli, ["reprocess", "--method", "single-image", "--dry-run"])
    assert "(total 8)" in res.output  # made without a template
    assert process_job(marked[5], stuck, settings) == "needs_review"

    name = "found-240x180"
    with session_scope(settings.database_url) as session:
        group = session.scalars(select(CatalogueGroup)).one()
        template = session.get_one(MarkTemplate, group.template_id)
        assert group.name == name and template.images == 6
        assert sorted(template.sources or []) == sorted(marked)
        grouped = {j.id: j.catalogue_group for j in session.scalars(select(Job))}
    assert {grouped[j] for j in marked} == {name} and {grouped[j] for j in plain} == {None}
    assert _events(settings, marked[0])[0] == {"found": name}
    assert all(j.status == "queued" and j.batch_id for j in _jobs(settings, name))
    assert redis.Redis.from_url(settings.broker_url).llen(settings.queue_bulk) == 6

    # By hand: the three plain uploads left are too few to try; an unknown tenant is an error.
    res = CliRunner().invoke(cli, ["catalogue", "discover", "--tenant", "shop"])
    assert res.exit_code == 0 and "shop: no 4 uncleaned uploads of one size or shape" in res.output
    res = CliRunner().invoke(cli, ["catalogue", "discover", "--tenant", "nobody"])
    assert res.exit_code == 1 and "no tenant 'nobody'" in res.output


def test_structure_the_detectors_never_flagged_is_not_a_found_mark(api_settings, client, make_shop):  # noqa: F811
    """Six photos share a faint logo that no detector flags (as a catalogue's photos share a
    composition): the estimate alone would take it for a mark; discovery refuses it."""
    settings = api_settings.replace(template_min_group=4, template_discover_every=0)
    shop = make_shop("shop")
    rng = np.random.default_rng(12)
    alpha = logo_alpha(0.5)
    ids = [upload(client, shop, _png(composite(background(rng), alpha))).json()["id"] for _ in range(6)]
    for job_id in ids:
        assert process_job(job_id, fake_engines(), settings) in groups.REQUEUED
    [found] = discover.discover(settings, "shop")
    assert found.group == "found-240x180" and found.learned is None and found.photos == 6
    assert found.reason is not None and "the photos' composition, not a mark" in found.reason
    with session_scope(settings.database_url) as session:
        assert session.scalars(select(MarkTemplate)).all() == []
        assert {j.catalogue_group for j in session.scalars(select(Job))} == {None}


def test_clusters_by_size_then_by_shape():
    photos = [(f"s{i}", "u", 800, 600) for i in range(4)] + [("a", "u", 400, 300), ("b", "u", 1600, 1200)]
    photos += [("c", "u", 1000, 750), ("d", "u", 500, 375), ("e", "u", 640, 640)]
    found = discover.clusters(photos, min_group=4)
    assert found == {
        "found-800x600": [(f"s{i}", "u") for i in range(4)],
        "found-4:3": [("a", "u"), ("b", "u"), ("c", "u"), ("d", "u")],
    }
