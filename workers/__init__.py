"""clearmark's service side: Celery app and tasks, database, storage, API, CLI (the image
pipeline is `clearmark.pipeline`)."""
