"""Hostile and odd files: each ends in BadInput with its code, or is processed correctly.

The cases come from tests/badfiles.py, which the end-to-end Celery tests reuse.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from clearmark.errors import BadInput
from clearmark.pipeline.imaging import decode_image
from clearmark.pipeline.process import process_image
from tests.badfiles import bad_files, encode, photo
from tests.test_pipeline import BoxDetector, GreyRemover, cfg, fake_engines

CASES = bad_files()
FAILING = sorted(k for k, (_, code) in CASES.items() if code)
PASSING = sorted(k for k, (_, code) in CASES.items() if code is None)
CODES = {
    "empty_file",
    "too_large_bytes",
    "not_an_image",
    "corrupt_image",
    "truncated_image",
    "too_many_pixels",
    "decompression_bomb",
    "too_small",
    "unsupported_mode",
}


def engines():
    return fake_engines(detector=BoxDetector(), remover=GreyRemover())


@pytest.mark.parametrize("name", FAILING)
def test_bad_file_fails_with_its_code(name):
    data, code = CASES[name]
    assert code in CODES
    with pytest.raises(BadInput) as err:
        process_image(data, engines(), cfg())
    assert err.value.code == code, str(err.value)
    assert str(err.value)  # a readable reason for the job row


@pytest.mark.parametrize("name", PASSING)
def test_odd_file_is_processed(name):
    data, _ = CASES[name]
    r = process_image(data, engines(), cfg(detector_absent_below=1.01))
    assert r.status == "succeeded"
    out = Image.open(io.BytesIO(r.image_bytes))
    out.load()
    # every case is a 128x96 picture as a viewer shows it (a rotated JPEG keeps its tag,
    # and its mask carries the same one)
    assert ImageOps.exif_transpose(out).size == (128, 96)
    mask = Image.open(io.BytesIO(r.mask_png))
    assert ImageOps.exif_transpose(mask).size == (128, 96) and mask.size == out.size
    assert r.extension == Path(name).suffix  # same format as the input
    assert out.format == {".jpg": "JPEG", ".png": "PNG", ".gif": "GIF"}[r.extension]


def test_oversized_headers_are_refused_before_any_pixel_is_decoded(monkeypatch):
    loads = []
    original = ImageFile.ImageFile.load

    def spy(self):
        loads.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    for name in ("huge_header.png", "bomb.png", "big_header.png"):
        with pytest.raises(BadInput):
            decode_image(CASES[name][0], cfg())
    assert loads == []
    decode_image(encode(Image.fromarray(photo(32, 32)), "PNG"), cfg())
    assert loads and set(loads) == {(32, 32)}  # the spy does see real loads


def test_byte_limit():
    data = encode(Image.fromarray(photo(64, 48)), "PNG")
    with pytest.raises(BadInput) as err:
        decode_image(data, cfg(max_bytes=len(data) - 1))
    assert err.value.code == "too_large_bytes"
    decode_image(data, cfg(max_bytes=len(data)))


def test_pixel_and_side_limits_come_from_settings():
    data = encode(Image.fromarray(photo(64, 48)), "PNG")
    with pytest.raises(BadInput) as err:
        decode_image(data, cfg(max_pixels=64 * 48 - 1))
    assert err.value.code == "too_many_pixels"
    with pytest.raises(BadInput) as err:
        decode_image(data, cfg(min_side=49))
    assert err.value.code == "too_small"
    assert decode_image(data, cfg(max_pixels=64 * 48, min_side=48)).size == (64, 48)


def test_truncated_stays_an_error_even_if_someone_enabled_padding():
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(BadInput) as err:
            decode_image(CASES["truncated.jpg"][0], cfg())
        assert err.value.code == "truncated_image"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def test_float_tiff_is_unsupported_mode():
    data = encode(Image.fromarray(np.random.default_rng(0).random((32, 32), np.float32)), "TIFF")
    with pytest.raises(BadInput) as err:
        decode_image(data, cfg())
    assert err.value.code == "unsupported_mode"


def _mutations(data: bytes, n: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 6))):
            pos = int(rng.integers(0, len(b)))
            op = rng.integers(0, 3)
            if op == 0:
                b[pos] = int(rng.integers(0, 256))
            elif op == 1:
                del b[pos : pos + int(rng.integers(1, 50))]
            else:
                b[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 20)), dtype=np.uint8).tobytes()
        yield bytes(b)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_mangled_files_never_raise_anything_but_bad_input(fmt):
    """Random byte flips, cuts and insertions: processed, or BadInput with a known code."""
    src = Image.fromarray(photo(64, 48))
    data = encode(src.convert("P") if fmt == "GIF" else src, fmt)
    eng, s = engines(), cfg(detector_absent_below=1.01)
    for i, bad in enumerate(_mutations(data, 80, seed=len(fmt))):
        try:
            process_image(bad, eng, s)
        except BadInput as exc:
            assert exc.code in CODES, (i, exc.code, str(exc))
