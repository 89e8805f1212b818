"""Apply Alembic migrations programmatically (`clearmark db upgrade|downgrade|current`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import clearmark.migrations
from clearmark.settings import get_settings
from clearmark.workers.db import get_engine

MIGRATIONS_DIR = Path(clearmark.migrations.__file__).resolve().parent


def alembic_config(database_url: str | None = None) -> Config:
    url = database_url or get_settings().database_url
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def current(database_url: str | None = None) -> None:
    command.current(alembic_config(database_url), verbose=True)


def revisions(database_url: str | None = None) -> tuple[str | None, str | None]:
    """(the database's Alembic revision, or None when it has none; this code's head, None
    only without any migration)."""
    url = database_url or get_settings().database_url
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision(), head
