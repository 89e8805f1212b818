"""clearmark: find and remove visible watermarks, logos and overlaid text from product photos.

One installed package. Its subpackages live in folders at the repository root
(pyproject.toml maps them), layered so that imports run one way only:

    clearmark.settings, clearmark.errors   configuration and errors (the core)
    clearmark.models                       networks, synthetic data, training, evaluation
    clearmark.engine_build                 ONNX export, TensorRT engines, backends
    clearmark.workers                      pipeline, Celery tasks, database, API, CLI
    clearmark.migrations                   Alembic (uses the database models)

tests/test_imports.py keeps that direction.
"""
