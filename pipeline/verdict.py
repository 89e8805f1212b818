"""What a job's status promises, as rules over what every detector saw.

A storefront publishes on `succeeded` and `no_watermark` without looking, so:

- `no_watermark` is evidence of absence: no detector flagged anything at its calibrated
  low limit, anywhere. A region that was flagged and not removed (put back by the gate,
  dropped because the remover found too little there, or never masked) is never
  `no_watermark`.
- `succeeded`: something was removed, and every detector, run again on the delivered
  image over every region any of them flagged (removed, put back or dropped alike), is
  below its low limit there.
- anything else is `needs_review`, with each reason naming the detector, where, and the
  value as compared against its limit.

`Suspect` is one flagged region; `decide` applies the rules. The pipeline fills both.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from clearmark.models.logistic import Logistic
from clearmark.models.masks import Box
from clearmark.models.weights import WEIGHTS_DIR, MissingWeights

SUSPECT_MIN_AREA_AT_DETECTOR = 24  # px at the detector's scale: smaller blobs are noise
DETECTOR = "detector"  # the learned detector (per-pixel watermark probability)
REPETITION = "repetition detector"  # models.repetition: a mark tiled over the photo
TEXT = "text prior"  # models.text_prior: a line of overlaid text
TEXT_LINE = "text detector"  # a line of text (not printed product text) the removal changed


@dataclass
class Suspect:
    detector: str  # which detector flagged it (DETECTOR, REPETITION, ...)
    box: Box  # full-resolution x0, y0, x1, y1 (half-open)
    pixels: np.ndarray  # bool, the region inside `box`
    value: float  # the detector's score for the region on the upload
    limit: float  # the detector's calibrated low limit: below it, nothing is there
    after: float | None = None  # the detector's score on the delivered image (None: not run again)
    fate: str = "not removed"  # what the pipeline did there, for the reason
    evidence: dict[str, float] = field(default_factory=dict)  # measurements behind `value`
    after_limit: float | None = None  # the limit for `after` (None: `limit`)

    @property
    def window(self) -> tuple[slice, slice]:
        x0, y0, x1, y1 = self.box
        return slice(y0, y1), slice(x0, x1)

    @property
    def final(self) -> tuple[float, float]:
        """The score the delivered image has there, and the limit it must stay under."""
        if self.after is None:
            return self.value, self.limit
        return self.after, self.limit if self.after_limit is None else self.after_limit

    @property
    def lingers(self) -> bool:
        score, limit = self.final
        return score >= limit

    def touched_by(self, changed: np.ndarray) -> bool:
        return bool(changed[self.window][self.pixels].any())


PRIOR_PATH = WEIGHTS_DIR / "suspect_prior.json"
PRIOR_FEATURES = [
    "logit_p90",
    "mean",
    "log_area",
    "mark_mean",
    "mark_share",
    "gate_opacity",
    "gate_continues",
    "gate_confidence",
    "gated",
]


def prior_features(evidence: dict[str, float]) -> list[float]:
    """A learned-detector suspect's evidence as the prior's features (PRIOR_FEATURES)."""
    p = min(max(evidence["p90"], 1e-4), 1 - 1e-4)
    gated = "gate_confidence" in evidence
    return [
        math.log(p / (1 - p)),
        evidence["mean"],
        math.log10(evidence["area"] + 1e-7),
        evidence.get("mark_mean", 0.0),
        evidence.get("mark_share", 0.0),
        evidence.get("gate_opacity", 0.0),
        evidence.get("gate_continues", 0.0),
        evidence.get("gate_confidence", evidence["mean"]),
        float(gated),
    ]


@dataclass
class SuspectPrior:
    """How likely a learned-detector suspect is a mark, from all its evidence (the detector's
    scores, the remover's second opinion, the gate's measurements): a logistic model fitted
    on the train split by `clearmark calibrate-suspects`, and the low limit chosen there."""

    model: Logistic
    limit: float

    def score(self, evidence: dict[str, float]) -> float:
        return float(self.model.predict(np.array([prior_features(evidence)]))[0])


@lru_cache(maxsize=2)
def load_prior(path: Path = PRIOR_PATH) -> SuspectPrior:
    if not path.is_file():
        raise MissingWeights(f"{path} is missing: run `clearmark calibrate-suspects` to make it")
    d = json.loads(path.read_text())
    return SuspectPrior(Logistic.from_dict(d["model"]), float(d["limit"]))


@dataclass
class Verdict:
    status: str  # "succeeded" | "no_watermark" | "needs_review"
    reasons: list[str] = field(default_factory=list)


def as_compared(value: float, limit: float) -> str:
    """`value` printed so that the comparison with `limit` reads true: short where that
    is enough, in full where rounding would make them look equal."""
    short = f"{value:.3g}"
    return (
        short if float(short) != float(limit) and (float(short) >= limit) == (value >= limit) else repr(value)
    )


def score_p90(prob: np.ndarray, pixels: np.ndarray) -> float:
    """A region's score: the 90th percentile of the probability over its pixels (the mean
    lets a large faint blob hide a strong part; the maximum is one noisy pixel)."""
    return float(np.percentile(prob[pixels], 90)) if pixels.any() else 0.0


def find_suspects(prob: np.ndarray, limit: float, min_area: int, detector: str = DETECTOR) -> list[Suspect]:
    """The regions (8-connected, at least `min_area` px) where `prob` reaches `limit`."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats((prob >= limit).astype(np.uint8), connectivity=8)
    out = []
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < min_area:
            continue
        pixels = labels[y : y + h, x : x + w] == k
        window = prob[y : y + h, x : x + w]
        value = score_p90(window, pixels)
        evidence = {"p90": value, "mean": float(window[pixels].mean()), "area": area / prob.size}
        out.append(Suspect(detector, (x, y, x + w, y + h), pixels, value, limit, evidence=evidence))
    return out


def decide(suspects: list[Suspect], changed: bool) -> Verdict:
    """The status the rules above give (see the module docstring). The reasons: one per
    detector and outcome, its strongest region first (a tiled mark is one sentence, not a
    hundred); every region stays in the job's details."""
    lingering = [s for s in suspects if s.lingers]
    if not lingering:
        return Verdict("succeeded" if changed else "no_watermark")
    groups: dict[tuple[str, bool, str], list[Suspect]] = {}
    for s in lingering:
        groups.setdefault((s.detector, s.after is not None, s.fate.split(":")[0]), []).append(s)
    return Verdict("needs_review", [_why(group) for group in groups.values()])


def _why(group: list[Suspect]) -> str:
    s = max(group, key=lambda x: x.final[0])
    when = "after removal" if s.after is not None else "and nothing was removed there"
    score, limit = s.final
    measured = f"score {as_compared(score, limit)} >= {limit}; {s.fate}"
    where = f"at {s.box}" if len(group) == 1 else f"in {len(group)} regions, most at {s.box}"
    return f"the {s.detector} still finds a mark {where} {when} ({measured})"
