"""How the engine cache writes its files: whole or not at all, one builder at a time.

- `atomic_write` (and `temporary_beside` for writers that need a path): the data goes to
  a temporary name in the same folder and is renamed over the target, so a reader sees
  the old file, the new one or none, never part of one; a failed write leaves nothing.
- `build_lock(target)`: an OS file lock beside the target (`<name>.lock`), held while a
  process builds it. A second process asking for the same file waits, then finds it
  built. The kernel releases the lock when its holder dies, so a killed build never
  leaves the file locked.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock


@contextlib.contextmanager
def temporary_beside(path: Path) -> Iterator[Path]:
    """A fresh temporary file next to `path`; renamed onto `path` when the block ends
    normally, deleted when it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: Path, data: bytes) -> None:
    with temporary_beside(path) as tmp:
        tmp.write_bytes(data)


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def build_lock(path: Path, timeout: float = -1) -> Iterator[None]:
    """Hold the build lock of `path` (waiting for it; `timeout` seconds at most, -1: no
    limit, then filelock.Timeout)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path(path), timeout=timeout):
        yield
