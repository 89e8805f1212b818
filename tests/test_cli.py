"""`clearmark clean` in-process on SQLite, and the other commands' help and plumbing."""
from __future__ import annotations

import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import select

from tests.test_celery_e2e import product_photo
from workers.cli import cli
from workers.db import Job, JobMetrics, session_scope
from workers.settings import Settings, set_settings


@pytest.fixture
def local_settings(tmp_path):
    s = Settings(data_dir=tmp_path / "data")
    set_settings(s)
    yield s
    set_settings(None)


def test_every_command_has_help():
    runner = CliRunner()
    for args in ([], ["clean"], ["submit"], ["worker"], ["status"], ["db"], ["db", "upgrade"],
                 ["train"], ["eval"], ["engines"], ["bench"], ["api"], ["tenants"],
                 ["tenants", "create"]):
        result = runner.invoke(cli, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
        assert "Usage:" in result.output


def test_clean_folder_keeps_paths_and_records_jobs(tmp_path, local_settings):
    src = tmp_path / "in"
    (src / "shoes").mkdir(parents=True)
    product_photo(1).save(src / "a.png")
    product_photo(2).convert("RGB").save(src / "shoes" / "b.jpg", quality=90)
    (src / "shoes" / "broken.jpg").write_bytes(b"not an image at all")
    (src / "notes.txt").write_text("ignored: not an image extension")
    out, masks = tmp_path / "out", tmp_path / "masks"

    result = CliRunner().invoke(cli, ["clean", str(src), "--out", str(out), "--masks", str(masks),
                                      "--recursive"])
    assert result.exit_code == 1, result.output  # one file failed; the rest were cleaned
    assert "failed        1" in result.output and "not_an_image" in result.output
    assert Image.open(out / "a.png").size == (640, 480)
    assert Image.open(out / "shoes" / "b.jpg").format == "JPEG"
    assert (masks / "a.png").exists() and (masks / "shoes" / "b.png").exists()
    assert not (out / "shoes" / "broken.jpg").exists() and not (out / "notes.txt").exists()

    with session_scope(local_settings.database_url) as session:
        jobs = session.scalars(select(Job)).all()
        assert len(jobs) == 3
        by_name = {j.source_uri.rsplit("/", 1)[1]: j for j in jobs}
        assert by_name["broken.jpg"].status == "failed"
        assert by_name["broken.jpg"].error_code == "not_an_image"
        for name in ("a.png", "b.jpg"):
            assert by_name[name].status in {"succeeded", "no_watermark", "needs_review"}
            assert session.get(JobMetrics, by_name[name].id) is not None

    status = CliRunner().invoke(cli, ["status"])
    assert status.exit_code == 0 and "failed        1" in status.output


def test_clean_without_images_is_a_clear_error(tmp_path, local_settings):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli, ["clean", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "no images found" in result.output
