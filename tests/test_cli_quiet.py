"""The CLI's normal output is for people: the real `clearmark` command, run in a
subprocess on a fresh data dir, logs nothing of its libraries (Alembic's migration lines)
unless asked with -v."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

CLEARMARK = Path(sys.executable).with_name("clearmark")  # the installed console script
# A logging line (the CLI's format: "time LEVEL logger: message"), or Alembic by name.
LOG_LINE = re.compile(r"\b(DEBUG|INFO)\b|alembic")


def run_cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    assert CLEARMARK.exists(), f"no console script at {CLEARMARK}: pip install -e ."
    done = subprocess.run([str(CLEARMARK), *argv], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done


def fresh_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A fresh data dir and the embedded SQLite database (nothing from the caller's
    CLEARMARK_DATABASE_URL or storage); the engine cache stays the test run's one."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("CLEARMARK_DATABASE_URL", "CLEARMARK_STORAGE_URI")
    }
    env["CLEARMARK_DATA_DIR"] = str(tmp_path / "data")
    env.update(extra)
    return env


def tiny_photo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 64), (180, 120, 60)).save(path)
    return path


def log_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (done.stdout + done.stderr).splitlines() if LOG_LINE.search(line)]


@pytest.mark.slow
def test_commands_without_verbose_print_no_library_logs(tmp_path, redis_url, queues):
    env = fresh_env(
        tmp_path, CLEARMARK_BROKER_URL=redis_url, **{f"CLEARMARK_{k.upper()}": v for k, v in queues.items()}
    )
    photo = tiny_photo(tmp_path / "in" / "photo.png")

    # `clean` migrates the new embedded database first: that must not show.
    clean = run_cli(env, "clean", str(photo.parent), "--out", str(tmp_path / "out"))
    assert (tmp_path / "out" / "photo.png").exists()
    assert "batch " in clean.stdout and "no watermark  1" in clean.stdout
    assert log_lines(clean) == []

    # `db upgrade` on another fresh data dir: one human line, nothing else.
    env_db = fresh_env(tmp_path / "other")
    upgrade = run_cli(env_db, "db", "upgrade")
    assert upgrade.stdout.splitlines() == [
        f"database at head: sqlite:///{tmp_path / 'other' / 'data' / 'clearmark.db'}"
    ]
    assert upgrade.stderr == ""

    submit = run_cli(env, "submit", str(photo))
    assert re.fullmatch(r"[0-9a-f]{32}\t" + re.escape(str(photo)), submit.stdout.strip())
    assert log_lines(submit) == []

    status = run_cli(env, "status")
    assert "jobs by status:" in status.stdout and "queued        1" in status.stdout
    assert log_lines(status) == []


@pytest.mark.slow
def test_verbose_shows_the_migrations(tmp_path):
    photo = tiny_photo(tmp_path / "in" / "photo.png")
    clean = run_cli(fresh_env(tmp_path), "-v", "clean", str(photo), "--out", str(tmp_path / "out"))
    assert re.search(r" INFO alembic\.runtime\.migration: Running upgrade  -> 0001, ", clean.stderr)
    assert "no watermark  1" in clean.stdout
    assert "setup plugin" not in clean.stderr  # Alembic's own set-up, logged as it is imported

    debug = run_cli(fresh_env(tmp_path / "other"), "-vv", "db", "upgrade")
    assert "INFO alembic.runtime.migration: Running upgrade" in debug.stderr
    assert "DEBUG alembic.runtime.migration: " in debug.stderr  # -vv: debug lines too
