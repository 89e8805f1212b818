"""`deferred`: what a command runs (PyTorch, Celery, SQLAlchemy...) is imported when it
runs, so that its `--help` starts in a fraction of a second (tests/test_imports.py checks
every command's).

A command module names each such module twice: in an `if TYPE_CHECKING:` block, the
import that the type checker and the import-direction tests read, and under its `else:`
as `name = deferred("module")`, what runs (tests/test_imports.py keeps the two in step).
"""

from __future__ import annotations

import importlib
from typing import Any


class _Deferred:
    def __init__(self, module: str) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module(self._module), name)

    def __repr__(self) -> str:
        return f"<deferred module {self._module!r}>"


def deferred(module: str) -> Any:
    """The module `module`, imported on first use of one of its names."""
    return _Deferred(module)
