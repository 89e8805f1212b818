"""clearmark's service side: pipeline, Celery app and tasks, database, storage, CLI."""
