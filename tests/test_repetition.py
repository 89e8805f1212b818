"""The repetition detector (models/repetition.py) on small procedural photos: a faint tiled
word is found and masked; a clean photo, one-directional stripes, a fine weave and a single
(non-repeated) word are not taken for a tiled mark."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from clearmark.models.repetition import REPEAT_HIGH, REPEAT_LOW, Repetition, find_repetition, main
from clearmark.models.scenes import font
from clearmark.models.synth import _text_masks, blend, jpeg, visible_part

H, W = 640, 800


def product_photo(seed: int = 0) -> np.ndarray:
    """A shaded object with a soft shadow on a light studio backdrop (smooth, no text)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    bg = 245 - 15 * yy / H
    img = np.repeat(bg[..., None], 3, axis=2)
    shadow = np.exp(-(((xx - 410) / 230) ** 2 + ((yy - 520) / 40) ** 2))
    img *= (1 - 0.35 * shadow)[..., None]
    body = (((xx - 400) / 190) ** 2 + ((yy - 320) / 210) ** 2) < 1
    shade = 0.55 + 0.45 * np.clip(1 - (xx - 330) / 400 - (yy - 250) / 500, 0, 1)
    colour = rng.uniform(60, 200, 3).astype(np.float32)
    img[body] = (shade[..., None] * colour)[body]
    img = cv2.GaussianBlur(img, (0, 0), 1.2)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def word_alpha(text: str, size: int, angle: float) -> np.ndarray:
    fill, _ = _text_masks(text, font("DejaVuSans-Bold.ttf", size), 0)
    h, w = fill.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    n = int(np.hypot(h, w)) + 2
    m[0, 2] += n / 2 - w / 2
    m[1, 2] += n / 2 - h / 2
    return cv2.warpAffine(fill, m, (n, n), flags=cv2.INTER_LINEAR)


def paste_max(canvas: np.ndarray, elem: np.ndarray, x: int, y: int) -> None:
    h, w = canvas.shape
    eh, ew = elem.shape
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + ew), min(h, y + eh)
    if x0 < x1 and y0 < y1:
        region = canvas[y0:y1, x0:x1]
        np.maximum(region, elem[y0 - y : y1 - y, x0 - x : x1 - x], out=region)


def tiled_alpha(text: str = "SAMPLE", opacity: float = 0.2, angle: float = 30.0) -> np.ndarray:
    """A diagonal lattice of `text`: rows along the text's direction, rows offset."""
    elem = word_alpha(text, 30, angle)
    t = np.deg2rad(angle)
    along = np.array([np.cos(t), -np.sin(t)])  # text direction (x, y), image y down
    across = np.array([np.sin(t), np.cos(t)])
    v1, v2 = along * 175, across * 80 + along * 60
    cov = np.zeros((H, W), np.float32)
    for i in range(-12, 13):
        for j in range(-12, 13):
            x, y = 40 + i * v1 + j * v2
            paste_max(cov, elem, int(x) - elem.shape[1] // 2, int(y) - elem.shape[0] // 2)
    return cov * opacity


def composite(clean: np.ndarray, alpha: np.ndarray, grey: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """(JPEG'd composite, visible truth) of a grey mark of opacity `alpha` over `clean`."""
    alpha = np.where(alpha >= 0.02, alpha, 0).astype(np.float32)
    premult = alpha[..., None] * np.full(3, grey, np.float32)
    alpha, premult = visible_part(clean, alpha, premult)
    return jpeg(blend(clean, alpha, premult), 90), alpha > 0


def f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = np.count_nonzero(pred & truth)
    return 2 * tp / max(1, np.count_nonzero(pred) + np.count_nonzero(truth))


def test_faint_tiled_word_is_found_and_masked():
    clean = product_photo()
    img, truth = composite(clean, tiled_alpha(opacity=0.2))
    rep = find_repetition(img)
    assert isinstance(rep, Repetition)
    assert rep.score >= REPEAT_HIGH, rep.evidence
    assert rep.period is not None
    assert rep.mask.shape == (H, W) and rep.mask.dtype == bool
    assert f1(rep.mask, truth) >= 0.5, (f1(rep.mask, truth), rep.evidence)
    # the lattice found spans the one drawn: each drawn vector is an integer combination
    basis = np.array(rep.period).T  # columns: the two vectors (x, y)
    t = np.deg2rad(30.0)
    along = np.array([np.cos(t), -np.sin(t)])
    for v in (along * 175, np.array([np.sin(t), np.cos(t)]) * 80 + along * 60):
        coef = np.linalg.solve(basis, v)
        assert np.allclose(coef, np.round(coef), atol=0.1), coef


def test_clean_photo_scores_low():
    rep = find_repetition(jpeg(product_photo(), 90))
    assert rep.score <= REPEAT_LOW, rep.evidence
    assert not rep.mask.any()


def test_stripes_in_one_direction_are_not_a_tiled_mark():
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    stripes = 128 + 90 * np.sign(np.sin(2 * np.pi * (xx * np.cos(0.4) + yy * np.sin(0.4)) / 37))
    fabric = cv2.GaussianBlur(stripes, (0, 0), 1.0)
    noise = np.random.default_rng(1).normal(0, 6, (H, W))
    img = np.repeat(np.clip(fabric + noise, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    rep = find_repetition(jpeg(img, 90))
    assert rep.score < REPEAT_HIGH, rep.evidence


def test_fine_weave_is_not_a_tiled_mark():
    clean = product_photo(2).astype(np.float32)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    weave = 25 * np.sin(2 * np.pi * xx / 9) * np.sin(2 * np.pi * yy / 9)
    body = (((xx - 400) / 190) ** 2 + ((yy - 320) / 210) ** 2) < 1
    clean[body] += weave[body][:, None]
    rep = find_repetition(jpeg(np.clip(clean, 0, 255).astype(np.uint8), 90))
    assert rep.score < REPEAT_HIGH, rep.evidence


def test_single_mark_is_not_a_tiled_mark():
    clean = product_photo(3)
    cov = np.zeros((H, W), np.float32)
    paste_max(cov, word_alpha("SAMPLE", 90, 25.0), 180, 150)
    img, _ = composite(clean, cov * 0.5)
    rep = find_repetition(img)
    assert rep.score < REPEAT_HIGH, rep.evidence


def test_eval_command_says_one_line_when_the_folder_is_missing(tmp_path, capsys):
    assert main(["--products", str(tmp_path / "nowhere"), "--limit", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


@pytest.mark.parametrize("shape", [(300, 200), (90, 1200)])
def test_any_photo_size_gives_an_image_sized_mask(shape):
    img = np.full((*shape, 3), 230, np.uint8)
    rep = find_repetition(img)
    assert rep.mask.shape == shape and 0.0 <= rep.score <= 1.0


@pytest.mark.parametrize("period, angle", [(90, 0.0), (70, 0.3), (40, 0.0)])
def test_grids_of_lines_are_not_a_tiled_mark(period, angle):
    """Floor tiles and grilles: a 2-D lattice, but of lines, not of a repeated mark."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    u, v = xx * np.cos(angle) + yy * np.sin(angle), -xx * np.sin(angle) + yy * np.cos(angle)
    grout = ((u % period) < 4) | ((v % period) < 4)
    shade = (np.floor(u / period) * 31 + np.floor(v / period) * 17) % 7 * 3
    img = np.where(grout, 90.0, 200.0 + shade) + np.random.default_rng(4).normal(0, 5, (H, W))
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.8)
    rgb = np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    rep = find_repetition(jpeg(rgb, 90))
    assert rep.score < REPEAT_HIGH, rep.evidence
