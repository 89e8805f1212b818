"""Fitting the overlay model `I = a*W + (1-a)*B` to a change: one mark colour W and a
per-pixel opacity a. The do-no-harm gate (`pipeline.gate`) asks whether a change is the
lifting of an overlay; training (`models.reviewed_data`) reads a reviewed photo's opacity."""

from __future__ import annotations

import numpy as np


def blend_fit(before: np.ndarray, after: np.ndarray, iters: int = 8) -> tuple[float, np.ndarray, np.ndarray]:
    """Fit `before ~ after + a * (W - after)` (N x 3 float arrays, 0-255) with one colour
    W in [0, 255]^3 and a in [0, 1] per pixel, by alternating least squares from a few
    starts. Returns (explained share of sum |before - after|^2, W, a)."""
    d = before - after
    total = float((d * d).sum())
    if total == 0:
        return 1.0, np.zeros(3), np.zeros(len(d))
    strong = np.argsort((d * d).sum(1))[-max(1, len(d) // 10) :]
    starts = [
        np.zeros(3),
        np.full(3, 255.0),
        before[strong].mean(0),
        np.clip(after[strong].mean(0) + 3 * d[strong].mean(0), 0, 255),
    ]
    best = (-np.inf, starts[0], np.zeros(len(d)))
    for w in starts:
        for _ in range(iters):
            v = w[None] - after
            a = np.clip((d * v).sum(1) / np.maximum((v * v).sum(1), 1e-6), 0, 1)
            denom = float((a * a).sum())
            if denom < 1e-9:
                break
            w = np.clip((a[:, None] * (before - (1 - a[:, None]) * after)).sum(0) / denom, 0, 255)
        v = w[None] - after
        a = np.clip((d * v).sum(1) / np.maximum((v * v).sum(1), 1e-6), 0, 1)
        res = d - a[:, None] * v
        explained = 1.0 - float((res * res).sum()) / total
        if explained > best[0]:
            best = (explained, w, a)
    return best
