"""JPEG results keep the upload's coefficients outside the blocks the change touches.

"Untouched" is checked on decoded pixels against the decoded upload, exactly (0 differing
values), outside the changed MCUs grown by one pixel: with subsampled chroma a decoder's
upsampling interpolates between neighbouring chroma samples, so the pixel next to a
changed MCU can move.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps, JpegImagePlugin

from clearmark.pipeline.imaging import decode_image, encode_image, to_stored
from clearmark.pipeline.jpeg_exact import jpeg_exact_unsupported, reach_of_change
from clearmark.settings import Settings
from tests.badfiles import encode, photo

SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
MCU = {"4:4:4": (8, 8), "4:2:2": (8, 16), "4:2:0": (16, 16)}  # (height, width)


def _decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _paint(rgb: np.ndarray, box: tuple[int, int, int, int], colour=(200, 30, 40)):
    x0, y0, x1, y1 = box
    out, changed = rgb.copy(), np.zeros(rgb.shape[:2], bool)
    out[y0:y1, x0:x1] = colour
    changed[y0:y1, x0:x1] = True
    return out, changed


def _clean(data: bytes, box, settings: Settings | None = None):
    dec = decode_image(data)
    rgb, changed = _paint(dec.rgb, box)
    return encode_image(dec, rgb, changed, settings), changed


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
@pytest.mark.parametrize("sampling", list(SUBSAMPLING))
def test_untouched_blocks_decode_exactly_to_the_upload(sampling, progressive):
    data = encode(
        Image.fromarray(photo(203, 149, seed=5)),
        "JPEG",
        quality=85,
        subsampling=SUBSAMPLING[sampling],
        progressive=progressive,
    )
    enc, changed = _clean(data, (61, 37, 118, 70))
    assert enc.extension == ".jpg" and enc.details["jpeg_exact"] is True
    before, after = _decoded(data), _decoded(enc.data)
    region = reach_of_change(changed, MCU[sampling])
    assert np.array_equal(after[~region], before[~region])
    assert (after != before).any(axis=2)[changed].mean() > 0.9  # the change is there
    assert np.abs(after[changed].astype(int) - (200, 30, 40)).mean() < 6
    mh, mw = MCU[sampling]
    total = -(-149 // mh) * -(-203 // mw)
    assert enc.details["jpeg_blocks_total"] == total
    ys, xs = np.nonzero(changed)
    touched = len({(y // mh, x // mw) for y, x in zip(ys, xs)})
    assert 0 < enc.details["jpeg_blocks_changed"] <= touched
    with Image.open(io.BytesIO(enc.data)) as src, Image.open(io.BytesIO(data)) as up:
        assert src.quantization == up.quantization
        assert JpegImagePlugin.get_sampling(src) == JpegImagePlugin.get_sampling(up)
        assert bool(src.info.get("progressive")) == progressive
    decoded = cv2.imdecode(np.frombuffer(enc.data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape == (149, 203, 3)


def test_cleaning_twice_leaves_the_untouched_blocks_of_the_upload():
    data = encode(Image.fromarray(photo(256, 192, seed=2)), "JPEG", quality=80)
    first, changed_1 = _clean(data, (20, 20, 60, 50))
    second, changed_2 = _clean(first.data, (150, 120, 230, 170))
    region = reach_of_change(changed_1 | changed_2, (16, 16))
    assert np.array_equal(_decoded(second.data)[~region], _decoded(data)[~region])


def test_border_and_whole_image_masks():
    data = encode(Image.fromarray(photo(150, 101, seed=4)), "JPEG", quality=90)
    corner, changed = _clean(data, (120, 80, 150, 101))  # touches two edges
    region = reach_of_change(changed, (16, 16))
    assert np.array_equal(_decoded(corner.data)[~region], _decoded(data)[~region])
    assert corner.details["jpeg_exact"]
    whole, _ = _clean(data, (0, 0, 150, 101))
    assert whole.details["jpeg_blocks_changed"] == whole.details["jpeg_blocks_total"] == 70
    assert np.abs(_decoded(whole.data).astype(int) - (200, 30, 40)).mean() < 6


def test_no_change_returns_the_upload_itself():
    data = encode(Image.fromarray(photo(120, 90)), "JPEG", quality=85)
    dec = decode_image(data)
    enc = encode_image(dec, dec.rgb.copy(), np.zeros(dec.rgb.shape[:2], bool))
    assert enc.data == data and enc.details["jpeg_blocks_changed"] == 0


def test_exif_icc_and_comment_are_kept():
    exif = Image.Exif()
    exif[0x010F] = "clearmark-test"
    icc = b"\0" * 128 + b"fake-profile-bytes"
    data = encode(
        Image.fromarray(photo(160, 120)),
        "JPEG",
        quality=88,
        exif=exif.tobytes(),
        icc_profile=icc,
        comment=b"shot in studio 4",
    )
    enc, _ = _clean(data, (40, 40, 80, 80))
    with Image.open(io.BytesIO(enc.data)) as out:
        assert out.getexif().get(0x010F) == "clearmark-test"
        assert out.info.get("icc_profile") == icc
        assert out.info.get("comment") == b"shot in studio 4"


def test_grey_jpeg_takes_the_exact_path():
    grey = Image.fromarray(photo(128, 96)).convert("L")
    data = encode(grey, "JPEG", quality=85)
    enc, changed = _clean(data, (30, 30, 70, 60))
    with Image.open(io.BytesIO(enc.data)) as out:
        assert out.mode == "L"
        after = np.asarray(out)
    region = reach_of_change(changed, (8, 8))
    assert enc.details["jpeg_exact"] and np.array_equal(
        after[~region], np.asarray(grey_decoded(data))[~region]
    )


def grey_decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.copy()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_to_stored_undoes_the_exif_transpose(orientation):
    stored = photo(40, 24, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    dec = decode_image(encode(Image.fromarray(stored), "PNG", exif=exif.tobytes()))
    assert dec.orientation == orientation
    assert np.array_equal(to_stored(dec.rgb, orientation), stored)


def test_an_exif_rotated_jpeg_keeps_its_tag_and_its_stored_pixels():
    stored = photo(160, 96, seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(stored), "JPEG", quality=88, exif=exif.tobytes())
    dec = decode_image(data)
    assert dec.rgb.shape == (160, 96, 3)  # upright: turned by 90 degrees
    rgb, changed = _paint(dec.rgb, (10, 20, 50, 60))
    enc = encode_image(dec, rgb, changed)
    assert enc.details["jpeg_exact"] and enc.details["orientation"] == 6
    with Image.open(io.BytesIO(enc.data)) as out:
        assert out.getexif().get(0x0112) == 6 and out.size == (160, 96)
        seen = np.asarray(ImageOps.exif_transpose(out))
    region = reach_of_change(to_stored(changed, 6), (16, 16))
    assert np.array_equal(_decoded(enc.data)[~region], _decoded(data)[~region])
    assert np.abs(seen[changed].astype(int) - (200, 30, 40)).mean() < 6  # painted upright


def test_what_cannot_keep_its_coefficients_is_re_encoded_with_a_reason():
    img = Image.fromarray(photo(120, 90))
    cmyk, _ = _clean(encode(img.convert("CMYK"), "JPEG", quality=85), (10, 10, 40, 40))
    assert cmyk.details["jpeg_exact"] is False and "CMYK" in cmyk.details["jpeg_exact_fallback"]
    off, _ = _clean(encode(img, "JPEG", quality=85), (10, 10, 40, 40), Settings(jpeg_exact=False))
    assert off.details == {"jpeg_exact": False}


def test_frame_types_other_than_huffman_dct_are_refused():
    data = bytearray(encode(Image.fromarray(photo(64, 48)), "JPEG", quality=85))
    assert jpeg_exact_unsupported(bytes(data), "JPEG") is None
    sof = bytes(data).index(b"\xff\xc0")
    for marker, reason in ((0xC9, "arithmetic coding"), (0xC3, "lossless JPEG")):
        data[sof + 1] = marker
        assert jpeg_exact_unsupported(bytes(data), "JPEG") == reason
    data[sof + 1] = 0xC0
    data[sof + 4] = 12  # sample precision
    assert jpeg_exact_unsupported(bytes(data), "JPEG") == "12-bit samples"
    assert "MPO" in jpeg_exact_unsupported(bytes(data), "MPO")
