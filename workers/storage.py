"""Object storage behind fsspec URIs: a local directory by default, S3/MinIO in compose.

Keys are relative, slash-separated names inside the storage root; a key that could escape
the root (`..`, absolute paths, backslashes, empty parts) is rejected.
"""

from __future__ import annotations

import logging
import posixpath
import uuid
from collections.abc import Iterator
from functools import lru_cache
from urllib.parse import unquote

import fsspec
from fsspec import AbstractFileSystem  # fsspec is untyped: Any to mypy, named for the reader

from clearmark.errors import BadInput, TransientError
from clearmark.settings import get_settings

log = logging.getLogger(__name__)


class UnsafeKey(BadInput):
    code = "unsafe_key"


def check_key(key: str) -> str:
    if not key or key.startswith(("/", "~")) or "\\" in key or "\x00" in key or ":" in key:
        raise UnsafeKey(f"storage key {key!r} is not a relative path")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeKey(f"storage key {key!r} has an empty, '.' or '..' part")
    return key


class Storage:
    def __init__(self, root_uri: str):
        self.root_uri = root_uri.rstrip("/")

    def uri(self, key: str) -> str:
        return f"{self.root_uri}/{check_key(key)}"

    def put(self, key: str, data: bytes) -> str:
        """Write bytes under `key`; returns the object's URI."""
        uri = self.uri(key)
        write_uri(uri, data)
        return uri


def _fs_path(uri: str) -> tuple[AbstractFileSystem, str]:
    """(filesystem, path) of a URI. A `file://` URI is percent-decoded first, as RFC 8089
    asks (fsspec takes it literally): `Path.as_uri()` writes a space as %20, `#` as %23."""
    if uri.startswith("file://"):
        uri = "file://" + unquote(uri.removeprefix("file://"))
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def read_uri(uri: str, max_bytes: int | None = None) -> bytes:
    """The object's bytes. Missing objects are bad input; I/O hiccups are transient."""
    try:
        fs, path = _fs_path(uri)
        with fs.open(path, "rb") as f:
            data: bytes = f.read(max_bytes + 1 if max_bytes else -1)
    except FileNotFoundError as exc:
        raise BadInput(f"source not found: {uri}", code="source_missing") from exc
    except IsADirectoryError as exc:
        raise BadInput(f"source is a directory: {uri}", code="source_missing") from exc
    except OSError as exc:
        raise TransientError(f"cannot read {uri}: {exc}") from exc
    if max_bytes and len(data) > max_bytes:
        raise BadInput(f"file is larger than {max_bytes} bytes", code="too_large_bytes")
    return data


def iter_uri(uri: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The object's bytes in chunks (for streaming responses). Opens eagerly, so a missing
    object raises FileNotFoundError here rather than in the middle of a response."""
    fs, path = _fs_path(uri)
    f = fs.open(path, "rb")

    def chunks() -> Iterator[bytes]:
        with f:
            while chunk := f.read(chunk_size):
                yield chunk

    return chunks()


def write_uri(uri: str, data: bytes) -> None:
    """Write atomically where the filesystem allows (local: temp file + rename)."""
    fs, path = _fs_path(uri)
    try:
        if "file" in fs.protocol or "local" in fs.protocol:
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
            # Unique (concurrent writers of one key) and short: a name near the 255-byte
            # limit must still be writable.
            tmp = f"{posixpath.dirname(path)}/.{uuid.uuid4().hex}.part"
            with fs.open(tmp, "wb") as f:
                f.write(data)
            fs.mv(tmp, path)
        else:
            with fs.open(path, "wb") as f:
                f.write(data)
    except OSError as exc:
        raise TransientError(f"cannot write {uri}: {exc}") from exc


def delete_uri(uri: str) -> None:
    """Remove an object if it is there; never raises (a leftover file harms nothing)."""
    try:
        fs, path = fsspec.core.url_to_fs(uri)
        if fs.exists(path):
            fs.rm(path)
    except Exception:  # noqa: BLE001
        log.warning("could not delete %s", uri, exc_info=True)


@lru_cache(maxsize=4)
def _storage(root_uri: str) -> Storage:
    return Storage(root_uri)


def get_storage() -> Storage:
    return _storage(get_settings().storage_uri)
