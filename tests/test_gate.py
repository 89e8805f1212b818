"""The do-no-harm gate (pipeline.gate) and the pipeline's use of it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clearmark.models.masks import Mask, build_mask
from clearmark.models.networks import IN_CHANNELS
from clearmark.pipeline.gate import GateLimits, RegionVerdict, blend_fit, judge, judge_region
from clearmark.pipeline.process import around_mark, mask_image, process_image
from tests.badfiles import encode
from tests.test_pipeline import BoxDetector, FakeEngine, cfg, fake_engines, pixels
from tests.test_verdict import FakeText, line


def textured(h=120, w=160, seed=0) -> np.ndarray:
    """A fabric-like photo: stripes plus noise, mid grey-brown."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 120 + 40 * np.sin(xx / 2.5) * np.sin(yy / 3.0) + rng.normal(0, 12, (h, w))
    img = np.stack([base, base * 0.85, base * 0.7], axis=2)
    return np.clip(img, 0, 255).astype(np.uint8)


def overlay(bg: np.ndarray, box=(40, 30, 120, 80), colour=(255, 255, 255), a=0.5) -> np.ndarray:
    """`bg` with a translucent block of stripes (a mark's strokes) inside `box`."""
    out = bg.astype(np.float32)
    x0, y0, x1, y1 = box
    strokes = np.zeros(bg.shape[:2], bool)
    strokes[y0:y1, x0:x1] = (np.arange(x0, x1) // 4 % 2 == 0)[None, :]
    out[strokes] = a * np.array(colour, np.float32) + (1 - a) * out[strokes]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), strokes


def test_blend_fit_explains_an_overlay_and_not_an_erased_texture():
    bg = textured()
    marked, strokes = overlay(bg)
    explained, colour, alpha = blend_fit(marked[strokes].astype(np.float32), bg[strokes].astype(np.float32))
    assert explained > 0.99
    assert np.allclose(colour, 255, atol=3) and np.median(alpha) == pytest.approx(0.5, abs=0.02)
    # "Restoring" the texture to its local mean: lighter here, darker there.
    flat = np.full_like(bg, bg.reshape(-1, 3).mean(0).astype(np.uint8))
    region = np.zeros(bg.shape[:2], bool)
    region[30:80, 40:120] = True
    explained, _, _ = blend_fit(bg[region].astype(np.float32), flat[region].astype(np.float32))
    assert explained < 0.7


def test_a_region_that_erases_texture_fails_and_a_lifted_overlay_passes():
    bg = textured()
    marked, strokes = overlay(bg)
    region = np.zeros(bg.shape[:2], bool)
    region[28:82, 38:122] = True
    rng = np.random.default_rng(0)
    limits = GateLimits(max_flattened=0.75)
    good = judge_region(marked, bg, region, 0.99, limits, rng)
    assert good.passed, good.reason
    smeared = marked.copy()
    smeared[region] = bg[region].reshape(-1, 3).mean(0).astype(np.uint8)
    bad = judge_region(marked, smeared, region, 0.99, limits, rng)
    # The white strokes dominate the change, so one colour explains most of it; what gives
    # the smear away is the fabric texture that is gone.
    assert not bad.passed and "lost the surrounding texture" in bad.reason


def test_a_strap_the_detector_took_for_a_mark_continues_outside_it():
    img = np.full((120, 160, 3), 250, np.uint8)
    img[:, 70:84] = 30  # a dark strap, top to bottom, on white
    restored = img.copy()
    restored[40:80, 66:88] = 250  # a segment of it painted white
    region = np.zeros(img.shape[:2], bool)
    region[40:80, 66:88] = True
    v = judge_region(img, restored, region, 0.99, GateLimits(), np.random.default_rng(0))
    assert v.explained > 0.9  # as an overlay it is consistent (opaque black) ...
    assert not v.passed and "continues outside" in v.reason  # ... but it carries on


def test_a_region_with_no_visible_change_is_not_kept():
    bg = textured()
    region = np.zeros(bg.shape[:2], bool)
    region[28:82, 38:122] = True
    nudged = bg.copy()
    nudged[region] = np.clip(nudged[region].astype(int) + 2, 0, 255)  # JPEG-noise sized
    v = judge_region(nudged, bg, region, 0.99, GateLimits(), np.random.default_rng(0))
    assert not v.passed and v.reason == "no visible change"


def test_an_unsure_or_faint_region_fails():
    bg = textured()
    region = np.zeros(bg.shape[:2], bool)
    region[28:82, 38:122] = True
    rng = np.random.default_rng(0)
    marked, _ = overlay(bg)
    unsure = judge_region(marked, bg, region, 0.5, GateLimits(), rng)
    assert not unsure.passed and "not sure" in unsure.reason
    faint, _ = overlay(bg, a=0.08)  # a shading shift, not a visible overlay
    v = judge_region(faint, bg, region, 0.99, GateLimits(), rng)
    assert v.explained > 0.9 and not v.passed and "too faint" in v.reason


def test_judge_gives_one_verdict_per_region_with_its_confidence():
    bg = textured()
    marked, strokes = overlay(bg)
    dilated = np.zeros(bg.shape[:2], bool)
    dilated[28:82, 38:122] = True
    dilated[100:110, 5:20] = True  # a second, separate region
    prob = np.where(dilated, 0.9, 0).astype(np.float32)
    regions = judge(marked, bg, dilated, prob)
    assert len(regions) == 2
    assert {r.verdict.box for r in regions} == {(38, 28, 122, 82), (5, 100, 20, 110)}
    assert all(r.verdict.confidence == pytest.approx(0.9) for r in regions)


class SmearRemover(FakeEngine):
    """Fills the whole mask with its mean colour and calls every masked pixel the mark:
    what the old models did to faces and fabric."""

    kind = "remover"

    def run(self, batch):
        self._record(batch, IN_CHANNELS["remover"])
        m = batch[:, 3:4] > 0
        mean = (batch[:, :3] * m).sum((2, 3), keepdims=True) / np.maximum(m.sum((2, 3), keepdims=True), 1)
        out = np.where(m, mean, batch[:, :3])
        return np.concatenate([out, m.astype(np.float32)], axis=1).astype(np.float32)


def test_a_harmful_change_goes_to_review_as_a_proposal():
    data = encode(Image.fromarray(textured()), "PNG")
    settings = cfg(gate=True, change_ring_px=3)
    r = process_image(data, fake_engines(detector=BoxDetector(), remover=SmearRemover()), settings)
    assert r.status == "needs_review"
    assert "nothing was removed there" in r.review_reason
    assert "put back by the gate" in r.review_reason
    assert "change not explained by one overlay colour (0.521 < 0.8)" in r.review_reason
    assert r.details["gate"] and not r.details["gate"][0]["passed"]
    # In review the job shows the whole removal as a proposal, and says so first.
    assert r.details["proposal"] and r.review_reason.startswith("the result shown is a proposal")
    shown = np.asarray(pixels(r.image_bytes).convert("RGB"))
    smeared = np.asarray(pixels(r.mask_png)) > 0
    assert smeared.any() and r.metrics["mask_area_fraction"] == pytest.approx(smeared.mean())
    assert np.array_equal(shown[~smeared], textured()[~smeared])
    assert not np.array_equal(shown, textured())
    # Without the gate the same change goes through as a success: the gate is what stops it.
    no_gate = settings.replace(gate=False, detector_absent_below=1.01)
    r = process_image(data, fake_engines(detector=BoxDetector(), remover=SmearRemover()), no_gate)
    assert r.status == "succeeded"


def test_a_proposal_still_leaves_printed_product_text_as_it_was():
    data = encode(Image.fromarray(textured()), "PNG")
    engines = fake_engines(detector=BoxDetector(), remover=SmearRemover())
    engines.text = FakeText(line((60, 35, 100, 55), overlay=0.05))  # printed, across the box
    r = process_image(data, engines, cfg(gate=True, change_ring_px=3))
    shown = np.asarray(pixels(r.image_bytes).convert("RGB"))
    assert r.status == "needs_review" and r.details["proposal"]
    assert "the removal reached product text at (60, 35, 100, 55)" in r.review_reason
    assert np.array_equal(shown[35:55, 60:100], textured()[35:55, 60:100])
    assert not np.array_equal(shown[35:55, 40:60], textured()[35:55, 40:60])


def test_a_proposal_leaves_out_what_no_detector_still_flags():
    """Two smeared regions, both put back: the sure one sends the job to review and is in
    the proposal; the other scores under the detector's low limit (a false alarm put back)
    and stays as it was."""

    class SureAndFaint(BoxDetector):
        def run(self, batch):
            sure = BoxDetector(box=(0.05, 0.2, 0.4, 0.7)).run(batch)
            faint = BoxDetector(box=(0.6, 0.2, 0.95, 0.7)).run(batch) * np.float32(0.6)
            return np.maximum(sure, faint)

    data = encode(Image.fromarray(textured()), "PNG")
    settings = cfg(gate=True, change_ring_px=3, detector_absent_below=0.65)
    r = process_image(data, fake_engines(detector=SureAndFaint(), remover=SmearRemover()), settings)
    assert r.status == "needs_review" and r.details["proposal"]
    assert sorted(v["passed"] for v in r.details["gate"]) == [False, False]
    changed = np.asarray(pixels(r.mask_png)) > 0
    assert changed[:, :64].any() and not changed[:, 80:].any()
    assert r.review_reason.startswith("the result shown is a proposal: it also removes the 1 region(s)")


class FaintBoxDetector(BoxDetector):
    """BoxDetector at probability 0.6: masked (threshold 0.5), not sure."""

    def run(self, batch):
        return super().run(batch) * np.float32(0.6)


def test_a_put_back_region_is_never_no_watermark():
    """Put back however unsure the detector was: above its low limit, review, not absence."""
    data = encode(Image.fromarray(textured()), "PNG")
    settings = cfg(gate=True, change_ring_px=3, detector_absent_below=0.55)
    r = process_image(data, fake_engines(detector=FaintBoxDetector(), remover=SmearRemover()), settings)
    assert r.status == "needs_review" and "score 0.6 >= 0.55" in r.review_reason
    assert r.details["proposal"]


def test_a_false_alarm_below_the_low_limit_is_put_back_as_no_watermark():
    data = encode(Image.fromarray(textured()), "PNG")
    settings = cfg(gate=True, change_ring_px=3, detector_absent_below=0.65)
    r = process_image(data, fake_engines(detector=FaintBoxDetector(), remover=SmearRemover()), settings)
    assert r.status == "no_watermark" and r.review_reason is None


def test_changes_stay_near_the_marks_own_pixels():
    found = np.zeros((60, 80), bool)
    found[20:24, 10:70] = True
    wide = build_mask(np.pad(np.ones((30, 70), np.float32), ((10, 20), (5, 5))), 0.5, 1, 6)
    tight = around_mark(found, wide, 3)
    assert tight.dilated[17:27, 10:70].all() and not tight.dilated[:16].any()
    assert not tight.dilated[28:].any()
    assert (tight.alpha > 0).sum() == tight.dilated.sum()
    job_mask = mask_image(tight, found)
    assert (job_mask[found] == 255).all()
    assert ((job_mask > 0) == tight.dilated).all() and job_mask[~found].max() < 128


def test_a_fully_changed_pixel_off_the_mark_is_never_reported_as_mark():
    found = np.zeros((20, 20), bool)
    found[8:12, 8:12] = True
    changed = np.zeros((20, 20), bool)
    changed[5:15, 5:15] = True
    full = Mask(core=found, dilated=changed, alpha=np.where(changed, 255, 0).astype(np.uint8))
    job_mask = mask_image(full, found)
    assert (job_mask[found] == 255).all() and job_mask[changed & ~found].max() == 127


class GreyFillRemover(SmearRemover):
    """Paints every masked pixel (100, 100, 100) and calls it the mark."""

    def run(self, batch):
        out = super().run(batch)
        m = batch[:, 3:4] > 0
        out[:, :3] = np.where(m, np.float32(100 / 255), batch[:, :3])
        return out


def test_a_job_that_leaves_a_sure_region_in_place_is_not_a_success():
    img = textured()
    img[:, :80] = 100  # flat grey left half
    marked, _ = overlay(img, box=(10, 30, 70, 80), a=0.6)  # a mark on the grey
    settings = cfg(
        gate=True,
        change_ring_px=3,
        gate_min_confidence=0.9,
    )

    class TwoBoxes(BoxDetector):
        def run(self, batch):
            return np.maximum(
                BoxDetector(box=(0.05, 0.2, 0.45, 0.7)).run(batch),
                BoxDetector(box=(0.6, 0.2, 0.95, 0.7)).run(batch),
            )

    r = process_image(
        encode(Image.fromarray(marked), "PNG"),
        fake_engines(detector=TwoBoxes(), remover=GreyFillRemover()),
        settings,
    )
    passed = [v["passed"] for v in r.details["gate"]]
    assert sorted(passed) == [False, True]  # the mark lifted, the texture kept
    assert r.status == "needs_review" and "put back by the gate" in r.review_reason
    out = np.asarray(pixels(r.image_bytes).convert("RGB"))
    assert np.abs(out[30:80, 10:70].astype(int) - 100).max() <= 1
    # The reviewer is shown the texture's removal too, as a proposal, never as a success.
    assert r.details["proposal"] and not np.array_equal(out[:, 80:], marked[:, 80:])


def test_the_prior_waives_confidence_and_opacity_only():
    limits = GateLimits(sure_prior=0.9)

    def verdict(prior, confidence=0.5, opacity=0.1, explained=0.95, continues=0.0):
        return RegionVerdict(
            (0, 0, 1, 1), 1, explained, opacity, (0, 0, 0), continues, 0.0, confidence, False, "", prior
        )

    assert limits.failures(0.5, 0.1, 0.95, 0.0, 0.0)  # the gate alone puts it back
    assert limits.waived(verdict(prior=0.95))
    assert not limits.waived(verdict(prior=0.85))
    assert not limits.waived(verdict(prior=0.95, explained=0.5))  # not one overlay colour
    assert not limits.waived(verdict(prior=0.95, continues=0.3))  # a strap, an edge
    assert not GateLimits().waived(verdict(prior=1.0))  # off by default in GateLimits
