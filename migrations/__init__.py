"""Alembic migrations: the only way clearmark's schema changes (`clearmark db upgrade`)."""
