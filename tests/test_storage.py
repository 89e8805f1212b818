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
