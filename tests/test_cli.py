"""`clearmark clean` in-process on SQLite, and the other commands' help and plumbing."""

from __future__ import annotations

import errno
import re
import uuid
from collections import Counter
from datetime import UTC

import pytest
from click.testing import CliRunner
from fsspec.implementations.local import LocalFileSystem
from PIL import Image
from sqlalchemy import select

from clearmark.settings import Settings, set_settings
from clearmark.workers import migrate
from clearmark.workers.cli import cli
from clearmark.workers.db import Job, JobMetrics, session_scope
from clearmark.workers.local import Summary
from tests.services import product_photo


@pytest.fixture
def local_settings(tmp_path):
    s = Settings(data_dir=tmp_path / "data")
    set_settings(s)
    yield s
    set_settings(None)


def test_every_command_has_help():
    runner = CliRunner()
    for args in (
        [],
        ["clean"],
        ["submit"],
        ["worker"],
        ["status"],
        ["db"],
        ["db", "upgrade"],
        ["train"],
        ["eval"],
        ["engines"],
        ["bench"],
        ["api"],
        ["tenants"],
        ["tenants", "create"],
    ):
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

    result = CliRunner().invoke(
        cli, ["clean", str(src), "--out", str(out), "--masks", str(masks), "--recursive"]
    )
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


def test_start_up_commands_are_listed_without_importing_them():
    """`clearmark --help` shows the lazily loaded commands' one-line help from
    COMMANDS; it must be what the commands themselves say."""
    import click

    from clearmark.workers.cli import COMMANDS

    ctx = click.Context(cli)
    for name, (_, short_help) in COMMANDS.items():
        assert cli.get_command(ctx, name).get_short_help_str(1000) == short_help, name
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0 and all(name in result.output for name in COMMANDS)


def test_status_in_the_embedded_mode_shows_the_local_database_only(tmp_path, monkeypatch):
    """No broker set (as after `clean`): no queues to flag, and the broker is not asked."""
    monkeypatch.delenv("CLEARMARK_BROKER_URL", raising=False)
    settings = Settings(data_dir=tmp_path / "data")
    set_settings(settings)
    try:
        migrate.upgrade(settings.database_url)
        result = CliRunner().invoke(cli, ["status"])
    finally:
        set_settings(None)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "jobs by status:" and "queued" in result.output
    assert lines[-1].startswith("embedded mode: no broker is set") and settings.database_url in lines[-1]
    assert "NO WORKER" not in result.output and settings.queue_uploads not in result.output


def test_status_with_a_broker_flags_the_queues_no_worker_consumes(tmp_path, redis_url):
    queues = {f"queue_{q}": f"test-{uuid.uuid4().hex[:8]}.{q}" for q in ("uploads", "bulk", "webhooks")}
    settings = Settings(data_dir=tmp_path / "data", broker_url=redis_url, **queues)
    set_settings(settings)
    try:
        migrate.upgrade(settings.database_url)
        result = CliRunner().invoke(cli, ["status"])
    finally:
        set_settings(None)
    assert result.exit_code == 0, result.output
    assert f"queues on {redis_url}:" in result.output and "embedded" not in result.output
    for queue in queues.values():
        assert re.search(rf"^  {re.escape(queue)} +0 waiting +NO WORKER consumes it", result.output, re.M)


ODD_NAMES = ["a b.png", "c#1.png", "100%.png", "new\nline.png", "żółw ü.png"]


def test_clean_odd_file_names_into_a_folder_with_a_space(tmp_path, local_settings):
    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(ODD_NAMES):
        product_photo(i, size=(160, 120)).save(src / name)
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "My Output"

    result = CliRunner().invoke(cli, ["clean", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(ODD_NAMES)
    assert not (tmp_path / "My%20Output").exists()
    assert "failed        0" in result.output
    assert "skipped 1 file(s) that are not images by their extension: notes.txt" in result.output
    stages = result.output.split("mean ms per image: ")[1].splitlines()[0]
    assert [part.split()[0] for part in stages.split(" = ")[0].split(" + ")] == [
        "decode",
        "detect",
        "remove",
        "gate",
        "encode",
        "residual",
    ]


def test_clean_with_an_output_that_cannot_be_written_fails_loudly(tmp_path, local_settings):
    set_settings(local_settings.replace(max_attempts=1))
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    product_photo(1, size=(160, 120)).save(src / "top.png")
    product_photo(2, size=(160, 120)).save(src / "sub" / "x y.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("a file where the sub-folder should go")

    result = CliRunner().invoke(cli, ["clean", str(src), "--out", str(out), "--recursive"])
    assert result.exit_code == 1, result.output
    assert "failed        1" in result.output
    assert "FAILED sub/x y.png: too_many_attempts: gave up after 1 attempts: cannot write" in result.output
    assert (out / "top.png").exists()
    with session_scope(local_settings.database_url) as session:
        statuses = [j.status for j in session.scalars(select(Job))]
    assert len(statuses) == 2 and statuses.count("failed") == 1 and "queued" not in statuses
    status = CliRunner().invoke(cli, ["status"])  # failures by the user's file name
    assert "too_many_attempts: gave up after 1 attempts" in status.output
    assert f"[{src / 'sub' / 'x y.png'}]" in status.output


def test_clean_refuses_an_output_folder_it_cannot_create(tmp_path, local_settings):
    src = tmp_path / "in"
    src.mkdir()
    product_photo(1, size=(160, 120)).save(src / "a.png")
    (tmp_path / "taken").write_text("a file, not a folder")
    result = CliRunner().invoke(cli, ["clean", str(src), "--out", str(tmp_path / "taken")])
    assert result.exit_code != 0 and "cannot create the output folder" in result.output


def test_since_takes_iso_dates_and_ages_in_report_and_reprocess(tmp_path, local_settings):
    from datetime import datetime

    from clearmark.workers import migrate
    from clearmark.workers.dates import parse_since

    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert parse_since("90m", now) == datetime(2026, 11, 29, 10, 30, tzinfo=UTC)
    assert parse_since("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_since("2026-11-01T12:00+01:00").utcoffset().total_seconds() == 3600
    with pytest.raises(ValueError):
        parse_since("last week")

    migrate.upgrade(local_settings.database_url)
    runner = CliRunner()
    for since in ("7d", "2026-11-01", "2026-11-01T08:00:00"):
        report = runner.invoke(cli, ["report", "--out", str(tmp_path / "r.html"), "--since", since])
        assert report.exit_code == 0, report.output
        dry = runner.invoke(cli, ["reprocess", "--since", since, "--dry-run"])
        assert dry.exit_code == 0 and "selected: none" in dry.output, dry.output
    bad = runner.invoke(cli, ["reprocess", "--since", "last week", "--dry-run"])
    assert bad.exit_code == 2 and "is not an ISO date" in bad.output


def test_batches_show_whole_tenant_names():
    from datetime import datetime

    from clearmark.workers.reports import batches_text

    name = "a-rather-long-storefront-name"
    text = batches_text(
        [
            {
                "id": "b1",
                "kind": "bulk",
                "tenant": name,
                "created_at": datetime(2026, 11, 29),
                "total": 1,
                "counts": {"succeeded": 1},
            }
        ]
    )
    assert name in text


def test_flower_needs_its_extra_and_keeps_the_password_off_the_command_line(tmp_path):
    import importlib.util

    runner = CliRunner()
    if importlib.util.find_spec("flower") is None:
        result = runner.invoke(cli, ["flower"])
        assert result.exit_code == 1 and "pip install -e '.[ops]' -c constraints.txt" in result.output
    else:
        result = runner.invoke(cli, ["flower", "--basic-auth=admin:secret"])
        assert result.exit_code == 1 and "shows in `ps`" in result.output


def test_commands_on_a_missing_or_unmigrated_database_say_what_to_run(tmp_path):
    """Before any database exists (a fresh machine), the service's commands print one line
    that names `clearmark db upgrade` and exit 1, never a traceback; a database that cannot
    be reached is exit 75; once migrated they work."""
    product_photo(0, size=(64, 48)).save(tmp_path / "p.png")
    runner = CliRunner()
    fresh = Settings(data_dir=tmp_path / "data")
    commands = [["status"], ["submit", str(tmp_path / "p.png")], ["tenants", "list"], ["review", "list"]]
    try:
        set_settings(fresh)
        for args in commands:
            result = runner.invoke(cli, args)
            assert isinstance(result.exception, SystemExit) and result.exit_code == 1, (args, result.output)
            assert "there is no database at" in result.output and "clearmark db upgrade" in result.output
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "clearmark.db").touch()  # a database with no tables
        result = runner.invoke(cli, ["batches"])
        assert result.exit_code == 1 and "is at migration (none), this code expects" in result.output

        set_settings(fresh.replace(database_url="postgresql://clearmark@127.0.0.1:1/nothing"))
        result = runner.invoke(cli, ["status"])
        assert result.exit_code == 75 and "database unavailable" in result.output

        set_settings(fresh)
        assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
        result = runner.invoke(cli, ["tenants", "list"])
        assert result.exit_code == 0, result.output
    finally:
        set_settings(None)


def test_submit_with_the_storage_read_only_is_one_line_and_exit_75(tmp_path, local_settings, monkeypatch):
    """Copying the file into storage fails (a read-only folder): one error line, exit 75,
    no traceback, and no job recorded for a file that is not stored."""
    product_photo(0, size=(64, 48)).save(tmp_path / "p.png")
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0

    def read_only(self, path, mode="rb", **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(LocalFileSystem, "_open", read_only)
    result = runner.invoke(cli, ["submit", str(tmp_path / "p.png")])
    assert result.exit_code == 75, result.output
    assert result.output.startswith("Error: storage unavailable: cannot write ")
    assert "Read-only file system" in result.output and result.output.count("\n") == 1
    with session_scope(local_settings.database_url) as session:
        assert session.scalars(select(Job)).all() == []


def test_clean_summary_names_the_files_that_need_review():
    summary = Summary("b1", 1.0, counts=Counter(needs_review=1, succeeded=1))
    summary.reviews.append(("shoes/red.jpg", "the detector still finds a mark at (1, 2, 3, 4)"))
    text = summary.render()
    assert "needs review  1" in text
    assert "REVIEW shoes/red.jpg: the detector still finds a mark at (1, 2, 3, 4)" in text
