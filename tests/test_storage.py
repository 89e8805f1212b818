import errno

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem

from clearmark.errors import BadInput, StorageUnavailable, TransientError
from clearmark.workers.storage import Storage, UnsafeKey, iter_uri, read_uri, write_uri


@pytest.mark.parametrize(
    "key", ["../x", "a/../../x", "/etc/passwd", "a//b", "", "./a", "a\\..\\b", "s3://bucket/x", "a/./b"]
)
def test_unsafe_keys_rejected(tmp_path, key):
    with pytest.raises(UnsafeKey):
        Storage(tmp_path.as_uri()).put(key, b"x")


def test_put_and_read(tmp_path):
    storage = Storage(tmp_path.as_uri())
    uri = storage.put("results/t1/a.png", b"hello")
    assert (tmp_path / "results/t1/a.png").read_bytes() == b"hello"
    assert read_uri(uri) == b"hello"
    with pytest.raises(BadInput) as err:
        read_uri(uri, max_bytes=3)
    assert err.value.code == "too_large_bytes"
    with pytest.raises(BadInput) as err:
        read_uri(storage.uri("missing.png"))
    assert err.value.code == "source_missing"


def disk_fills_up(monkeypatch) -> None:
    """Every local write stores half its bytes, then fails as a full disk does."""

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LocalFileOpener, "write", write)


def test_a_full_disk_is_an_outage_and_leaves_no_partial_file(tmp_path, monkeypatch):
    storage = Storage(tmp_path.as_uri())
    storage.put("results/a.png", b"old result")
    disk_fills_up(monkeypatch)
    for key in ("results/a.png", "results/b.png"):
        with pytest.raises(StorageUnavailable) as err:
            storage.put(key, b"x" * 1000)
        assert err.value.code == "storage_unavailable" and isinstance(err.value, TransientError)
        assert "No space left on device" in err.value.message and key in err.value.message
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["a.png"]  # no .part files
    assert (tmp_path / "results/a.png").read_bytes() == b"old result"


def test_a_write_cut_short_by_the_soft_time_limit_leaves_no_partial_file(tmp_path, monkeypatch):
    def write(self, data):
        self.f.write(data[:10])
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(LocalFileOpener, "write", write)
    with pytest.raises(SoftTimeLimitExceeded):
        Storage(tmp_path.as_uri()).put("results/a.png", b"x" * 1000)
    assert list((tmp_path / "results").iterdir()) == []


def _failing_open(monkeypatch, exc: OSError) -> None:
    def open_(self, path, mode="rb", **kwargs):
        raise exc

    monkeypatch.setattr(LocalFileSystem, "_open", open_)


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.EROFS, "Read-only file system"),
        OSError(errno.EIO, "Input/output error"),
        OSError(errno.EREMOTEIO, "We encountered an internal error"),  # s3fs: an S3 500
        OSError(errno.EBUSY, "Please reduce your request rate"),  # s3fs: an S3 503 / SlowDown
        TimeoutError("read timed out"),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        OSError("Read timeout on endpoint URL"),  # botocore's timeouts: no errno
    ],
    ids=str,
)
def test_storage_outages_are_storage_unavailable(tmp_path, monkeypatch, exc):
    uri = Storage(tmp_path.as_uri()).uri("sources/a.png")
    _failing_open(monkeypatch, exc)
    for attempt in (lambda: read_uri(uri), lambda: write_uri(uri, b"x"), lambda: iter_uri(uri)):
        with pytest.raises(StorageUnavailable):
            attempt()


def test_a_refused_write_is_an_outage_a_refused_read_a_fault_of_that_object(tmp_path, monkeypatch):
    uri = Storage(tmp_path.as_uri()).uri("sources/a.png")
    _failing_open(monkeypatch, PermissionError(errno.EACCES, "Permission denied"))
    with pytest.raises(StorageUnavailable):
        write_uri(uri, b"x")
    with pytest.raises(TransientError) as err:
        read_uri(uri)
    assert not isinstance(err.value, StorageUnavailable)


def test_a_file_where_a_folder_should_be_is_not_an_outage(tmp_path):
    (tmp_path / "results").write_text("a file, not a folder")
    with pytest.raises(TransientError) as err:
        Storage(tmp_path.as_uri()).put("results/a.png", b"x")
    assert not isinstance(err.value, StorageUnavailable) and "cannot write" in err.value.message


def test_a_name_at_the_file_system_limit_is_written_whole(tmp_path):
    """The temporary file of an atomic write has a short name of its own: an output named
    like its upload, 255 bytes long, is written and nothing is left beside it."""
    name = "é" * 125 + ".png"  # 254 bytes
    Storage(tmp_path.as_uri()).put(f"out/{name}", b"hello")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [name]
    assert (tmp_path / "out" / name).read_bytes() == b"hello"
