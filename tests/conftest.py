"""Fixtures for real services: a fresh PostgreSQL database and a Redis db per test run;
and a small generated photo directory standing in for the grocery data.

PostgreSQL and Redis must be running (`.ci/run` starts them). Set
CLEARMARK_TEST_PG_ADMIN_URL / CLEARMARK_TEST_REDIS_URL to point elsewhere.
The real data (`models.scenes.DEFAULT_DATA`, `../shared/data` beside the checkout) is not
part of the repository: tests that synthesise from photos use `grocery_data` instead, and
the few that check the real data itself skip without it.
"""

from __future__ import annotations

import os
import tempfile
import uuid

import pytest
from sqlalchemy import create_engine, text

from clearmark.settings import Settings, set_settings
from clearmark.workers import migrate

PG_ADMIN_URL = os.environ.get(
    "CLEARMARK_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("CLEARMARK_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
# One engine cache (exported ONNX files) for the whole run and its worker subprocesses,
# so the export happens once rather than in every test's fresh data dir.
os.environ.setdefault("CLEARMARK_ENGINE_DIR", tempfile.mkdtemp(prefix="clearmark-engines-"))
# The tests' workers make those exports on their first start; production workers only load
# what `clearmark engines build` made (tests/test_worker_engines.py runs one such worker).
os.environ.setdefault("CLEARMARK_WORKER_BUILD_BUDGET_S", "900")


def _pg_database(name: str):
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - report the real cause
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is not usable: {exc}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    return admin, url


def _drop_pg_database(admin, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url():
    """URL of a new, empty PostgreSQL database (dropped afterwards)."""
    name = f"clearmark_test_{uuid.uuid4().hex[:10]}"
    admin, url = _pg_database(name)
    yield url
    from clearmark.workers.db import get_engine

    get_engine(url).dispose()
    _drop_pg_database(admin, name)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'clearmark.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A migrated database, on each backend in turn."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    migrate.upgrade(url)
    return url


@pytest.fixture
def settings(tmp_path, db_url):
    """Settings for this test: its own database, storage and data dir."""
    s = Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        storage_uri=(tmp_path / "storage").as_uri(),
        broker_url=REDIS_URL,
    )
    set_settings(s)
    yield s
    set_settings(None)


@pytest.fixture
def redis_url():
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Redis at {REDIS_URL} is not usable: {exc}")
    # No flushdb: tests isolate themselves by queue name (other runs may share this db).
    yield REDIS_URL


GROCERY_SUBSETS = ("iconic", "natural")


@pytest.fixture(scope="session")
def grocery_data(tmp_path_factory):
    """A data dir (pass it as `data_dir` / `--data`) whose grocery/iconic and
    grocery/natural hold a few small generated JPEG photos, at least 3 in each split
    (`models.scenes.photo_list`), so tests need no `../shared/data`. The photos are
    procedural scenes plus film grain, drawn from fixed seeds: the same every run."""
    import cv2
    import numpy as np

    from clearmark.models.scenes import _is_eval, studio_scene

    root = tmp_path_factory.mktemp("data")
    for s, subset in enumerate(GROCERY_SUBSETS):
        folder = root / "grocery" / subset
        folder.mkdir(parents=True)
        counts = {True: 0, False: 0}
        i = 0
        while min(counts.values()) < 3:
            name = f"{subset}_{i:03d}.jpg"
            rng = np.random.default_rng([s, i])
            h, w = [(96, 128), (128, 96), (112, 112)][i % 3]
            rgb, _ = studio_scene(rng, h, w, max(h, w))
            grain = rng.normal(0, 4, rgb.shape)
            rgb = np.clip(rgb + grain, 0, 255).astype(np.uint8)
            cv2.imwrite(
                str(folder / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
            )
            counts[_is_eval(name)] += 1
            i += 1
    return root
