"""What a worker (and every command on the service's database) checks before it starts. A
worker on another database than the one its jobs were written to cannot claim them: each
task fails there, and the job stays `queued` in the real database with nothing left to run
it. A worker that cannot load its engines would take tasks and fail each one the same way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from clearmark.errors import BUILD_ENGINES_COMMAND, EngineUnavailable, ServiceUnavailable
from clearmark.settings import DEFAULT_BROKER_URL, Settings, default_database_url
from clearmark.workers import migrate
from clearmark.workers.transient import DATABASE_ERRORS

CANNOT_LOAD = "engines cannot load"  # how `clearmark engines check` and a worker say it


def safe_url(url: str) -> str:
    """`url` with its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def describe(settings: Settings) -> str:
    """Which broker and database a worker uses, and whether each is the default."""

    def origin(default: bool, variable: str) -> str:
        return f"default; set {variable} for another" if default else f"from {variable}"

    s = settings
    db_default = s.database_url == default_database_url(s.data_dir)
    return (
        f"broker   {safe_url(s.broker_url)} "
        f"({origin(s.broker_url == DEFAULT_BROKER_URL, 'CLEARMARK_BROKER_URL')})\n"
        f"database {safe_url(s.database_url)} "
        f"({origin(db_default, 'CLEARMARK_DATABASE_URL')})"
    )


def worker_problems(settings: Settings) -> list[str]:
    """Why a worker must not start with these settings (empty: it may)."""
    s = settings
    db_default = s.database_url == default_database_url(s.data_dir)
    broker_default = s.broker_url == DEFAULT_BROKER_URL
    if db_default and not broker_default:
        return [
            f"the broker is set ({safe_url(s.broker_url)}) but the database is the "
            f"default local SQLite file ({s.database_url}): set CLEARMARK_DATABASE_URL "
            "to the database that `clearmark submit` and the API write jobs to"
        ]
    if broker_default and not db_default:
        return [
            f"the database is set ({safe_url(s.database_url)}) but the broker is the "
            f"default ({DEFAULT_BROKER_URL}): set CLEARMARK_BROKER_URL to the broker "
            "that `clearmark submit` and the API send tasks to"
        ]
    try:
        problem = schema_problem(s)
    except Exception as exc:  # noqa: BLE001 - unreachable, wrong password, not a database
        return [f"cannot read the database {safe_url(s.database_url)}: {type(exc).__name__}: {exc}"]
    return [problem] if problem else []


def schema_problem(settings: Settings) -> str | None:
    """Why the service's commands cannot use the database yet (None: it is at this code's
    migration). ServiceUnavailable when it cannot be reached."""
    url = settings.database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return (
            f"there is no database at {url.removeprefix('sqlite:///')} yet: run `clearmark db "
            "upgrade` (or `clearmark clean`, which makes it), or set CLEARMARK_DATABASE_URL"
        )
    try:
        current, head = migrate.revisions(url)
    except DATABASE_ERRORS as exc:
        raise ServiceUnavailable("database", f"{safe_url(url)}: {str(exc).splitlines()[0]}") from None
    if current != head:
        return (
            f"the database {safe_url(url)} is at migration {current or '(none)'}, this code "
            "expects {head}: run `clearmark db upgrade` with the same CLEARMARK_DATABASE_URL"
        ).replace("{head}", str(head))
    return None


def runs_images(queues: str, settings: Settings) -> bool:
    """Whether a worker on these comma-separated queues cleans images (and so needs engines);
    one on the webhooks queue alone does not."""
    return bool({q.strip() for q in queues.split(",")} & {settings.queue_uploads, settings.queue_bulk})


def check_engines(settings: Settings) -> str:
    """What the engines are (their version), loaded as a worker's child would load them but
    in a process of their own (`clearmark engines check`): the worker's main process must not
    load them (CUDA state does not survive a fork). EngineUnavailable names why they cannot
    load. With CLEARMARK_WORKER_BUILD_BUDGET_S it first builds what is missing (`--build`,
    under the engines' build locks, so the children only load), within that many seconds."""
    command = [sys.executable, "-m", "clearmark", "engines", "check"]
    budget = settings.worker_build_budget_s
    try:
        done = subprocess.run(
            command + (["--build"] if budget else []), capture_output=True, text=True, timeout=budget or None
        )
    except subprocess.TimeoutExpired:
        raise EngineUnavailable(
            f"the engines were not built within CLEARMARK_WORKER_BUILD_BUDGET_S={budget} s: "
            f"build them with `{BUILD_ENGINES_COMMAND}`, or give workers more time"
        ) from None
    if done.returncode == 0:
        return done.stdout.strip()
    said = (done.stderr.strip().splitlines() or [""])[-1]
    if said.startswith(f"Error: {CANNOT_LOAD}: "):
        raise EngineUnavailable(said.removeprefix(f"Error: {CANNOT_LOAD}: "))
    raise EngineUnavailable(
        f"`clearmark engines check` ended with status {done.returncode}" + (f": {said}" if said else "")
    )
