"""The suspect prior: fitted on labelled suspects, its limit keeps marked photos from being
dismissed, and the pipeline judges the detector's suspects by it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clearmark.pipeline.calibrate import MAX_DISMISSED, Photo, fit_prior, write_prior
from clearmark.pipeline.process import process_image
from clearmark.pipeline.verdict import PRIOR_FEATURES, load_prior, prior_features
from tests.test_gate import FaintBoxDetector, SmearRemover, textured
from tests.test_pipeline import cfg, encode, fake_engines, marked


def evidence(p90: float, mark_share: float) -> list[float]:
    return prior_features({"p90": p90, "mean": p90 - 0.1, "area": 1e-3, "mark_share": mark_share})


def photos(seed: int = 0) -> list[Photo]:
    """Marks: sure detections the remover agrees with; false alarms: weaker, unconfirmed."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(40):
        mark = [(evidence(rng.uniform(0.97, 0.999), rng.uniform(0.4, 0.9)), 1.0) for _ in range(3)]
        alarm = [(evidence(rng.uniform(0.5, 0.95), rng.uniform(0.0, 0.3)), 0.0)]
        out.append(Photo(marked=True, changed=i % 2 == 0, suspects=mark + alarm))
        out.append(Photo(marked=False, changed=False, suspects=alarm if i % 3 == 0 else []))
    return out


def test_the_prior_separates_marks_from_false_alarms_and_keeps_marked_photos():
    prior = fit_prior(photos())
    assert prior["model"]["features"] == PRIOR_FEATURES
    assert prior["at_limit"]["marked_dismissed"] <= MAX_DISMISSED
    assert prior["at_limit"]["clean_flagged"] < 0.34  # some alarms dismissed (a third had one)
    assert prior["suspects"] == {"on_mark": 120, "false_alarm": 40 + 14}


def test_without_both_kinds_of_suspect_there_is_nothing_to_fit():
    with pytest.raises(ValueError, match="both on marks and off them"):
        fit_prior([Photo(True, True, [(evidence(0.99, 0.8), 1.0)])])


def test_the_pipeline_scores_detector_suspects_with_the_prior(tmp_path, monkeypatch):
    load_prior.cache_clear()
    path = tmp_path / "prior.json"
    write_prior(fit_prior(photos()), "test", path)
    assert json.loads(path.read_text())["command"] == "test"
    load_prior.cache_clear()
    monkeypatch.setattr("clearmark.pipeline.process.load_prior", lambda: load_prior(path))
    r = process_image(encode(Image.fromarray(marked()), "PNG"), fake_engines(), cfg(suspect_prior=True))
    suspect = r.details["suspects"][0]
    assert 0.0 <= suspect["score"] <= 1.0 and suspect["evidence"]["p90"] == 1.0
    assert r.status == "succeeded"  # removed, and the detector finds nothing after
    # A weak, unconfirmed detection the gate puts back: by the detector alone a suspect
    # (review), by the prior a false alarm (no_watermark).
    faint = encode(Image.fromarray(textured()), "PNG")
    engines = fake_engines(detector=FaintBoxDetector(), remover=SmearRemover())
    alone = process_image(faint, engines, cfg(gate=True, change_ring_px=3))
    judged = process_image(faint, engines, cfg(gate=True, change_ring_px=3, suspect_prior=True))
    assert (alone.status, judged.status) == ("needs_review", "no_watermark")
    assert judged.details["suspects"][0]["score"] < load_prior(path).limit
