"""The real-world text prior (models/text_prior.py): the shipped text detector finds lines,
and `overlay` tells text laid over a photo from text printed on the product. Small
procedural images only."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from clearmark.models.scenes import font
from clearmark.models.text_prior import (
    DETECTOR_PATH,
    OVERLAY_HIGH,
    OVERLAY_LOW,
    PRIOR_PATH,
    TextDetector,
    TextLine,
    main,
)
from clearmark.models.weights import MissingWeights

W, H = 640, 480


@pytest.fixture(scope="module")
def det() -> TextDetector:
    return TextDetector.load()


def text_alpha(text: str, size: int, xy: tuple[int, int], angle: float = 0.0, shape=(H, W)) -> np.ndarray:
    """float32 coverage (0..1) of `text` drawn at `xy`, turned by `angle` about its centre."""
    im = Image.new("L", (shape[1], shape[0]), 0)
    d = ImageDraw.Draw(im)
    d.text(xy, text, font=font("DejaVuSans-Bold.ttf", size), fill=255)
    if angle:
        x0, y0, x1, y1 = im.getbbox() or (0, 0, shape[1], shape[0])
        im = im.rotate(angle, resample=Image.BILINEAR, center=((x0 + x1) / 2, (y0 + y1) / 2))
    return np.asarray(im, np.float32) / 255


def over(bg: np.ndarray, alpha: np.ndarray, colour, opacity: float) -> np.ndarray:
    a = (alpha * opacity)[..., None]
    return np.clip(a * np.array(colour, np.float32) + (1 - a) * bg + 0.5, 0, 255).astype(np.uint8)


def stripes(period: int = 22, lo: float = 60, hi: float = 190) -> np.ndarray:
    """Diagonal colour stripes with some grain: a textured product surface."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    s = 0.5 + 0.5 * np.sin(2 * np.pi * (xx + 0.6 * yy) / period)
    base = lo + (hi - lo) * s
    rgb = np.stack([base, base * 0.8 + 30, base * 0.6 + 50], axis=2)
    grain = np.random.default_rng(0).normal(0, 4, rgb.shape)
    return np.clip(rgb + grain, 0, 255).astype(np.float32)


def boxes_overlap(box: tuple[int, int, int, int], mask: np.ndarray) -> float:
    x0, y0, x1, y1 = box
    return float(mask[y0:y1, x0:x1].sum()) / max(1, int(mask.sum()))


def best_line(lines: list[TextLine], truth: np.ndarray) -> TextLine:
    """The line covering most of `truth` (a bool mask of the drawn text)."""
    assert lines, "no line found"
    return max(lines, key=lambda t: boxes_overlap(t.box, truth))


def test_finds_a_line_of_text_on_a_plain_background(det):
    alpha = text_alpha("Organic Honey 500g", 40, (110, 210))
    rgb = over(np.full((H, W, 3), 236, np.float32), alpha, (25, 25, 25), 1.0)
    lines = det.lines(rgb)
    truth = alpha > 0.5
    line = best_line(lines, truth)
    assert boxes_overlap(line.box, truth) > 0.9  # the box holds the text ...
    x0, y0, x1, y1 = line.box
    assert (x1 - x0) * (y1 - y0) < 4 * (
        np.ptp(np.nonzero(truth)[1]) * np.ptp(np.nonzero(truth)[0])
    )  # ... tightly
    assert line.mask.shape == (y1 - y0, x1 - x0) and line.mask.dtype == bool and line.mask.mean() > 0.5
    assert 0.5 <= line.score <= 1.0 and 0.0 <= line.overlay <= 1.0
    assert set(line.evidence) >= {"backdrop", "repeats", "contrast", "blend_corr"}
    prob = det.text_probability(rgb)
    assert prob.shape == (H, W) and prob.dtype == np.float32
    assert prob[truth].mean() > 0.5 and prob.min() >= 0.0 and prob.max() <= 1.0
    assert np.percentile(prob, 50) < 0.1  # the plain background is not text


def test_semi_transparent_text_over_texture_is_more_overlay_than_printed_label_text(det):
    bg = stripes()
    alpha = text_alpha("BestDeals", 56, (160, 200))
    overlaid = over(bg, alpha, (255, 255, 255), 0.5)
    label = bg.copy()
    label[170:290, 120:540] = (238, 232, 220)  # a flat printed label on the product
    printed = over(label, alpha, (30, 30, 30), 1.0)
    truth = alpha > 0.5
    a = best_line(det.lines(overlaid), truth)
    b = best_line(det.lines(printed), truth)
    assert boxes_overlap(a.box, truth) > 0.8 and boxes_overlap(b.box, truth) > 0.8
    # the background runs on through the semi-transparent glyphs, not through the printed ones
    assert a.evidence["blend_corr"] > b.evidence["blend_corr"] + 0.3
    assert a.overlay > 3 * b.overlay, (a.evidence, b.evidence)  # the same words, ten times apart here
    assert b.overlay < OVERLAY_LOW


def test_a_tiled_repeated_name_scores_high(det):
    bg = np.full((H, W, 3), 240, np.float32)
    bg[120:420, 200:460] = (70, 90, 120)  # a product on a plain backdrop
    alpha = np.zeros((H, W), np.float32)
    for r, y in enumerate(range(-40, H + 40, 70)):
        for x in range(-100 + (r % 2) * 80, W, 170):
            alpha = np.maximum(alpha, text_alpha("ShopLine", 24, (x, y)))
    im = Image.fromarray((alpha * 255).astype(np.uint8)).rotate(30, resample=Image.BILINEAR)
    alpha = np.asarray(im, np.float32) / 255
    rgb = over(bg, alpha, (128, 128, 128), 0.6)
    lines = det.lines(rgb)
    assert len(lines) >= 6
    assert max(t.evidence["repeats"] for t in lines) >= np.log1p(3)  # seen as repeated
    overlays = np.array([t.overlay for t in lines])
    assert np.median(overlays) > OVERLAY_LOW and overlays.max() >= OVERLAY_HIGH


def test_a_clean_textured_image_has_no_lines(det):
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 1, (H // 8, W // 8, 3)).astype(np.float32)
    smooth = np.asarray(
        Image.fromarray(((noise - noise.min()) / np.ptp(noise) * 255).astype(np.uint8)).resize(
            (W, H), Image.BICUBIC
        ),
        np.float32,
    )
    fabric = stripes(period=9, lo=110, hi=150) * 0.5 + smooth * 0.5
    assert det.lines(fabric.astype(np.uint8)) == []


def test_missing_files_are_clear_errors(tmp_path):
    assert DETECTOR_PATH.exists() and PRIOR_PATH.exists()
    with pytest.raises(MissingWeights, match="text detector"):
        TextDetector.load(tmp_path / "none.onnx")
    with pytest.raises(MissingWeights, match="text prior"):
        TextDetector.load(prior=tmp_path / "none.json")
    with pytest.raises(ValueError):
        TextDetector.load(prior="").lines(np.zeros((40, 40), np.uint8))


def test_calibration_command_without_products_is_one_line(tmp_path, capsys):
    assert main(["--products", str(tmp_path / "nowhere"), "--limit", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no product photos" in err
