"""Object storage behind fsspec URIs: a local directory by default, S3/MinIO in compose.

Keys are relative, slash-separated names inside the storage root; a key that could escape
the root (`..`, absolute paths, backslashes, empty parts, `%`, control characters) is
rejected. A source URI given by a tenant is judged by `tenant_source_uri` exactly as
storage will resolve it: decoded once, its real path (symlinks followed) inside the
tenant's own prefix.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import re
import stat
import uuid
from collections.abc import Iterator
from functools import lru_cache
from urllib.parse import unquote

import fsspec
from fsspec import AbstractFileSystem  # fsspec is untyped: Any to mypy, named for the reader

from clearmark.errors import BadInput, StorageUnavailable, TransientError
from clearmark.settings import get_settings

log = logging.getLogger(__name__)
# What an outage of the storage as a whole looks like (s3fs turns an S3 500 into EREMOTEIO
# and a 503 or SlowDown into EBUSY), as opposed to a fault of one object.
OUTAGE_ERRNOS = frozenset(
    {
        errno.EROFS,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EIO,
        errno.EREMOTEIO,
        errno.EBUSY,
        errno.EAGAIN,
        errno.ESTALE,
        errno.ETIMEDOUT,
    }
)


class UnsafeKey(BadInput):
    code = "unsafe_key"


class InvalidSourceUri(BadInput):
    code = "invalid_source_uri"


# `%` too: a key is decoded once (file:// URIs) and must then be plain, so that no second
# decoding anywhere can turn it into another path.
_NOT_IN_KEYS = re.compile(r"[\x00-\x1f\x7f\\:%]")


def check_key(key: str) -> str:
    if not key or key.startswith(("/", "~")) or _NOT_IN_KEYS.search(key):
        raise UnsafeKey(f"storage key {key!r} is not a plain relative path")
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


def _is_local(fs: AbstractFileSystem) -> bool:
    return "file" in fs.protocol or "local" in fs.protocol


def tenant_source_uri(uri: str, tenant_id: str) -> str:
    """The canonical URI of a tenant's own source object named by `uri`, or InvalidSourceUri.

    The part after the storage root is decoded as storage reads it (`_fs_path`), must then
    be a plain key under `sources/<tenant>/`, and, on local storage, its real path (every
    symlink followed) must stay under the tenant's real prefix and be a regular file. Every
    refusal is the same error whatever exists on the host; a missing object inside the
    tenant's own prefix is `source_missing`."""
    storage = get_storage()
    prefix = f"sources/{tenant_id}/"
    refused = InvalidSourceUri(
        f"source_uri must name a file inside the storage under {storage.root_uri}/{prefix}"
    )
    root = storage.root_uri + "/"
    key = _as_read(uri)[len(_as_read(root)) :] if uri.startswith(root) else ""
    try:
        check_key(key)
    except UnsafeKey:
        raise refused from None
    if not key.startswith(prefix):
        raise refused
    fs, root_path = _fs_path(storage.root_uri)
    if not _is_local(fs):
        return storage.uri(key)
    real_root = os.path.realpath(root_path)
    real = os.path.realpath(os.path.join(root_path, key))
    if not real.startswith(os.path.join(real_root, prefix)):
        raise refused
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise BadInput(f"source not found: {uri}", code="source_missing") from None
    except OSError:
        raise refused from None
    if not stat.S_ISREG(mode):
        raise refused
    try:  # a symlink inside the tenant's prefix: the job names its target
        return storage.uri(os.path.relpath(real, real_root))
    except UnsafeKey:
        raise refused from None


def job_source_uri(uri: str, tenant_id: str) -> str:
    """The source a job of this tenant may read: inside storage, only the tenant's own
    prefix (`tenant_source_uri`); outside it (an operator's `bulk` from a bucket), as given."""
    if uri.startswith(get_storage().root_uri + "/"):
        return tenant_source_uri(uri, tenant_id)
    return uri


def _as_read(uri: str) -> str:
    """The URI as storage resolves it: a `file://` URI percent-decoded once, as RFC 8089
    asks (fsspec takes it literally): `Path.as_uri()` writes a space as %20, `#` as %23."""
    if uri.startswith("file://"):
        return "file://" + unquote(uri.removeprefix("file://"))
    return uri


def _fs_path(uri: str) -> tuple[AbstractFileSystem, str]:
    """(filesystem, path) of a URI, decoded as `_as_read` says."""
    fs, path = fsspec.core.url_to_fs(_as_read(uri))
    return fs, path


def storage_error(exc: OSError, what: str, writing: bool = False) -> TransientError:
    """What a failed read or write raises: StorageUnavailable for an outage (the errnos
    above, timeouts and connection errors, an OSError without an errno, as botocore's
    timeouts are, and a refused write: a read-only folder when not root, S3 AccessDenied),
    else a TransientError, which spends the job's attempt."""
    outage = (
        exc.errno is None
        or exc.errno in OUTAGE_ERRNOS
        or isinstance(exc, (TimeoutError, ConnectionError))
        or (writing and isinstance(exc, PermissionError))
    )
    return (StorageUnavailable if outage else TransientError)(f"{what}: {exc}")


def read_uri(uri: str, max_bytes: int | None = None) -> bytes:
    """The object's bytes. Missing objects are bad input; I/O errors are storage_error's."""
    try:
        fs, path = _fs_path(uri)
        with fs.open(path, "rb") as f:
            data: bytes = f.read(max_bytes + 1 if max_bytes else -1)
    except FileNotFoundError as exc:
        raise BadInput(f"source not found: {uri}", code="source_missing") from exc
    except IsADirectoryError as exc:
        raise BadInput(f"source is a directory: {uri}", code="source_missing") from exc
    except OSError as exc:
        raise storage_error(exc, f"cannot read {uri}") from exc
    if max_bytes and len(data) > max_bytes:
        raise BadInput(f"file is larger than {max_bytes} bytes", code="too_large_bytes")
    return data


def iter_uri(uri: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The object's bytes in chunks (for streaming responses). Opens eagerly, so a missing
    object raises FileNotFoundError (and an outage StorageUnavailable) here rather than in
    the middle of a response."""
    fs, path = _fs_path(uri)
    try:
        f = fs.open(path, "rb")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise storage_error(exc, f"cannot read {uri}") from exc

    def chunks() -> Iterator[bytes]:
        with f:
            while chunk := f.read(chunk_size):
                yield chunk

    return chunks()


def write_uri(uri: str, data: bytes) -> None:
    """Write atomically where the filesystem allows (local: temp file + rename). Errors are
    storage_error's."""
    fs, path = _fs_path(uri)
    try:
        if _is_local(fs):
            _write_local(fs, path, data)
        else:
            with fs.open(path, "wb") as f:
                f.write(data)
    except OSError as exc:
        raise storage_error(exc, f"cannot write {uri}", writing=True) from exc


def _write_local(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Temp file + rename; the temp file is removed whatever stops the write (a full disk,
    a soft time limit), so a failed write leaves nothing behind."""
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    # Unique (concurrent writers of one key) and short: a name near the 255-byte limit
    # must still be writable.
    tmp = f"{posixpath.dirname(path)}/.{uuid.uuid4().hex}.part"
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    except BaseException:
        try:
            fs.rm_file(tmp)
        except OSError:  # never created (a read-only folder), or the folder is gone
            pass
        raise


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
