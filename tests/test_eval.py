"""`clearmark eval` on a tiny set: deterministic, baselines behave as defined, one table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from clearmark.models.evaluate import MASK_ERRORS, eval_set, mask_errors
from clearmark.models.scenes import DEFAULT_DATA
from clearmark.workers.cli import cli

# The eval set draws its photo backgrounds from `grocery_data` (generated photos, see
# conftest.py); only the checks of the real grocery photos need ../shared/data.
needs_real_grocery = pytest.mark.skipif(
    not (DEFAULT_DATA / "grocery").exists(), reason=f"real grocery data not present ({DEFAULT_DATA})"
)


def test_eval_set_is_deterministic_and_sliced(grocery_data):
    first = list(eval_set(3, seed=5, data_dir=grocery_data))
    again = list(eval_set(3, seed=5, data_dir=grocery_data))
    assert [(sl, i) for sl, i, _ in first] == [("wm", 0), ("wm", 1), ("wm", 2), ("clean", 0), ("text", 0)]
    for (_, _, a), (_, _, b) in zip(first, again):
        np.testing.assert_array_equal(a.composite, b.composite)
    by_slice = {sl: s for sl, _, s in first}
    assert not by_slice["clean"].mask.any() and by_slice["text"].product.any()
    assert all(800 <= max(s.clean.shape[:2]) <= 1600 for _, _, s in first)
    only_clean = list(eval_set(3, seed=5, data_dir=grocery_data, slices=("clean",)))
    assert [(sl, i) for sl, i, _ in only_clean] == [("clean", 0)]
    np.testing.assert_array_equal(only_clean[0][2].composite, by_slice["clean"].composite)


def test_every_watermarked_eval_image_shows_its_mark(grocery_data):
    """A white logo on a white backdrop is a mark that shows nothing, which no detector
    can find; the set draws again for such images."""
    for sl, i, s in eval_set(29, seed=0, data_dir=grocery_data, slices=("wm",)):
        assert s.mask.any() and (s.composite != s.clean).any(), i


@needs_real_grocery
def test_the_real_eval_images_that_hid_their_mark_show_it():
    """On the real grocery photos, seed 0's images 22 and 28 first drew a white logo on a
    white backdrop: a mark that shows nothing; the set draws again for those."""
    for sl, i, s in eval_set(29, seed=0, slices=("wm",)):
        if i in (22, 28):
            assert s.mask.any() and (s.composite != s.clean).any(), i


def test_mask_errors_say_where_a_mask_goes_wrong():
    true = np.zeros((40, 40), bool)
    true[10:20, 10:20] = True  # 100 true pixels
    detected = np.zeros_like(true)
    detected[8:22, 8:16] = True  # the detector found the left part
    pred = detected & true  # the mark: 60 of them ...
    pred[12:20, 10:12] = False  # ... less 16 inside the detected region
    pred[10:20, 21] = True  # 10 wrong pixels 2 px from the mark
    pred[35, 30:35] = True  # 5 wrong pixels far away
    assert mask_errors(pred, detected, true) == {
        "miss_undetected": 0.4,
        "miss_unmarked": 0.16,
        "false_edge": 0.1,
        "false_far": 0.05,
    }
    assert all(np.isnan(v) for v in mask_errors(pred, detected, np.zeros_like(true)).values())


def test_tiny_evaluation_prints_one_table(tmp_path, grocery_data):
    out = CliRunner().invoke(
        cli,
        [
            "eval",
            "--n",
            "3",
            "--seed",
            "5",
            "--threads",
            "1",
            "--data",
            str(grocery_data),
            "--json",
            str(tmp_path / "eval.json"),
        ],
    )
    assert out.exit_code == 0, out.output
    summ = json.loads((tmp_path / "eval.json").read_text())["summary"]
    none, telea, model = summ["none"]["all"], summ["telea"]["all"], summ["model"]["all"]
    assert none["psnr_out"] == 100.0 and none["fp_rate"] == 0.0 and none["f1"] == 0.0
    assert telea["f1"] == 1.0 and telea["psnr_in"] > none["psnr_in"]  # oracle mask
    assert all(np.isfinite(model[k]) for k in ("psnr", "ssim", "f1", "fp_rate", "sec"))
    assert sum(n for _, n in summ["model"]["fp_by_background"].values()) == 1  # one clean image
    assert none["miss_undetected"] == 1.0 and none["miss_unmarked"] == none["false_far"] == 0.0
    assert all(telea[k] == 0.0 for k in MASK_ERRORS)
    assert all(0.0 <= model[k] <= 1.0 for k in MASK_ERRORS)
    assert "model's mask errors" in out.output
    table = out.output
    assert table.splitlines()[0] == ("clearmark eval: n=3: 3 watermarked, 1 clean, 1 product-text; seed=5")
    for method in ("model", "none", "telea"):
        assert any(line.startswith(method) for line in table.splitlines())


def test_eval_of_one_slice_and_what_the_manifest_refuses(tmp_path, grocery_data):
    out = CliRunner().invoke(
        cli,
        [
            "eval",
            "--n",
            "3",
            "--seed",
            "6",
            "--threads",
            "1",
            "--data",
            str(grocery_data),
            "--slice",
            "clean",
            "--json",
            str(tmp_path / "eval.json"),
        ],
    )
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[0] == "clearmark eval: n=3: 1 clean; seed=6"
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert {r["slice"] for r in rows} == {"clean"} and len(rows) == 3  # one image, 3 methods
    refused = CliRunner().invoke(cli, ["eval", "--n", "3", "--slice", "wm", "--update-manifest"])
    assert refused.exit_code == 2 and "drop --slice" in refused.output


def test_eval_without_shared_data_runs_on_studio_scenes(tmp_path, grocery_data, no_shared_data):
    """A clone has no ../shared/data: the set's photo backgrounds become studio scenes, and
    one line on stderr says so; --data naming a folder without photos is a usage error."""
    assert next(eval_set(1, 5, grocery_data, ("wm",)))[2].background.startswith("photo")  # else
    args = ["eval", "--n", "1", "--seed", "5", "--slice", "wm", "--threads", "1"]
    out = CliRunner().invoke(cli, [*args, "--json", str(tmp_path / "eval.json")])
    assert out.exit_code == 0 and out.exception is None, out.output
    assert out.stderr.splitlines() == [
        f"no photos in {no_shared_data}/grocery (../shared/data, not in the repository): "
        "studio scenes only; --data DIR for photo backgrounds"
    ]
    assert (
        out.stdout.splitlines()[0]
        == "clearmark eval: n=1: 1 watermarked; seed=5; studio scenes only (no photos)"
    )
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert len(rows) == 3 and {r["background"] for r in rows} == {"studio"}

    empty = tmp_path / "empty"
    empty.mkdir()
    refused = CliRunner().invoke(cli, [*args, "--data", str(empty)])
    assert refused.exit_code == 2 and isinstance(refused.exception, SystemExit)
    assert refused.output.splitlines()[-1] == (
        f"Error: Invalid value for --data: no held-out photos in {empty}/grocery/iconic and grocery/natural"
    )
    manifest = CliRunner().invoke(cli, ["eval", "--update-manifest"])
    assert manifest.exit_code == 2 and "photos included: give --data" in manifest.output
