"""The shipped weights as files: where they are, their manifest and their hashes. No
torch here: the API and the job records need the hashes, never the networks."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
KINDS = ("detector", "remover")


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")


def weights_path(kind: str, weights_dir: Path | None = None) -> Path:
    check_kind(kind)
    return Path(weights_dir or WEIGHTS_DIR) / f"{kind}.pt"


def read_manifest(weights_dir: Path | None = None) -> dict:
    """manifest.json of a weights directory ({} when there is none)."""
    path = Path(weights_dir or WEIGHTS_DIR) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def architecture(kind: str, weights_dir: Path | None = None) -> dict:
    """Constructor arguments recorded in the manifest (defaults when absent)."""
    return dict(read_manifest(weights_dir).get(kind, {}).get("architecture", {}))


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file; remembered until the file's size or mtime changes
    (workers ask for the weights' hash on every job)."""
    st = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=64)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(kind: str, weights_dir: Path | None = None) -> str:
    path = weights_path(kind, weights_dir)
    return file_sha256(path) if path.exists() else "untrained"


class MissingWeights(FileNotFoundError):
    """A weights file that should be there is not: never fall back to untrained weights."""
