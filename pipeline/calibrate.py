"""`clearmark calibrate-suspects`: fit the suspect prior (`pipeline.verdict.SuspectPrior`) on
the train split and choose its low limit there.

The pipeline runs on train photos, marked with training's own mark styles and clean; every
learned-detector suspect is labelled by whether it lies on the true mark (at least half of
its pixels within 3 px of it: a mark; under a tenth: a false alarm; between: left out).
A logistic model over its evidence is fitted, and the limit is the highest of `LIMITS` at
which at most `MAX_DISMISSED` of the marked photos the pipeline left unchanged would have
every suspect under it (those would be reported `no_watermark`: the worst answer there is).
Never run on the split you report.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clearmark.models import logistic
from clearmark.models.masks import dilate_disc
from clearmark.pipeline.evaluate_real import Case
from clearmark.pipeline.process import Engines, clean_rgb, rerun_detectors
from clearmark.pipeline.verdict import DETECTOR, PRIOR_FEATURES, prior_features
from clearmark.settings import Settings

ON_MARK, OFF_MARK = 0.5, 0.1  # share of a suspect's pixels on the true mark (3 px dilated)
LIMITS = tuple(round(x, 2) for x in np.arange(0.05, 0.96, 0.05))
MAX_DISMISSED = 0.03  # on train: the dev target is 10% of marked photos, its test bar 15%


@dataclass
class Photo:
    marked: bool
    changed: bool  # the pipeline changed some pixel
    suspects: list[tuple[list[float], float]]  # (features, share on the mark)


def observe(cases: Iterable[Case], engines: Engines, settings: Settings) -> Iterable[Photo]:
    """The pipeline on each case, with the suspect prior off (raw evidence)."""
    raw = settings.replace(suspect_prior=False)
    for case in cases:
        c = clean_rgb(engines, case.composite, raw)
        rerun_detectors(engines, c.restored, c.suspects, c.mask.dilated, raw)
        truth = dilate_disc(case.mask, 3).astype(bool)
        yield Photo(
            case.marked,
            bool(c.mask.dilated.any()),
            [
                (prior_features(x.evidence), float(truth[x.window][x.pixels].mean()))
                for x in c.suspects
                if x.detector == DETECTOR
            ],
        )


def fit_prior(photos: list[Photo]) -> dict[str, Any]:
    """The prior's model, limit and what they do on these photos (a JSON-ready dict)."""
    rows = [(f, on) for p in photos for f, on in p.suspects if on >= ON_MARK or on < OFF_MARK]
    if not rows or len({on >= ON_MARK for _, on in rows}) < 2:
        raise ValueError("need suspects both on marks and off them: use more photos")
    x = np.array([f for f, _ in rows])
    y = np.array([on >= ON_MARK for _, on in rows], float)
    model = logistic.fit(x, y, PRIOR_FEATURES)

    def flagged(p: Photo, limit: float) -> bool:
        return bool(p.suspects) and float(model.predict(np.array([f for f, _ in p.suspects])).max()) >= limit

    marked_unchanged = [p for p in photos if p.marked and not p.changed]
    n_marked = max(1, sum(p.marked for p in photos))
    clean = [p for p in photos if not p.marked]
    table = {
        str(t): {
            "marked_dismissed": sum(not flagged(p, t) for p in marked_unchanged) / n_marked,
            "clean_flagged": sum(flagged(p, t) for p in clean) / max(1, len(clean)),
        }
        for t in LIMITS
    }
    ok = [t for t in LIMITS if table[str(t)]["marked_dismissed"] <= MAX_DISMISSED]
    limit = max(ok) if ok else min(LIMITS)
    return {
        "model": model.as_dict(),
        "limit": limit,
        "max_dismissed": MAX_DISMISSED,
        "suspects": {"on_mark": int(y.sum()), "false_alarm": int(len(y) - y.sum())},
        "photos": {"marked": n_marked, "clean": len(clean)},
        "at_limit": table[str(limit)],
        "by_limit": table,
    }


def write_prior(prior: dict[str, Any], command: str, path: Path) -> None:
    path.write_text(json.dumps({"command": command, **prior}, indent=1) + "\n")
