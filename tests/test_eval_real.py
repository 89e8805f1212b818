"""`clearmark eval-real`'s numbers on a tiny hand-made set, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clearmark.pipeline.evaluate_real import Case, bootstrap, find_product_text, score, summarize, sweep_gate
from clearmark.pipeline.gate import GateLimits


def case(marked=True) -> Case:
    clean = np.full((10, 10, 3), 100, np.uint8)
    composite = clean.copy()
    mask = np.zeros((10, 10), bool)
    if marked:
        mask[2:4, 2:7] = True  # 10 mark pixels, 20 levels brighter
        composite[mask] = 120
    return Case(
        name="x.jpg",
        marked=marked,
        style="text" if marked else "clean",
        upload=b"",
        clean=clean,
        composite=composite,
        mask=mask,
    )


def test_a_perfect_removal_scores_as_computed_by_hand():
    c = case()
    r = score(c, c.clean.copy(), c.mask.copy(), "succeeded")
    # input: 10 of 100 pixels off by 20 in 3 channels -> MSE 40
    assert r["psnr_input"] == pytest.approx(10 * math.log10(255**2 / 40))
    assert r["psnr"] == 100.0 and r["psnr_in"] == 100.0 and r["f1"] == 1.0
    assert r["psnr_in_input"] == pytest.approx(10 * math.log10(255**2 / 400))
    assert r["changed"] and not r["harm"]


def test_a_change_worse_than_the_input_is_harm_only_when_reported_succeeded():
    c = case()
    out = c.composite.copy()
    out[6:10, :] = 60  # 40 pixels off by 40: MSE 640 > 40
    pred = np.zeros_like(c.mask)
    pred[2:4, 2:4] = True  # 4 of the 10 mark pixels, no false ones
    r = score(c, out, pred, "succeeded")
    assert r["psnr"] == pytest.approx(10 * math.log10(255**2 / (640 + 40)))
    assert r["harm"] and r["f1"] == pytest.approx(2 * 4 / (2 * 4 + 0 + 6))
    assert r["mask_precision"] == 1.0 and r["mask_recall"] == pytest.approx(0.4)
    assert not score(c, out, pred, "needs_review")["harm"]


def test_a_clean_photo_changed_by_three_levels_counts_as_changed_and_harmed():
    c = case(marked=False)
    out = c.clean.copy()
    out[0, 0, 0] += 3
    r = score(c, out, np.zeros_like(c.mask), "succeeded")
    assert r["changed"] and r["harm"] and "f1" not in r
    out[0, 0, 0] = 102  # 2 levels: JPEG-noise level, not "changed"
    assert not score(c, out, np.zeros_like(c.mask), "succeeded")["changed"]


def test_summary_rates_and_intervals():
    c_m, c_c = case(), case(marked=False)
    rows = [
        score(c_m, c_m.clean, c_m.mask, "succeeded"),
        score(c_m, c_m.composite, np.zeros_like(c_m.mask), "no_watermark"),
        score(c_c, c_c.clean, np.zeros_like(c_c.mask), "no_watermark"),
        score(c_c, c_c.clean + 5, np.zeros_like(c_c.mask), "needs_review"),
    ]
    s = summarize(rows)
    assert s["statuses"] == {"succeeded": 1, "no_watermark": 2, "needs_review": 1}
    assert s["harm_rate"] == (0.0, 0.0, 0.0) and s["harmed"] == 0
    assert s["clean_changed"][0] == 0.5 and s["clean_review"][0] == 0.5
    assert s["clean_changed_succeeded"][0] == 0.0
    assert s["f1"][0] == 0.5 and s["marked_succeeded"] == 1
    assert s["mask_precision"][0] == 0.5 and s["mask_recall"][0] == 0.5  # no pixel claimed: 0
    mean, lo, hi = bootstrap([1.0, 0.0, 1.0, 0.0])
    assert mean == 0.5 and 0.0 <= lo < 0.5 < hi <= 1.0
    assert bootstrap([2.0, 2.0]) == (2.0, 2.0, 2.0)


def test_gate_precision_counts_regions_by_what_they_did():
    from clearmark.pipeline.evaluate_real import gate_precision

    rows = [
        {
            "gate": [{"passed": True}, {"passed": True}, {"passed": False}],
            "truth": [0.3, 0.0, 0.0],
            "delta_sse": [-50.0, 20.0, 0.0],
        },
        {"gate": [{"passed": False}], "truth": [0.2], "delta_sse": [0.0]},
    ]
    assert gate_precision(rows) == {
        "kept": 2,
        "kept_helped": 1,
        "kept_on_mark": 1,
        "put_back": 2,
        "put_back_false_alarm": 1,
    }


def test_product_text_counts_as_changed_when_letters_move_not_when_untouched():
    c = case()
    inside = np.zeros((4, 6), bool)
    inside[1:3, 1:5] = True  # 8 pixels of a product text line at rows 6-9, columns 2-7
    c.product_text = [((2, 6, 8, 10), inside)]
    assert not score(c, c.clean.copy(), c.mask, "succeeded")["text_changed"]
    out = c.clean.copy()
    out[7, 3] = 200  # one of 8 letter pixels lost (12.5% >= TEXT_CHANGED_SHARE)
    assert score(c, out, c.mask, "succeeded")["text_changed"]
    out = c.clean.copy()
    out[6, 2] = 200  # inside the box, outside the letters
    assert not score(c, out, c.mask, "succeeded")["text_changed"]


def test_find_product_text_keeps_only_lines_clear_of_the_mark():
    from PIL import Image, ImageDraw

    from clearmark.models.scenes import font
    from clearmark.models.text_prior import TextDetector

    im = Image.new("RGB", (640, 480), (250, 250, 250))
    d = ImageDraw.Draw(im)
    d.text((40, 60), "ORGANIC OATS", font=font("DejaVuSans-Bold.ttf", 40), fill=(20, 20, 20))
    d.text((40, 360), "SAMPLE MARK", font=font("DejaVuSans-Bold.ttf", 40), fill=(20, 20, 20))
    clean = np.asarray(im)
    mask = np.zeros(clean.shape[:2], bool)
    mask[355:410, 35:380] = True
    c = Case("x.jpg", True, "text", b"", clean, clean, mask)
    find_product_text([c], TextDetector.load())
    assert c.product_text and all(box[3] < 300 for box, _ in c.product_text)


def test_the_gate_sweep_follows_the_statuses_rules():
    def region(confidence, delta):
        v = {"confidence": confidence, "opacity": 0.5, "explained": 0.95, "continues": 0.0, "flattened": 0.1}
        return v, delta

    def row(marked, *regions):
        return {
            "marked": marked,
            "gate": [v for v, _ in regions],
            "delta_sse": [d for _, d in regions],
            "sse_input": 1000.0,
        }

    rows = [
        row(True, region(0.99, -900.0)),  # a sure region that helped: succeeded
        row(True, region(0.99, -900.0), region(0.5, -10.0)),  # one put back: review
        row(False),  # nothing found: no_watermark
        row(False, region(0.5, 50.0)),  # put back on a clean photo: review, not harm
    ]
    res = sweep_gate(rows, {"min_confidence": 0.9}, GateLimits)
    assert (res["succeeded"], res["review"], res["clean_review"], res["harmed"]) == (1, 2, 1, 0)
    assert res["marked_succeeded"] == 1 and res["gain_db"] == pytest.approx(
        np.mean([10 * np.log10(1000 / 100), 10 * np.log10(1000 / 100)])
    )
