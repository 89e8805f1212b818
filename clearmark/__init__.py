"""clearmark: find and remove visible watermarks, logos and overlaid text from product photos.

One installed package. Its subpackages live in folders at the repository root
(pyproject.toml maps them), layered so that imports run one way only:

    clearmark.settings, clearmark.errors   configuration and errors (the core)
    clearmark.models                       networks, synthetic data, training, evaluation
    clearmark.engine_build                 ONNX export, TensorRT engines, backends
    clearmark.pipeline                     the image pipeline, for the service and evaluation
    clearmark.workers                      Celery tasks, database, storage, API, CLI
    clearmark.migrations                   Alembic (uses the database models)

tests/test_imports.py keeps that direction.
"""
