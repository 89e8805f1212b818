"""Fixtures for real services: a fresh PostgreSQL database per test, queues of its own on
the test Redis database, worker processes; and a small generated photo directory standing
in for the grocery data.

PostgreSQL and Redis must be running (`.ci/run` starts them). Set
CLEARMARK_TEST_PG_ADMIN_URL / CLEARMARK_TEST_REDIS_URL to point elsewhere. Tests leave
nothing behind: each drops its databases and deletes its Redis keys, and the run removes
its engine cache.
The real data (`models.scenes.DEFAULT_DATA`, `../shared/data` beside the checkout) is not
part of the repository: tests that synthesise from photos use `grocery_data` instead, and
the few that check the real data itself skip without it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid

import pytest
import redis
from kombu.transport.redis import Channel as KombuChannel
from sqlalchemy import create_engine, text

from clearmark.settings import Settings, set_settings
from clearmark.workers import migrate
from tests.services import Worker

PG_ADMIN_URL = os.environ.get(
    "CLEARMARK_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("CLEARMARK_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
# One engine cache (exported ONNX files) for the whole run and its worker subprocesses,
# so the export happens once rather than in every test's fresh data dir; removed when the
# run ends (one the caller names in CLEARMARK_ENGINE_DIR is the caller's, and stays).
ENGINE_DIR = None if "CLEARMARK_ENGINE_DIR" in os.environ else tempfile.mkdtemp(prefix="clearmark-engines-")
if ENGINE_DIR:
    os.environ["CLEARMARK_ENGINE_DIR"] = ENGINE_DIR
# The tests' workers make those exports on their first start; production workers only load
# what `clearmark engines build` made (tests/test_worker_engines.py runs one such worker).
os.environ.setdefault("CLEARMARK_WORKER_BUILD_BUDGET_S", "900")


def pytest_sessionfinish(session, exitstatus):
    if ENGINE_DIR:
        shutil.rmtree(ENGINE_DIR)


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
def settings(tmp_path, db_url, queues):
    """Settings for this test: its own database, storage, data dir and queues."""
    s = Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        storage_uri=(tmp_path / "storage").as_uri(),
        broker_url=REDIS_URL,
        **queues,
    )
    set_settings(s)
    yield s
    set_settings(None)


@pytest.fixture
def redis_url():
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Redis at {REDIS_URL} is not usable: {exc}")
    finally:
        client.close()
    yield REDIS_URL


@pytest.fixture
def no_shared_data(monkeypatch, tmp_path):
    """A clone's view: no ../shared/data beside the checkout (`models.scenes.DEFAULT_DATA`,
    which every default reads when it runs, names a folder that does not exist)."""
    missing = tmp_path / "no-shared-data"
    monkeypatch.setattr("clearmark.models.scenes.DEFAULT_DATA", missing)
    return missing


@pytest.fixture
def queues():
    """The settings' queue names of this test alone (`queue_uploads`, ...), so that
    concurrent runs on one Redis never take each other's tasks. No flushdb, for the same
    reason: at teardown the test's own keys go (`forget_queues`)."""
    run = uuid.uuid4().hex[:12]
    yield {f"queue_{q}": f"clearmark.{q}.{run}" for q in ("uploads", "bulk", "webhooks")}
    forget_queues(run)


# Drops kombu's binding deadlines whose binding tables are gone (every consumer of them,
# e.g. a worker's remote-control queue, has stopped); atomic, so that a binding another
# run refreshes meanwhile keeps its deadline.
DROP_STALE_DEADLINES = """
for _, exchange in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if redis.call('EXISTS', ARGV[1] .. exchange, ARGV[2] .. exchange) == 0 then
        redis.call('ZREM', KEYS[1], exchange)
    end
end
"""


def forget_queues(run: str) -> None:
    """Delete every key naming the queues tagged `run` (the queues with any tasks left,
    their priority lists, kombu's binding tables), their unacknowledged messages, and the
    deadlines of bindings nobody consumes any more."""
    from clearmark.workers.broker import UNACKED_KEY  # after CLEARMARK_ENGINE_DIR is set

    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=f"*.{run}*", count=1000))
        if keys:
            client.delete(*keys)
        # An unacknowledged message is [message, exchange, routing key]: the key is the queue.
        tags = [tag for tag, raw in client.hscan_iter(UNACKED_KEY) if run.encode() in raw]
        if tags:
            client.hdel(UNACKED_KEY, *tags)
            client.zrem(f"{UNACKED_KEY}_index", *tags)
        tables = (KombuChannel.keyprefix_queue % "", KombuChannel.keyprefix_binding_permanent % "")
        client.eval(DROP_STALE_DEADLINES, 1, KombuChannel.keyprefix_binding_deadlines, *tables)


@pytest.fixture
def service(tmp_path, pg_url, redis_url, queues):
    """Settings for real worker processes: a migrated PostgreSQL database, the test's own
    queues, and time limits above what a loaded machine needs for one image."""
    from clearmark.workers.celery_app import app, configure  # after CLEARMARK_ENGINE_DIR is set

    migrate.upgrade(pg_url)
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=pg_url,
        storage_uri=(tmp_path / "storage").as_uri(),
        broker_url=redis_url,
        visibility_timeout_s=120,  # above the hard time limit (a task still running is not re-delivered)
        soft_time_limit_s=100,
        hard_time_limit_s=110,
        **queues,
    )
    set_settings(settings)
    configure(app, settings)
    yield settings
    set_settings(None)


@pytest.fixture
def workers(tmp_path):
    """start(settings, name="w", *args): a `clearmark worker` (extra options such as -Q or
    -P in args), stopped at teardown."""
    started = []

    def start(settings, name="w", *args):
        worker = Worker(settings, tmp_path / f"{name}-{len(started)}.log", name, *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
    # A worker killed with SIGKILL could not unbind its remote-control queue (its gossip
    # queue's binding, named at random, stays until kombu sweeps it: an hour unused).
    killed = tuple(f"{w.node}.celery.pidbox".encode() for w in started if w.killed)
    if killed:
        with redis.Redis.from_url(REDIS_URL) as client:
            table = KombuChannel.keyprefix_queue % "celery.pidbox"
            stale = [m for m in client.smembers(table) if m.endswith(killed)]
            if stale:
                client.srem(table, *stale)


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
