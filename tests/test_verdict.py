"""What each status promises (issue 32), on crafted images and fake engines that see what
is really there: MagentaDetector finds magenta pixels, on the upload and on the result."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from clearmark.models.masks import build_mask
from clearmark.models.text_prior import TextLine
from clearmark.pipeline.process import LINE_WHOLE, TAKEN, guard_printed_text, line_coverage, process_image
from clearmark.pipeline.verdict import Suspect, as_compared, decide, find_suspects
from tests.test_pipeline import (
    GreyRemover,
    IdentityRemover,
    cfg,
    encode,
    fake_engines,
    is_magenta,
    marked,
    photo,
)
from tests.test_repetition import composite, product_photo, tiled_alpha


class LeftHalfRemover(GreyRemover):
    """Paints grey only the left half of each crop's mask: half of a mark stays."""

    def run(self, batch):
        out = super().run(batch)
        half = batch.shape[3] // 2
        out[:, :3, :, half:] = batch[:, :3, :, half:]
        return out


def png(img: np.ndarray) -> bytes:
    return encode(Image.fromarray(img), "PNG")


def test_a_mark_removed_whole_succeeds():
    r = process_image(png(marked()), fake_engines(), cfg())
    assert r.status == "succeeded" and r.review_reason is None
    assert r.details["suspects"][0]["after"] == 0.0


def test_a_half_removed_mark_goes_to_review():
    r = process_image(png(marked(box=(20, 30, 140, 60))), fake_engines(remover=LeftHalfRemover()), cfg())
    assert r.status == "needs_review"
    assert "still finds a mark at (20, 30, 140, 60) after removal (score 1 >= 0.5" in r.review_reason


def test_the_reported_mark_is_only_what_the_removal_moved():
    """The mask's mark pixels (>= 128) are the remover's mark pixels that the removal
    moved: the half it left in place is changed area at most, not reported as removed mark."""
    img = marked(box=(20, 30, 140, 60))
    r = process_image(png(img), fake_engines(remover=LeftHalfRemover()), cfg())
    mark = np.asarray(Image.open(io.BytesIO(r.mask_png))) >= 128
    out = np.asarray(Image.open(io.BytesIO(r.image_bytes)).convert("RGB"))
    moved = np.abs(out.astype(int) - img).max(axis=2) > 4
    assert mark.any() and not mark[~moved].any()
    values = np.unique(np.asarray(Image.open(io.BytesIO(r.mask_png))))
    assert values.max() == 255 and values[-2] <= 127  # changed around the mark: never >= 128
    assert is_magenta(out).any() and not mark[is_magenta(out)].any()


def test_a_mark_the_remover_left_in_place_goes_to_review():
    r = process_image(png(marked()), fake_engines(remover=IdentityRemover()), cfg())
    assert r.status == "needs_review" and "after removal" in r.review_reason


def test_a_dropped_region_is_never_no_watermark():
    """The remover finds no mark pixels in a detected region: nothing changes, and the job
    says so instead of promising absence."""
    r = process_image(png(marked()), fake_engines(remover=IdentityRemover()), cfg(mask_confirm_px=10_000))
    assert r.status == "needs_review" and "dropped: the remover found fewer than 10000" in r.review_reason


def test_nothing_flagged_is_no_watermark():
    r = process_image(png(photo(160, 120, seed=1)), fake_engines(), cfg())
    assert r.status == "no_watermark" and r.details["suspects"] == []


def test_a_region_under_the_mask_threshold_still_counts():
    """A faint detection the mask ignores (0.4 < mask threshold 0.5) but above the low
    limit: not removed, so not no_watermark."""

    class Faint(type(fake_engines().detector)):  # MagentaDetector at 0.4
        def run(self, batch):
            return super().run(batch) * np.float32(0.4)

    r = process_image(png(marked()), fake_engines(detector=Faint()), cfg(detector_absent_below=0.3))
    assert r.status == "needs_review" and "under the mask threshold 0.5" in r.review_reason


def test_find_suspects_keeps_regions_at_the_limit_and_big_enough():
    prob = np.zeros((50, 60), np.float32)
    prob[5:15, 5:15] = 0.7  # 100 px
    prob[30:32, 40:42] = 0.9  # 4 px: too small
    prob[40:45, 5:25] = 0.2  # under the limit
    found = find_suspects(prob, 0.5, min_area=10)
    assert [(s.box, s.value) for s in found] == [((5, 5, 15, 15), np.float32(0.7))]


def test_decide_follows_the_final_scores():
    def suspect(value, after):
        return Suspect("detector", (0, 0, 1, 1), np.ones((1, 1), bool), value, 0.5, after)

    assert decide([], changed=False).status == "no_watermark"
    assert decide([], changed=True).status == "succeeded"
    assert decide([suspect(0.9, 0.1)], changed=True).status == "succeeded"
    assert decide([suspect(0.9, None)], changed=True).status == "needs_review"
    assert decide([suspect(0.9, None)], changed=False).status == "needs_review"
    assert decide([suspect(0.9, 0.5)], changed=True).status == "needs_review"


def test_reasons_never_round_a_value_onto_its_limit():
    assert as_compared(0.19999, 0.2) == "0.19999"
    assert as_compared(0.2049, 0.2) == "0.205"
    assert as_compared(0.5, 0.5) == "0.5"
    assert as_compared(0.123456, 0.5) == "0.123"


def test_a_tiled_mark_the_learned_detector_misses_is_never_no_watermark():
    """MagentaDetector sees nothing here; the repetition detector finds the lattice, hands
    its copies to the remover, and the job cannot promise absence."""
    clean = product_photo(3)
    tiled, _ = composite(clean, tiled_alpha(opacity=0.25))
    r = process_image(png(tiled), fake_engines(remover=IdentityRemover()), cfg())
    assert r.status == "needs_review" and "repetition detector still finds a mark" in r.review_reason
    assert any(x["detector"] == "repetition detector" for x in r.details["suspects"])
    plain = process_image(png(clean), fake_engines(), cfg())
    assert plain.status == "no_watermark"


class FakeText:
    """A text prior that reports fixed lines, on the upload and on the result alike."""

    def __init__(self, *lines: TextLine):
        self.found = list(lines)

    def lines(self, rgb):
        return self.found


def line(box, overlay: float) -> TextLine:
    x0, y0, x1, y1 = box
    return TextLine(box, np.ones((y1 - y0, x1 - x0), bool), 0.9, overlay)


def test_overlaid_text_the_learned_detector_misses_is_never_no_watermark():
    engines = fake_engines(remover=IdentityRemover())
    engines.text = FakeText(line((10, 10, 70, 30), overlay=0.99))
    r = process_image(png(photo(160, 120, seed=1)), engines, cfg())
    assert (
        r.status == "needs_review"
        and "the text prior still finds a mark at (10, 10, 70, 30)" in r.review_reason
    )


def test_a_removal_that_reaches_product_text_is_put_back_and_reviewed():
    img = marked(box=(40, 30, 90, 60))
    engines = fake_engines()
    engines.text = FakeText(line((70, 40, 120, 70), overlay=0.05))  # printed, under the mark's edge
    r = process_image(png(img), engines, cfg())
    out = np.asarray(Image.open(io.BytesIO(r.image_bytes)).convert("RGB"))
    assert np.array_equal(out[40:70, 70:120], img[40:70, 70:120])  # the product's text as it was
    assert (
        r.status == "needs_review"
        and "the removal reached product text at (70, 40, 120, 70)" in r.review_reason
    )
    assert (out[30:40, 40:90] != img[30:40, 40:90]).any()  # the rest of the mark still went


def test_lettering_the_text_prior_calls_printed_but_the_removal_took_whole_is_proposed_removed():
    """Large opaque lettering the text prior mistakes for print: the gated removal takes
    the line end to end. The status still rests on the result with the line put back
    (review), and the proposal shows it removed, saying why."""
    img = marked(box=(40, 30, 90, 60))
    engines = fake_engines()
    engines.text = FakeText(line((36, 26, 94, 64), overlay=0.05))  # the whole mark, "printed"
    r = process_image(png(img), engines, cfg())
    out = np.asarray(Image.open(io.BytesIO(r.image_bytes)).convert("RGB"))
    assert r.status == "needs_review" and r.details["proposal"]
    assert "the removal reached product text at (36, 26, 94, 64)" in r.review_reason
    assert "it also removes the 1 line(s) of text it took whole" in r.review_reason
    assert f"took the line at (36, 26, 94, 64) whole (1 >= {LINE_WHOLE} of its length)" in r.review_reason
    assert not is_magenta(out[30:60, 40:90]).any()
    (drawn,) = [x for x in r.details["suspects"] if x["fate"].startswith(TAKEN)]
    assert drawn["box"] == [36, 26, 94, 64] and drawn["evidence"]["coverage"] == 1.0


def test_line_coverage_is_the_share_of_the_line_s_length_touched():
    ln = line((10, 20, 110, 40), overlay=0.05)
    changed = np.zeros((60, 120), bool)
    changed[25:35, 10:110] = True
    assert line_coverage(ln, changed) == 1.0
    changed[:] = False
    changed[25:35, 30:42] = True  # one letter of a line of ten
    assert 0.05 < line_coverage(ln, changed) < 0.3
    changed[:] = False
    changed[0:15, :] = True  # beside the line, not on it
    assert line_coverage(ln, changed) == 0.0


def test_guard_leaves_changes_away_from_printed_text_alone():
    rgb = np.zeros((50, 60, 3), np.uint8)
    restored = np.full_like(rgb, 200)
    found = np.zeros((50, 60), bool)
    found[5:10, 5:10] = True
    mask = build_mask(found.astype(np.float32), 0.5, 1, 2)
    out, kept, _, reasons = guard_printed_text(rgb, restored, mask, found, [line((30, 30, 50, 45), 0.1)])
    assert reasons == [] and out is restored and kept is mask


BLUE = (20, 20, 235)


class InkText:
    """A text detector that finds one line around each blob of saturated ink (magenta or
    blue) in whatever it is shown, the upload or a crop of the result."""

    def __init__(self, overlay: float):
        self.overlay = overlay

    def lines(self, rgb):
        ink = is_magenta(rgb) | (np.abs(rgb.astype(int) - BLUE).max(axis=2) < 13)
        if not ink.any():
            return []
        ys, xs = np.nonzero(ink)
        h, w = ink.shape
        box = (max(0, xs.min() - 4), max(0, ys.min() - 4), min(w, xs.max() + 5), min(h, ys.max() + 5))
        return [line(tuple(int(v) for v in box), self.overlay)]


def test_a_line_cut_in_half_goes_to_review_though_the_detector_missed_the_rest():
    """'N DHAVEN': the learned detector finds the magenta half of a line, the blue half
    is in no detector's mask; the removal takes the first half and would have passed."""
    img = marked(box=(30, 40, 80, 60))
    img[40:60, 80:130] = BLUE
    engines = fake_engines()
    engines.text = InkText(overlay=0.5)  # neither printed (< OVERLAY_LOW) nor sure (>= OVERLAY_HIGH)
    r = process_image(png(img), engines, cfg())
    assert r.status == "needs_review"
    assert "the text detector still finds a mark at (26, 36, 134, 64) after removal" in r.review_reason
    assert "the removal changed" in r.review_reason
    cut = next(x for x in r.details["suspects"] if x["detector"] == "text detector")
    assert 0.25 <= cut["after"] < 0.9


def test_a_line_removed_whole_succeeds():
    engines = fake_engines()
    engines.text = InkText(overlay=0.5)
    r = process_image(png(marked(box=(30, 40, 130, 60))), engines, cfg())
    assert r.status == "succeeded", r.review_reason
    assert [x["after"] for x in r.details["suspects"] if x["detector"] == "text detector"] == [0.0]
