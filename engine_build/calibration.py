"""Synthetic calibration images for TensorRT INT8 (no real photos are needed or used).

A studio-like product shot (smooth background, a few flat-shaded shapes, mild noise)
with a visible watermark blended in as I = a*W + (1-a)*B: tiled text-like strokes, a
corner badge or a single line of "text", opacity 0.2-0.9. The detector calibrates on the
blended image (N x 3 x H x W), the remover on its input, image + mask + prefill
(N x 7 x H x W, `models.networks.remover_input`). Deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np

from clearmark.models.networks import remover_input


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
    tilt = rng.uniform(-0.2, 0.2, size=3).astype(np.float32)
    img = base[:, None, None] + tilt[:, None, None] * (yy / max(h, 1))[None]
    for _ in range(rng.integers(1, 4)):  # "products": ellipses and boxes
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        ry, rx = rng.uniform(0.1, 0.35) * h, rng.uniform(0.1, 0.35) * w
        colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        if rng.random() < 0.5:
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        else:
            inside = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        shade = 1.0 - 0.3 * (yy - cy) / max(ry, 1.0) / 2
        img = np.where(inside[None], colour[:, None, None] * shade[None], img)
    img += rng.normal(0, 0.01, size=img.shape).astype(np.float32)
    clipped: np.ndarray = np.clip(img, 0, 1)
    return clipped


def _strokes(rng: np.random.Generator, mask: np.ndarray, y0: int, x0: int, h: int, w: int) -> None:
    """Text-like glyph strokes inside a box."""
    th = max(1, h // 6)
    for gx in range(x0, x0 + w, max(2, h // 2)):
        for _ in range(rng.integers(1, 4)):
            if rng.random() < 0.5:  # vertical stroke
                ya, yb = y0 + rng.integers(0, h // 2 + 1), y0 + h
                mask[max(ya, 0) : max(yb, 0), max(gx, 0) : max(gx + th, 0)] = 1
            else:  # horizontal stroke
                yy = y0 + rng.integers(0, h)
                mask[max(yy, 0) : max(yy + th, 0), max(gx, 0) : max(gx + h // 2, 0)] = 1


def _watermark_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.float32)
    style = rng.integers(0, 3)
    if style == 0:  # tiled "sample" text
        th = max(6, h // 16)
        for y in range(rng.integers(0, th * 3), h, th * 4):
            for x in range(rng.integers(0, th * 6) - th * 6, w, th * 10):
                _strokes(rng, mask, y, x, th, th * 6)
    elif style == 1:  # corner badge with text
        bh, bw = max(8, h // 8), max(16, w // 4)
        by = h - bh - int(rng.integers(0, h // 16 + 1))
        bx = w - bw - int(rng.integers(0, w // 16 + 1))
        _strokes(rng, mask, by + bh // 4, bx + bw // 8, bh // 2, bw * 3 // 4)
    else:  # one line of shop name / URL across the middle
        th = max(6, h // 12)
        _strokes(rng, mask, int(rng.uniform(0.3, 0.7) * h), w // 8, th, w * 3 // 4)
    return mask


def synthetic_pair(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(watermarked image 3 x H x W, mask 1 x H x W), float32 in [0, 1]."""
    clean = _background(rng, h, w)
    mask = _watermark_mask(rng, h, w)
    alpha = mask * np.float32(rng.uniform(0.2, 0.9))
    colour = np.full(3, rng.choice([0.0, 0.5, 1.0]), np.float32)[:, None, None]
    image = alpha[None] * colour + (1 - alpha[None]) * clean
    return image.astype(np.float32), mask[None]


def synthetic_batch(kind: str, batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A float32 input batch for `kind` (detector: N x 3, remover: N x 7 x H x W)."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(batch):
        image, mask = synthetic_pair(rng, height, width)
        rgb = np.rint(image.transpose(1, 2, 0) * 255).astype(np.uint8)
        items.append(image if kind == "detector" else remover_input(rgb, mask[0]))
    return np.ascontiguousarray(np.stack(items), dtype=np.float32)
