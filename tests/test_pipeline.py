"""The pipeline's plumbing, with test-double engines that 'detect' a known synthetic mark.

The shipped weights may be untrained, so nothing here depends on detection quality:
`MagentaDetector` finds pure magenta pixels, `BoxDetector` a fixed rectangle, and
`GreyRemover` paints the masked pixels grey. One test goes through the real
`Engines.load()` and checks only shapes, formats and invariants.

JPEG: a plain JPEG keeps its own coefficients outside the blocks the change touches
(tests/test_jpeg_exact.py checks that pixel for pixel; here `assert_jpeg_exact`). Where that
path cannot be taken (EXIF-rotated, CMYK, MPO) the output JPEG is re-encoded with the
input's own quantisation tables and chroma subsampling, so outside the mask it differs from
the decoded input only by one decode/re-encode round (requantisation noise). 16x16 MCUs (4:2:0) that touch
the mask carry new content, and the decoder's chroma upsampling reaches 1-2 px further, so the check
leaves out an 18 px band around the dilated mask, then requires, per channel value:
mean |diff| <= 1.0, 99th percentile <= 6 levels, PSNR >= 40 dB. The max is not bounded: at
sharp colour edges one requantisation can move a single pixel by 20-40 levels. Measured on
these images: mean 0.01-0.3, p99 <= 3, PSNR 54-66 dB; re-encoding at 4:4:4 instead gives
mean ~0.5-0.9, a shifted or unrotated image mean > 10.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from clearmark.engine_build import Engine
from clearmark.models.inference import detect_probability
from clearmark.models.masks import build_mask, component_boxes, confirmed, plan_tiles
from clearmark.models.networks import IN_CHANNELS
from clearmark.pipeline.imaging import decode_image, estimate_jpeg_quality
from clearmark.pipeline.jpeg_exact import reach_of_change
from clearmark.pipeline.process import (
    Engines,
    PipelineResult,
    detect_around,
    process_image,
    remove_watermark,
    watermark_pixels,
)
from clearmark.settings import Settings
from tests.badfiles import bad_files, encode, photo

METRIC_KEYS = {
    "width",
    "height",
    "mask_area_fraction",
    "detector_confidence",
    "residual_score",
    "ms_decode",
    "ms_detect",
    "ms_remove",
    "ms_gate",
    "ms_encode",
    "ms_residual",
    "ms_total",
}
MAGENTA = (255, 0, 255)


class FakeEngine(Engine):
    backend = "fake"

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []

    def _record(self, batch: np.ndarray, channels: int) -> None:
        assert batch.dtype == np.float32 and batch.ndim == 4 and batch.shape[1] == channels
        assert batch.shape[2] % self.stride == 0 and batch.shape[3] % self.stride == 0
        self.shapes.append(batch.shape)

    @property
    def key(self) -> str:
        return f"{self.kind}:fake"


def magenta(batch: np.ndarray) -> np.ndarray:
    """N x 1 x H x W float: 1 where the batch's RGB channels are pure magenta."""
    r, g, b = batch[:, 0], batch[:, 1], batch[:, 2]
    return ((r > 0.95) & (g < 0.05) & (b > 0.95)).astype(np.float32)[:, None]


class MagentaDetector(FakeEngine):
    kind = "detector"

    def run(self, batch):
        self._record(batch, IN_CHANNELS["detector"])
        return magenta(batch)


class BoxDetector(FakeEngine):
    """'Detects' a fixed box given as fractions of the (padded) frame, in any image, the
    output included: use detector_absent_below > 1 to get "succeeded"."""

    kind = "detector"

    def __init__(self, box=(0.25, 0.25, 0.5, 0.5)):
        super().__init__()
        self.box = box

    def run(self, batch):
        self._record(batch, IN_CHANNELS["detector"])
        n, _, h, w = batch.shape
        out = np.zeros((n, 1, h, w), np.float32)
        x0, y0, x1, y1 = self.box
        out[:, :, int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)] = 1.0
        return out


class GreyRemover(FakeEngine):
    """Paints the masked pixels grey and reports the magenta ones as the mark."""

    kind = "remover"

    def run(self, batch):
        self._record(batch, IN_CHANNELS["remover"])
        grey = np.where(batch[:, 3:4] > 0.5, np.float32(0.5), batch[:, :3])
        return np.concatenate([grey, magenta(batch) * batch[:, 3:4]], axis=1).astype(np.float32)


class IdentityRemover(FakeEngine):
    """Changes nothing, yet reports the magenta pixels as the mark."""

    kind = "remover"

    def run(self, batch):
        self._record(batch, IN_CHANNELS["remover"])
        return np.concatenate([batch[:, :3], magenta(batch) * batch[:, 3:4]], axis=1)


def cfg(**kw) -> Settings:
    """Pipeline settings for these tests (explicit, not read from the environment)."""
    base = dict(
        detect_long_side=640,
        detect_flip=False,
        remove_flip=False,
        mask_threshold=0.5,
        mark_threshold=0.5,
        mask_min_area=4,
        mask_dilate_px=3,
        mask_confirm_px=0,
        remove_crop_margin=16,
        remove_max_crop=1024,
        detector_absent_below=0.5,
        suspect_prior=False,
        review_confidence_max=0.0,
        max_pixels=40_000_000,
        max_bytes=50 << 20,
        min_side=16,
        # plumbing tests: every detected pixel changes and nothing is judged
        # (tests/test_gate.py covers the gate and the ring around the mark)
        gate=False,
        change_ring_px=-1,
    )
    base.update(kw)
    return Settings(**base)


def studio(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A plain studio shot: a light backdrop, a soft shadow and a dark product, no pattern."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.full((h, w, 3), 235.0) - 25 * yy[..., None] / h + rng.normal(0, 2, (h, w, 3))
    img[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = (40, 70, 120)
    return np.clip(img, 0, 255).astype(np.uint8)


def fake_engines(detector=None, remover=None) -> Engines:
    return Engines(detector=detector or MagentaDetector(), remover=remover or GreyRemover())


def marked(w=160, h=120, box=(40, 30, 90, 60), seed=0) -> np.ndarray:
    img = photo(w, h, seed=seed)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = MAGENTA
    return img


def pixels(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def mask_of(result: PipelineResult) -> np.ndarray:
    return np.asarray(pixels(result.mask_png)) > 0


def is_magenta(a: np.ndarray) -> np.ndarray:
    a = a.astype(int)
    return (a[..., 0] > 242) & (a[..., 1] < 13) & (a[..., 2] > 242)  # as MagentaDetector


def assert_jpeg_exact(result: PipelineResult, a: np.ndarray, b: np.ndarray, mcu: int = 16) -> None:
    """The coefficient path was taken and, outside the reach of the job's mask (the MCUs it
    touches, grown by one pixel), output and input decode to the same values."""
    assert result.details["jpeg_exact"] is True
    mask = np.asarray(pixels(result.mask_png)) > 0  # stored like the output
    region = reach_of_change(mask, (mcu, mcu))
    assert not region.all() and np.array_equal(a[~region], b[~region])
    touched = {(y // mcu, x // mcu) for y, x in zip(*np.nonzero(mask))}
    assert 0 < result.details["jpeg_blocks_changed"] <= len(touched)


def assert_jpeg_close(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> None:
    """Within requantisation noise outside the mask (see the module docstring)."""
    band = cv2.dilate(mask.astype(np.uint8), np.ones((37, 37), np.uint8)) > 0
    diff = np.abs(a.astype(int) - b.astype(int))[~band]
    assert diff.size > 0
    psnr = 10 * np.log10(255.0**2 / max(float((diff.astype(float) ** 2).mean()), 1e-12))
    assert diff.mean() <= 1.0 and np.percentile(diff, 99) <= 6 and psnr >= 40, (
        diff.mean(),
        np.percentile(diff, 99),
        diff.max(),
        psnr,
    )


# -- the synthetic mark, end to end ------------------------------------------------------


def test_png_mark_removed_and_outside_untouched():
    img = marked()
    data = encode(Image.fromarray(img), "PNG")
    r = process_image(data, fake_engines(), cfg())
    assert r.status == "succeeded" and r.extension == ".png"
    assert set(r.metrics) >= METRIC_KEYS
    out = pixels(r.image_bytes)
    assert out.mode == "RGB" and out.size == (160, 120)
    arr, mask = np.asarray(out), mask_of(r)
    assert mask.shape == (120, 160)
    assert mask[30:60, 40:90].all()  # the whole mark is masked
    assert not is_magenta(arr).any()  # and gone
    assert np.array_equal(arr[~mask], img[~mask])  # byte-identical outside
    m = r.metrics
    assert (m["width"], m["height"]) == (160, 120)
    assert m["detector_confidence"] == pytest.approx(1.0)
    assert m["residual_score"] == pytest.approx(0.0)
    assert 50 * 30 / (160 * 120) < m["mask_area_fraction"] < 0.2
    assert all(m[k] >= 0 for k in METRIC_KEYS if k.startswith("ms_"))
    assert m["ms_gate"] > 0 and m["ms_residual"] > 0  # a mark was removed and checked again
    assert m["ms_total"] >= sum(m[k] for k in METRIC_KEYS - {"ms_total"} if k.startswith("ms_")) - 1


def test_feathered_mask_ramps_inside_dilated_region():
    r = process_image(encode(Image.fromarray(marked()), "PNG"), fake_engines(), cfg())
    alpha = np.asarray(pixels(r.mask_png))
    assert alpha[30:60, 40:90].min() == 255  # core fully replaced
    ring = (alpha > 0) & (alpha < 255)
    assert ring.any()  # soft edge in the dilation ring
    assert not ring[30:60, 40:90].any()
    assert (alpha > 0).sum() > 50 * 30  # dilated beyond the mark


def test_no_watermark_returns_input_bytes():
    # Not `photo`: its sin x cos texture is a lattice the repetition detector may flag.
    data = encode(Image.fromarray(studio(100, 80)), "JPEG", quality=85)
    r = process_image(data, fake_engines(), cfg())
    assert r.status == "no_watermark"
    assert r.image_bytes == data and r.extension == ".jpg"
    assert not mask_of(r).any() and pixels(r.mask_png).size == (100, 80)
    assert r.metrics["mask_area_fraction"] == 0 and r.metrics["detector_confidence"] == 0


def test_needs_review_when_the_mark_survives():
    data = encode(Image.fromarray(marked()), "PNG")
    r = process_image(data, fake_engines(remover=IdentityRemover()), cfg())
    assert r.status == "needs_review" and r.metrics["residual_score"] == pytest.approx(1.0)


def test_needs_review_on_low_confidence_band():
    data = encode(Image.fromarray(marked()), "PNG")
    r = process_image(data, fake_engines(), cfg(review_confidence_max=1.0))
    assert r.status == "needs_review"


def test_rgba_alpha_kept_and_rgb_untouched_outside():
    img = marked()
    alpha = np.tile(np.linspace(0, 255, 160).astype(np.uint8), (120, 1))
    data = encode(Image.fromarray(np.dstack([img, alpha])), "PNG")
    r = process_image(data, fake_engines(), cfg())
    out = pixels(r.image_bytes)
    assert out.mode == "RGBA" and out.size == (160, 120)
    arr, mask = np.asarray(out), mask_of(r)
    assert np.array_equal(arr[..., 3], alpha)
    assert np.array_equal(arr[..., :3][~mask], img[~mask])
    assert not is_magenta(arr[..., :3]).any()


def test_jpeg_stays_jpeg_with_same_tables_and_exif_icc():
    img = marked(256, 192, box=(100, 80, 160, 110), seed=3)
    icc = b"\0" * 128 + b"fake-profile-bytes"  # Pillow embeds ICC bytes as given
    exif = Image.Exif()
    exif[0x010F] = "clearmark-test"
    data = encode(Image.fromarray(img), "JPEG", quality=90, icc_profile=icc, exif=exif.tobytes())
    r = process_image(data, fake_engines(), cfg())
    assert r.status == "succeeded" and r.extension == ".jpg"
    src, out = pixels(data), pixels(r.image_bytes)
    assert out.format == "JPEG" and out.mode == "RGB" and out.size == src.size
    assert out.quantization == src.quantization
    assert estimate_jpeg_quality(out.quantization) == 90
    assert out.info.get("icc_profile") == icc
    assert out.getexif().get(0x010F) == "clearmark-test"
    assert_jpeg_exact(r, np.asarray(out), np.asarray(src))


@pytest.mark.parametrize("quality", [50, 75, 90, 95])
def test_quality_estimate_recovers_known_qualities(quality):
    img = photo(64, 48)
    pil = pixels(encode(Image.fromarray(img), "JPEG", quality=quality))
    assert abs(estimate_jpeg_quality(pil.quantization) - quality) <= 2
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])  # libjpeg
    pil = pixels(buf.tobytes())
    assert abs(estimate_jpeg_quality(pil.quantization) - quality) <= 2


def test_quality_estimate_without_tables():
    assert estimate_jpeg_quality(None) is None and estimate_jpeg_quality({}) is None


def test_flip_keeps_what_the_detector_finds_in_the_mirror_image_too():
    """detect_flip runs the image and its mirror as one batch and keeps the lower score:
    a hit on only one side is dropped, a mark found in both is kept where both agree."""
    rgb = photo(96, 48)  # H 48, W 96
    one_sided = BoxDetector(box=(0.0, 0.0, 0.25, 1.0))  # left quarter, of whatever it sees
    prob = detect_probability(one_sided, rgb, 640, flip=True)
    assert one_sided.shapes == [(2, 3, 48, 96)] and not prob.any()
    assert detect_probability(one_sided, rgb, 640, flip=False)[:, :24].all()
    centred = BoxDetector(box=(0.25, 0.25, 0.5, 0.75))  # columns 24-47, mirrored 48-71
    prob = detect_probability(centred, rgb, 640, flip=True)
    assert not prob.any()
    rgb[10:20, 40:56] = MAGENTA  # symmetric about the centre column
    prob = detect_probability(MagentaDetector(), rgb, 640, flip=True)
    assert np.array_equal(prob > 0.5, np.all(rgb == MAGENTA, axis=2))
    single = MagentaDetector()
    single.max_batch = 1  # an engine that takes one image a call gets two calls
    assert np.array_equal(detect_probability(single, rgb, 640, flip=True), prob)
    assert single.shapes == [(1, 3, 48, 96)] * 2


def test_exif_rotated_jpeg_keeps_its_orientation_and_the_mask_follows():
    """The coefficient path leaves the stored pixels and the tag as uploaded; the mask is
    stored and tagged the same way, so both line up raw and as a viewer shows them."""
    data, _ = bad_files()["exif_rotated.jpg"]
    r = process_image(data, fake_engines(detector=BoxDetector()), cfg(detector_absent_below=1.01))
    out, src, mask = pixels(r.image_bytes), pixels(data), pixels(r.mask_png)
    assert r.status == "succeeded" and r.details["orientation"] == 6
    assert out.size == src.size == mask.size == (96, 128)  # as stored
    assert out.getexif().get(0x0112) == mask.getexif().get(0x0112) == 6
    assert out.getexif().get(0x010F) == "clearmark-test"
    assert_jpeg_exact(r, np.asarray(out), np.asarray(src))
    seen, seen_mask = ImageOps.exif_transpose(out), ImageOps.exif_transpose(mask)
    assert seen.size == (128, 96)
    drawn = photo(128, 96, seed=1).astype(int)  # what badfiles drew before rotating
    outside = np.asarray(seen_mask) == 0
    assert outside.any() and np.abs(np.asarray(seen).astype(int) - drawn)[outside].mean() < 4


def test_exif_rotated_comes_back_upright_when_re_encoded():
    data, _ = bad_files()["exif_rotated.jpg"]
    upright = np.asarray(decode_image(data).rgb)  # what a viewer shows
    r = process_image(
        data, fake_engines(detector=BoxDetector()), cfg(detector_absent_below=1.01, jpeg_exact=False)
    )
    out = pixels(r.image_bytes)
    assert r.status == "succeeded" and out.size == (128, 96) and upright.shape == (96, 128, 3)
    exif = out.getexif()
    assert exif.get(0x0112) == 1 and exif.get(0x010F) == "clearmark-test"
    assert pixels(r.mask_png).size == (128, 96) and r.details["jpeg_exact"] is False
    assert_jpeg_close(np.asarray(out), upright, mask_of(r))
    drawn = photo(128, 96, seed=1).astype(int)
    assert np.abs(np.asarray(out).astype(int) - drawn)[~mask_of(r)].mean() < 4


# -- format and mode round trips (fixed-box detector) -------------------------------------


def _through(data: bytes, **kw) -> tuple[PipelineResult, Image.Image, np.ndarray]:
    r = process_image(data, fake_engines(detector=BoxDetector()), cfg(detector_absent_below=1.01, **kw))
    assert r.status == "succeeded"
    mask = mask_of(r)
    assert mask.any() and not mask.all()
    return r, pixels(r.image_bytes), mask


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_png_modes_preserved(mode):
    src = Image.fromarray(photo(96, 64)).convert(mode)
    r, out, mask = _through(encode(src, "PNG"))
    assert out.mode == mode and out.size == src.size and r.extension == ".png"
    a, b = np.asarray(out), np.asarray(src)
    assert np.array_equal(a[~mask], b[~mask])
    assert not np.array_equal(a[mask], b[mask])  # something changed inside
    if mode.endswith("A"):
        assert np.array_equal(a[..., -1], b[..., -1])


def test_grey_jpeg_stays_grey():
    src = Image.fromarray(photo(96, 64)).convert("L")
    data = encode(src, "JPEG", quality=80)
    r, out, mask = _through(data)
    assert out.mode == "L" and r.extension == ".jpg"
    assert_jpeg_exact(r, np.asarray(out), np.asarray(pixels(data)), mcu=8)


def test_cmyk_jpeg_stays_cmyk():
    data, _ = bad_files()["cmyk.jpg"]
    r, out, mask = _through(data)
    src = pixels(data)
    assert out.mode == "CMYK" and out.size == src.size and r.extension == ".jpg"
    assert r.details["jpeg_exact"] is False and "CMYK" in r.details["jpeg_exact_fallback"]
    assert_jpeg_close(np.asarray(out), np.asarray(src), mask)


def test_16bit_grey_png_stays_16bit_exact_outside():
    data, _ = bad_files()["16bit_gray.png"]
    r, out, mask = _through(data)
    src = pixels(data)
    assert out.mode == src.mode == "I;16"
    a, b = np.asarray(out), np.asarray(src)
    assert np.array_equal(a[~mask], b[~mask])
    assert np.all(a[mask] % 257 == 0)  # 8-bit restored values, scaled


def test_16bit_rgb_png_comes_back_8bit():
    data, _ = bad_files()["16bit.png"]
    r, out, mask = _through(data)
    src = pixels(data)  # Pillow's own 8-bit decode
    assert src.mode == out.mode == "RGB"
    assert np.array_equal(np.asarray(out)[~mask], np.asarray(src)[~mask])


def test_palette_with_transparency_becomes_rgba():
    data, _ = bad_files()["palette_alpha.png"]
    r, out, mask = _through(data)
    src = pixels(data).convert("RGBA")
    assert out.mode == "RGBA" and out.size == src.size
    a, b = np.asarray(out), np.asarray(src)
    assert np.array_equal(a[..., 3], b[..., 3])
    assert np.array_equal(a[~mask], b[~mask])


def test_animated_gif_first_frame_as_gif_same_palette():
    data, _ = bad_files()["animated.gif"]
    r, out, mask = _through(data)
    assert r.extension == ".gif" and out.format == "GIF" and out.mode == "P"
    assert r.details["frames"] == 3 and r.details["notes"]
    assert getattr(out, "n_frames", 1) == 1
    first = pixels(data)  # frame 0
    assert out.getpalette() == first.getpalette()
    a, b = np.asarray(out), np.asarray(first)
    assert np.array_equal(a[~mask], b[~mask])  # same indices outside
    assert np.all(a[mask] < 256) and not np.array_equal(a[mask], b[mask])


def test_gif_transparency_kept():
    img = photo(96, 64)
    pal = Image.fromarray(img).quantize(colors=32)
    idx = np.asarray(pal).copy()
    idx[:, :10] = 31  # transparent strip, inside the box too
    idx[20:40, 20:50] = 31
    src = Image.fromarray(idx, "P")
    src.putpalette(pal.getpalette())
    data = encode(src, "GIF", transparency=31)
    r, out, mask = _through(data)
    a, b = np.asarray(out), np.asarray(pixels(data))
    assert out.info.get("transparency") == 31
    assert np.array_equal(a == 31, b == 31)  # transparency map unchanged
    assert np.array_equal(a[~mask], b[~mask])


@pytest.mark.parametrize("lossless", [True, False])
def test_webp(lossless):
    src = Image.fromarray(photo(96, 64))
    data = encode(src, "WEBP", lossless=lossless, quality=90)
    r, out, mask = _through(data)
    assert out.format == "WEBP" and r.extension == ".webp" and out.size == src.size
    a, b = np.asarray(out.convert("RGB")), np.asarray(pixels(data).convert("RGB"))
    if lossless:
        assert np.array_equal(a[~mask], b[~mask])
    else:
        assert np.abs(a.astype(int) - b.astype(int))[~mask].mean() < 3


def test_progressive_jpeg_and_mpo_stay_jpeg():
    src = Image.fromarray(photo(96, 64))
    data = encode(src, "JPEG", quality=85, progressive=True)
    r, out, mask = _through(data)
    assert out.format == "JPEG" and out.info.get("progressive")
    assert_jpeg_exact(r, np.asarray(out), np.asarray(pixels(data)))
    second = Image.fromarray(photo(96, 64, seed=9))
    r, out, mask = _through(encode(src, "MPO", save_all=True, append_images=[second]))
    assert r.extension == ".jpg" and out.format == "JPEG" and r.details["frames"] == 2
    assert r.details["jpeg_exact"] is False and "MPO" in r.details["jpeg_exact_fallback"]


def test_non_finite_engine_output_is_an_error_not_a_clean_image():
    class NanDetector(MagentaDetector):
        def run(self, batch):
            return super().run(batch) * np.nan

    with pytest.raises(RuntimeError, match="non-finite"):
        process_image(encode(Image.fromarray(marked()), "PNG"), fake_engines(detector=NanDetector()), cfg())


@pytest.mark.parametrize("fmt,ext", [("BMP", ".bmp"), ("TIFF", ".tif")])
def test_other_lossless_formats(fmt, ext):
    src = Image.fromarray(photo(96, 64))
    r, out, mask = _through(encode(src, fmt))
    assert out.format == fmt and r.extension == ext
    assert np.array_equal(np.asarray(out)[~mask], np.asarray(src)[~mask])


# -- detection scale, crops, tiles and batches --------------------------------------------


def test_detection_runs_downscaled_and_mask_is_full_size():
    img = marked(1200, 900, box=(500, 400, 700, 480), seed=4)
    det = MagentaDetector()
    r = process_image(
        encode(Image.fromarray(img), "PNG"),
        fake_engines(detector=det),
        cfg(detect_long_side=320, mask_dilate_px=6),
    )
    assert max(det.shapes[0][2:]) <= 320 + 15  # downscaled (plus stride padding)
    mask = mask_of(r)
    assert mask.shape == (900, 1200) and mask[400:480, 500:700].all()
    assert not is_magenta(np.asarray(pixels(r.image_bytes))).any()


def test_small_images_are_not_upscaled_for_detection():
    det = MagentaDetector()
    process_image(
        encode(Image.fromarray(marked(100, 40, box=(10, 10, 30, 30))), "PNG"),
        fake_engines(detector=det),
        cfg(detect_long_side=640),
    )
    assert det.shapes[0][2:] == (48, 112)  # 40x100 padded to /16


def test_large_mark_is_tiled_and_batched():
    img = marked(400, 300, box=(50, 40, 350, 260), seed=5)
    rem = GreyRemover()
    r = process_image(
        encode(Image.fromarray(img), "PNG"),
        fake_engines(remover=rem),
        cfg(remove_max_crop=128, remove_crop_margin=16),
    )
    assert r.status == "succeeded"
    assert all(s[2] <= 128 and s[3] <= 128 for s in rem.shapes)
    assert any(s[0] > 1 for s in rem.shapes)  # equal-size crops share a batch
    out, mask = np.asarray(pixels(r.image_bytes)), mask_of(r)
    assert not is_magenta(out).any()
    assert np.array_equal(out[~mask], img[~mask])


def test_removers_mark_is_pasted_back_at_full_resolution_across_tiles():
    img = marked(400, 300, box=(50, 40, 350, 260), seed=5)
    img[100:104, 60:340] = 30  # a dark bar through the mark: inside the mask, not magenta
    mask = build_mask(magenta(img.transpose(2, 0, 1)[None] / 255.0)[0, 0], 0.5, 4, 3)
    mask.core[100:104, 60:340] = mask.dilated[100:104, 60:340] = True
    restored, mark = remove_watermark(GreyRemover(), img, mask, margin=16, max_crop=96)
    is_mark = is_magenta(img)
    assert np.array_equal(mark >= 0.5, is_mark) and np.array_equal(mark > 0, is_mark)
    assert np.array_equal(watermark_pixels(mask, mark, 0.5), is_mark)
    assert not is_magenta(restored).any()


class LeftHalfRemover(FakeEngine):
    """Changes nothing and reports the magenta pixels in the left half of each crop only."""

    kind = "remover"

    def run(self, batch):
        self._record(batch, IN_CHANNELS["remover"])
        mark = magenta(batch) * batch[:, 3:4]
        mark[..., batch.shape[3] // 2 :] = 0.0
        return np.concatenate([batch[:, :3], mark], axis=1)


def test_remove_flip_averages_each_crop_with_its_mirror_image():
    img = marked(160, 120, box=(40, 30, 120, 60))
    is_mark = is_magenta(img)
    mask = build_mask(is_mark.astype(np.float32), 0.5, 4, 3)
    rem = LeftHalfRemover()
    _, one_sided = remove_watermark(rem, img, mask, margin=16, max_crop=1024)
    assert 0 < (one_sided >= 0.5).sum() < is_mark.sum()
    _, mark = remove_watermark(rem, img, mask, margin=16, max_crop=1024, flip=True)
    assert rem.shapes[-1][0] == 2 * rem.shapes[0][0]  # each crop and its mirror, one batch
    assert np.array_equal(mark >= 0.5, is_mark)  # each half seen in one of the two
    assert np.allclose(mark[is_mark], 0.5)


@pytest.mark.parametrize("max_batch, flip", [(4, False), (4, True), (1, True)])
def test_remover_batches_stay_within_the_engines_max_batch(max_batch, flip):
    img = photo(400, 400, seed=3)
    for y in range(20, 400, 80):  # 25 separate marks: equal-size crops, one group
        for x in range(20, 400, 80):
            img[y : y + 12, x : x + 12] = MAGENTA
    mask = build_mask(is_magenta(img).astype(np.float32), 0.5, 4, 3)
    rem = GreyRemover()
    rem.max_batch = max_batch
    restored, _ = remove_watermark(rem, img, mask, margin=8, max_crop=1024, flip=flip)
    assert sum(s[0] for s in rem.shapes) == 25 * (2 if flip else 1)
    assert max(s[0] for s in rem.shapes) == max_batch
    assert not is_magenta(restored).any()


class MagentaOrDarkDetector(FakeEngine):
    """Fires on magenta (the mark) and on near-black pixels (the product's own print)."""

    kind = "detector"

    def run(self, batch):
        self._record(batch, IN_CHANNELS["detector"])
        return np.maximum(magenta(batch), (batch[:, :3].max(axis=1, keepdims=True) < 0.1))


def test_regions_the_remover_does_not_confirm_are_left_untouched():
    img = marked(320, 240, box=(10, 10, 60, 40))
    img[150:190, 200:300] = 5  # "printed text": detected, not a mark
    engines = fake_engines(detector=MagentaOrDarkDetector(), remover=GreyRemover())
    r = process_image(encode(Image.fromarray(img), "PNG"), engines, cfg(mask_confirm_px=24))
    out, mask = np.asarray(pixels(r.image_bytes)), mask_of(r)
    assert not is_magenta(out).any()
    # Left alone, yet still flagged: a person decides (issue 32: never a silent drop).
    assert r.status == "needs_review" and "dropped: the remover found fewer than 24" in r.review_reason
    assert mask[10:40, 10:60].all() and not mask[140:200, 190:310].any()
    assert np.array_equal(out[~mask], img[~mask])  # the print is exactly as it was
    everything = process_image(encode(Image.fromarray(img), "PNG"), engines, cfg(mask_confirm_px=0))
    assert mask_of(everything)[150:190, 200:300].all()


def test_nothing_confirmed_is_review_not_no_watermark_and_the_input_back():
    img = photo(160, 120, seed=2)
    img[40:80, 50:110] = 5
    data = encode(Image.fromarray(img), "PNG")
    r = process_image(
        data, fake_engines(detector=MagentaOrDarkDetector(), remover=GreyRemover()), cfg(mask_confirm_px=24)
    )
    assert r.status == "needs_review" and r.image_bytes == data and not mask_of(r).any()
    assert r.metrics["mask_area_fraction"] == 0 and r.metrics["detector_confidence"] == 0


class UnsureRemover(GreyRemover):
    """A GreyRemover that gives the magenta pixels a mark probability of 0.55."""

    def run(self, batch):
        out = super().run(batch)
        out[:, 3:4] *= 0.55
        return out


def test_mark_threshold_decides_the_removers_watermark_pixels():
    img = marked(160, 120, box=(40, 30, 90, 60))
    data = encode(Image.fromarray(img), "PNG")
    engines = fake_engines(remover=UnsureRemover())
    sure = process_image(data, engines, cfg(mark_threshold=0.5, mask_confirm_px=24))
    assert sure.status == "succeeded" and mask_of(sure)[30:60, 40:90].all()
    unsure = process_image(data, engines, cfg(mark_threshold=0.6, mask_confirm_px=24))
    assert unsure.status == "needs_review" and unsure.image_bytes == data


def test_confirmed_keeps_components_with_enough_found_pixels():
    prob = np.zeros((60, 80), np.float32)
    prob[5:15, 5:25] = prob[40:50, 40:70] = 0.9
    m = build_mask(prob, 0.5, 4, 2)
    found = np.zeros_like(m.core)
    found[6:9, 6:16] = True  # 30 px in the first region
    found[41, 41:50] = True  # 9 px in the second
    kept = confirmed(m, found, 24)
    assert kept.dilated[5:15, 5:25].all() and not kept.dilated[35:55, 35:75].any()
    assert not kept.alpha[35:55, 35:75].any() and np.array_equal(kept.alpha > 0, kept.dilated)
    assert confirmed(m, found, 0) is m and confirmed(m, found, 9) is m


def test_separate_marks_get_separate_crops():
    img = marked(320, 240, box=(10, 10, 40, 30))
    img[200:225, 270:310] = MAGENTA
    rem = GreyRemover()
    r = process_image(encode(Image.fromarray(img), "PNG"), fake_engines(remover=rem), cfg())
    assert sum(s[0] for s in rem.shapes) == 2
    assert sum(s[2] * s[3] for s in rem.shapes) < 320 * 240 / 4  # crops, not the frame
    assert not is_magenta(np.asarray(pixels(r.image_bytes))).any()


def test_mask_threshold_blob_cleanup_and_dilation():
    prob = np.zeros((60, 80), np.float32)
    prob[10:20, 10:30] = 0.9  # kept
    prob[40, 60] = 0.9  # 1 px blob: dropped
    prob[45:47, 5:7] = 0.4  # under threshold
    m = build_mask(prob, threshold=0.5, min_area=4, dilate_px=2)
    assert m.core.sum() == 200 and not m.core[40, 60] and not m.core[45, 5]
    assert m.dilated[8, 10] and m.dilated[20 + 1, 29] and not m.dilated[7, 10]
    assert np.array_equal(m.alpha > 0, m.dilated) and (m.alpha[m.core] == 255).all()
    empty = build_mask(np.zeros((8, 8), np.float32), 0.5, 4, 2)
    assert empty.empty and empty.area_fraction == 0 and not empty.alpha.any()


def test_tile_cores_partition_each_box():
    mask = np.zeros((500, 700), bool)
    mask[20:480, 30:650] = True
    mask[5:9, 690:695] = True
    boxes = component_boxes(mask, margin=10)
    tiles = plan_tiles(boxes, mask.shape, max_crop=200, margin=10, stride=16)
    cover = np.zeros(mask.shape, np.int32)
    for t in tiles:
        x0, y0, x1, y1 = t.core
        bx0, by0, bx1, by1 = t.box
        assert bx0 <= x0 < x1 <= bx1 and by0 <= y0 < y1 <= by1
        assert bx1 - bx0 <= 200 and by1 - by0 <= 200
        assert (bx1 - bx0) % 16 == 0 and (by1 - by0) % 16 == 0
        cover[y0:y1, x0:x1] += 1
    assert cover.max() == 1 and (cover[mask] == 1).all()


# -- through the real engines: shapes, formats and invariants only ------------------------


@pytest.fixture(scope="module")
def real_engines(tmp_path_factory):
    s = Settings(data_dir=tmp_path_factory.mktemp("data"), backend="torch", device="cpu")
    return Engines.load(s)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_real_engines_invariants(real_engines, fmt):
    mode = "RGB" if fmt == "JPEG" else "RGBA"
    src = Image.fromarray(photo(80, 64, seed=7)).convert(mode)
    data = encode(src, fmt)
    r = process_image(data, real_engines, cfg(remove_max_crop=64, remove_crop_margin=8))
    assert r.status in ("succeeded", "no_watermark", "needs_review")
    assert set(r.metrics) >= METRIC_KEYS
    assert 0.0 <= r.metrics["mask_area_fraction"] <= 1.0
    assert 0.0 <= r.metrics["detector_confidence"] <= 1.0
    assert 0.0 <= r.metrics["residual_score"] <= 1.0
    out, mask = pixels(r.image_bytes), mask_of(r)
    assert out.format == fmt and out.mode == mode and out.size == src.size
    assert mask.shape == (64, 80)
    if fmt == "PNG":
        a, b = np.asarray(out), np.asarray(src)
        assert np.array_equal(a[~mask], b[~mask]) and np.array_equal(a[..., 3], b[..., 3])
    v = real_engines.version
    assert real_engines.detector.key in v and real_engines.remover.key in v


def test_residual_check_runs_on_a_crop_around_the_mark():
    img = marked(640, 480, box=(40, 30, 90, 60))
    det = MagentaDetector()
    r = process_image(
        encode(Image.fromarray(img), "PNG"),
        fake_engines(detector=det, remover=IdentityRemover()),
        cfg(detect_long_side=640),
    )
    assert r.status == "needs_review" and r.metrics["residual_score"] == pytest.approx(1.0)
    full, residual = det.shapes
    assert full[2:] == (480, 640)
    assert residual[2] * residual[3] < full[2] * full[3] / 4


def test_residual_score_on_a_crop_matches_the_whole_image(real_engines):
    from clearmark.models.synth import watermark_image

    clean = photo(900, 700, seed=3)
    det = real_engines.detector
    for kind, seed in (("corner", 4), ("text", 9)):
        rgb, true_mask = watermark_image(clean, np.random.default_rng(seed), kinds=[kind])
        whole = detect_probability(det, rgb, 640, flip=True)
        assert true_mask.any() and float(whole[true_mask].mean()) > 0.5  # it sees the mark
        prob, (x0, y0) = detect_around(det, rgb, true_mask, 640, flip=True)
        crop = true_mask[y0 : y0 + prob.shape[0], x0 : x0 + prob.shape[1]]
        assert float(prob[crop].mean()) == pytest.approx(float(whole[true_mask].mean()), abs=0.08)


def test_detect_flip_reads_the_environment(monkeypatch):
    monkeypatch.setenv("CLEARMARK_DETECT_FLIP", "off")
    assert Settings().detect_flip is False
    monkeypatch.setenv("CLEARMARK_DETECT_FLIP", "1")
    assert Settings().detect_flip is True
    monkeypatch.setenv("CLEARMARK_DETECT_FLIP", "maybe")
    with pytest.raises(ValueError, match="CLEARMARK_DETECT_FLIP"):
        Settings()
