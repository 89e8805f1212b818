"""A small L2-regularised logistic regression in numpy, stored as plain JSON: enough to
combine a handful of measurements into one calibrated score, with no model library."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Logistic:
    features: list[str]
    mean: list[float]  # standardisation of each feature
    scale: list[float]
    weights: list[float]
    bias: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(positive) for rows of features (N x F, in `features` order)."""
        z = (np.asarray(x, np.float64) - self.mean) / self.scale @ np.asarray(self.weights) + self.bias
        return sigmoid(z)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Logistic:
        return cls(d["features"], d["mean"], d["scale"], d["weights"], float(d["bias"]))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))))


def fit(
    x: np.ndarray,
    y: np.ndarray,
    features: list[str],
    l2: float = 1e-2,
    steps: int = 4000,
    lr: float = 0.1,
    scale_floor: float = 1e-9,
) -> Logistic:
    """Full-batch gradient descent on standardised features (each one's spread plus
    `scale_floor`), both classes weighted equally."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mean, scale = x.mean(0), x.std(0) + scale_floor
    z = (x - mean) / scale
    pos = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    weight = np.where(y == 1, 0.5 / pos, 0.5 / (1 - pos))
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(steps):
        g = (sigmoid(z @ w + b) - y) * weight
        w -= lr * (z.T @ g / len(y) + l2 * w)
        b -= lr * float(g.mean())
    return Logistic(list(features), mean.tolist(), scale.tolist(), w.tolist(), b)
