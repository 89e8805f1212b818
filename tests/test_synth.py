"""The synthesizer: deterministic, and its ground truth explains the composite."""

from __future__ import annotations

import numpy as np
import pytest

from clearmark.models.products import mark_photo
from clearmark.models.scenes import DEFAULT_DATA, photo_list, render_background
from clearmark.models.seller_marks import SELLER_KINDS
from clearmark.models.styles import FAMILIES
from clearmark.models.synth import (
    KINDS,
    MIN_CHANGE,
    blend,
    make_sample,
    render_watermark,
    visible_part,
    watermark_image,
)


def _sample(seed: int, **kw):
    return make_sample(np.random.default_rng(seed), 96, 128, 1000, source="studio", **kw)


def test_same_seed_same_sample():
    a, b = _sample(7), _sample(7)
    for field in ("clean", "composite", "alpha", "mask", "product"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.kinds == b.kinds and a.quality == b.quality
    assert not np.array_equal(a.composite, _sample(8).composite)


@pytest.mark.parametrize("kind", KINDS)
def test_blend_is_the_compositing_equation(kind):
    rng = np.random.default_rng(3)
    bg, _, _ = render_background(rng, 192, 256, 900, source="studio")
    alpha, premult, labels = render_watermark(rng, 192, 256, 900, [kind])
    assert labels[0].split("+")[0] == kind
    assert alpha.min() >= 0 and alpha.max() <= 1 and alpha.max() > 0
    composite = blend(bg, alpha, premult).astype(np.float64)
    expected = premult * 255 + (1 - alpha[..., None]) * bg
    assert np.abs(composite - expected).max() <= 0.5 + 1e-6
    # where alpha == 0 the background is untouched, bit for bit
    np.testing.assert_array_equal(composite[alpha == 0], bg[alpha == 0])


def test_sample_ground_truth_consistent_up_to_jpeg():
    for seed in range(4):
        s = _sample(seed, kinds=["text", "logo"], quality=95)
        np.testing.assert_array_equal(s.mask, s.alpha > 0)
        assert s.mask.any() and not (s.product & s.mask).any()
        a = s.alpha[..., None]
        model = a * s.colour * 255 + (1 - a) * s.clean
        err = np.abs(model - s.composite)[s.mask]
        naive = np.abs(s.clean.astype(np.float32) - s.composite)[s.mask]
        # inside the mark only JPEG noise (chroma subsampling at coloured edges) is left
        assert err.mean() < 0.3 * naive.mean() and np.median(err) <= 3, (err.mean(), naive.mean())
        assert (s.colour[~s.mask] == 0).all()


def test_only_the_visible_part_of_a_mark_is_ground_truth():
    """A white mark crossing from a black to a white backdrop is watermark only where it
    shows; where it does not, the composite is the background, bit for bit."""
    rng = np.random.default_rng(2)
    alpha, _, _ = render_watermark(rng, 96, 256, 900, ["text"])
    white = np.repeat(alpha[..., None], 3, axis=2)  # the same mark, coloured white
    bg = np.zeros((96, 256, 3), np.uint8)
    bg[:, 128:] = 255
    a, p = visible_part(bg, alpha, white)
    assert a[:, :128].any() and not a[:, 128:].any()
    np.testing.assert_array_equal(a[:, :128] > 0, alpha[:, :128] * 255 >= MIN_CHANGE)
    composite = blend(bg, a, p).astype(int)
    np.testing.assert_array_equal(composite[a == 0], bg[a == 0])
    assert (np.abs(composite - bg).max(axis=2)[a > 0] >= MIN_CHANGE - 0.5).all()


def test_sample_crop_cuts_every_pixel_array_alike():
    s = _sample(5, kinds=["logo"])
    c = s.crop(10, 20, 48)
    for field in ("clean", "composite", "alpha", "colour", "mask", "product"):
        np.testing.assert_array_equal(getattr(c, field), getattr(s, field)[10:58, 20:68])
    assert c.kinds == s.kinds and c.quality == s.quality


def test_streaks_are_drawn_into_the_background_only():
    plain, streaked = (
        _sample(4, kinds=["text"], quality=95),
        _sample(4, kinds=["text"], quality=95, streaks=True),
    )
    for field in ("alpha", "mask", "product"):
        np.testing.assert_array_equal(getattr(plain, field), getattr(streaked, field))
    changed = np.abs(plain.clean.astype(int) - streaked.clean).max(axis=2) > 8
    assert 0 < changed.mean() < 0.5  # a few lines, not a repaint


def test_no_watermark_sample_is_clean():
    s = _sample(1, kinds=[])
    assert not s.mask.any() and s.kinds == []
    np.testing.assert_array_equal(s.clean, s.composite)


def test_watermark_image_changes_only_the_mask():
    rgb = np.full((120, 160, 3), 240, np.uint8)
    out, mask = watermark_image(rgb, np.random.default_rng(5), kinds=["text"], quality=None)
    assert out.shape == rgb.shape and out.dtype == np.uint8 and mask.dtype == bool
    assert mask.any()
    np.testing.assert_array_equal(out[~mask], rgb[~mask])


@pytest.mark.parametrize("data", ["generated", "shared"])
def test_photo_split_is_disjoint_and_deterministic(data, request):
    if data == "shared" and not (DEFAULT_DATA / "grocery").exists():
        pytest.skip(f"real grocery data not present ({DEFAULT_DATA})")
    data_dir = request.getfixturevalue("grocery_data") if data == "generated" else DEFAULT_DATA
    for subset in ("iconic", "natural"):
        train, held = photo_list(str(data_dir), subset, "train"), photo_list(str(data_dir), subset, "eval")
        assert train and held and not set(train) & set(held)
    s = make_sample(np.random.default_rng(0), 64, 64, 800, source="photo", data_dir=data_dir)
    assert s.background.startswith("photo_") and s.clean.shape == (64, 64, 3)


def test_missing_photos_are_named_not_replaced(tmp_path):
    """Without the data, photo backgrounds fail loudly (no silent fallback to studio scenes)."""
    with pytest.raises(FileNotFoundError, match=f"no photos in {tmp_path}/grocery/(iconic|natural)"):
        make_sample(np.random.default_rng(0), 64, 64, 800, source="photo", data_dir=tmp_path)


def test_printed_product_text_stays_on_its_label():
    """Product text is a negative for the detector only if it sits on a surface; text
    spilling onto the backdrop would look exactly like an overlaid mark."""
    from PIL import Image

    from clearmark.models.scenes import _draw_label

    for seed in range(20):
        img = Image.new("RGB", (400, 300), (240, 240, 240))
        prod = Image.new("L", (400, 300), 0)
        box = (50, 60, 170, 120)  # small label, large text sizes for long_side 2000
        _draw_label(np.random.default_rng(seed), img, prod, box, 2000)
        printed, pixels = np.asarray(prod) > 0, np.asarray(img)
        assert printed[60:120, 50:170].any()
        outside = np.ones_like(printed)
        outside[60:120, 50:170] = False
        assert not printed[outside].any()
        assert (pixels[outside] == 240).all()


@pytest.mark.parametrize("kind", sorted(SELLER_KINDS))
def test_seller_marks_are_visible_marks_drawn_alike_from_one_seed(kind):
    photo = np.full((400, 600, 3), 240, np.uint8)
    photo[150:300, 200:400] = (60, 90, 130)
    a, b = (mark_photo(np.random.default_rng(11), photo, "train", [kind], quality=90) for _ in range(2))
    np.testing.assert_array_equal(a.composite, b.composite)
    assert a.kinds[0].split("+")[0] == kind
    assert a.mask.any() and a.alpha.max() <= 1
    # only the mark changes the photo, and it changes it where its ground truth says
    diff = np.abs(a.composite.astype(int) - a.clean).max(axis=2)
    assert diff[~a.mask].mean() < 2 and diff[a.mask].mean() > 2 * diff[~a.mask].mean()


def test_seller_marks_train_the_detector_but_never_reach_the_heldout_family():
    train_kinds, heldout_kinds = FAMILIES["train"][1], FAMILIES["heldout"][1]
    assert set(SELLER_KINDS) <= set(train_kinds)
    assert not set(SELLER_KINDS) & set(heldout_kinds)
