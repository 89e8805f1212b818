"""Real product photos: the split by product group, and marks composited over them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clearmark.models.products import (
    ProductPhoto,
    check_split,
    load_photo,
    mark_photo,
    read_split,
    split_paths,
)
from clearmark.models.scenes import DEFAULT_DATA
from clearmark.models.styles import FAMILIES, HELDOUT, TRAIN


def write_split(tmp_path, rows):
    d = tmp_path / "products"
    d.mkdir()
    (d / "split.csv").write_text("file,split,group\n" + "".join(f"{f},{s},{g}\n" for f, s, g in rows))
    return tmp_path


def test_a_group_on_both_sides_is_refused(tmp_path):
    data = write_split(
        tmp_path,
        [("a/1.jpg", "train", "a:shirt"), ("a/2.jpg", "dev", "a:shirt"), ("b/1.jpg", "dev", "b:lamp")],
    )
    with pytest.raises(ValueError, match="a:shirt"):
        read_split(data)
    check_split([ProductPhoto("a/1.jpg", "train", "a:shirt"), ProductPhoto("b/1.jpg", "dev", "b:lamp")])
    with pytest.raises(ValueError, match="unknown split"):
        check_split([ProductPhoto("a/1.jpg", "test", "a:shirt")])


def test_split_paths_keep_each_side(tmp_path):
    data = write_split(
        tmp_path, [("a/1.jpg", "train", "a"), ("a/2.jpg", "train", "a"), ("b/1.jpg", "dev", "b")]
    )
    assert [p.name for p in split_paths(str(data), "train")] == ["1.jpg", "2.jpg"]
    assert [p.parent.name for p in split_paths(str(data), "dev")] == ["b"]


def test_missing_data_says_where_it_should_be(tmp_path):
    with pytest.raises(FileNotFoundError, match="products"):
        read_split(tmp_path)


@pytest.mark.skipif(
    not (DEFAULT_DATA / "products" / "split.csv").exists(),
    reason="no ../shared/data/products beside this checkout",
)
def test_the_shipped_split_never_puts_one_product_on_both_sides():
    photos = read_split(DEFAULT_DATA)  # check_split runs inside
    groups = {}
    for p in photos:
        groups.setdefault(p.group, set()).add(p.split)
    assert all(len(s) == 1 for s in groups.values())
    assert {p.split for p in photos} == {"train", "dev"}


def test_heldout_styles_share_no_font_name_or_phrase_with_training():
    assert not set(HELDOUT.latin_fonts) & set(TRAIN.latin_fonts)
    assert not set(HELDOUT.names) & set(TRAIN.names)
    assert not set(HELDOUT.words) & set(TRAIN.words)
    assert not set(HELDOUT.cjk_words) & set(TRAIN.cjk_words)
    train_kinds, heldout_kinds = FAMILIES["train"][1], FAMILIES["heldout"][1]
    assert {"banner", "stamp", "diagonal"} <= set(heldout_kinds) - set(train_kinds)


@pytest.mark.parametrize("family", ["train", "heldout"])
def test_mark_photo_uploads_what_it_reports(family):
    rng = np.random.default_rng(3)
    photo = np.full((300, 400, 3), 235, np.uint8)
    photo[100:200, 150:250] = (40, 60, 90)
    s = mark_photo(rng, photo, family, quality=90)
    decoded = np.asarray(Image.open(io.BytesIO(s.jpeg_bytes)).convert("RGB"))
    assert np.array_equal(decoded, s.composite)
    assert s.mask.any() and s.kinds
    outside = ~s.mask
    assert np.abs(s.composite.astype(int) - s.clean)[outside].mean() < 2  # JPEG noise only
    clean = mark_photo(rng, photo, family, kinds=[], quality=90)
    assert not clean.mask.any() and np.array_equal(clean.clean, clean.composite)


def test_load_photo_flattens_transparency_onto_white(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :15, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    rgb = load_photo(tmp_path / "cut.png")
    assert tuple(rgb[0, 0]) == (200, 0, 0) and tuple(rgb[0, 29]) == (255, 255, 255)
