import pytest

from clearmark.errors import BadInput
from clearmark.workers.storage import Storage, UnsafeKey, read_uri


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


def test_a_name_at_the_file_system_limit_is_written_whole(tmp_path):
    """The temporary file of an atomic write has a short name of its own: an output named
    like its upload, 255 bytes long, is written and nothing is left beside it."""
    name = "é" * 125 + ".png"  # 254 bytes
    Storage(tmp_path.as_uri()).put(f"out/{name}", b"hello")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [name]
    assert (tmp_path / "out" / name).read_bytes() == b"hello"
