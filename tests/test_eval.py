"""`clearmark eval` on a tiny set: deterministic, baselines behave as defined, one table."""
from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from models.evaluate import eval_set
from workers.cli import cli


def test_eval_set_is_deterministic_and_sliced():
    first = list(eval_set(3, seed=5))
    again = list(eval_set(3, seed=5))
    assert [(sl, i) for sl, i, _ in first] == [("wm", 0), ("wm", 1), ("wm", 2), ("clean", 0), ("text", 0)]
    for (_, _, a), (_, _, b) in zip(first, again):
        np.testing.assert_array_equal(a.composite, b.composite)
    by_slice = {sl: s for sl, _, s in first}
    assert not by_slice["clean"].mask.any() and by_slice["text"].product.any()
    assert all(800 <= max(s.clean.shape[:2]) <= 1600 for _, _, s in first)
    only_clean = list(eval_set(3, seed=5, slices=("clean",)))
    assert [(sl, i) for sl, i, _ in only_clean] == [("clean", 0)]
    np.testing.assert_array_equal(only_clean[0][2].composite, by_slice["clean"].composite)


def test_every_watermarked_eval_image_shows_its_mark():
    """Seed 0's images 22 and 28 first drew a white logo on a white backdrop: a mark that
    shows nothing, which no detector can find; the set draws again for those."""
    for sl, i, s in eval_set(29, seed=0, slices=("wm",)):
        if i in (22, 28):
            assert s.mask.any() and (s.composite != s.clean).any(), i


def test_tiny_evaluation_prints_one_table(tmp_path):
    out = CliRunner().invoke(cli, ["eval", "--n", "3", "--seed", "5", "--threads", "1",
                                   "--json", str(tmp_path / "eval.json")])
    assert out.exit_code == 0, out.output
    summ = json.loads((tmp_path / "eval.json").read_text())["summary"]
    none, telea, model = summ["none"]["all"], summ["telea"]["all"], summ["model"]["all"]
    assert none["psnr_out"] == 100.0 and none["fp_rate"] == 0.0 and none["f1"] == 0.0
    assert telea["f1"] == 1.0 and telea["psnr_in"] > none["psnr_in"]  # oracle mask
    assert all(np.isfinite(model[k]) for k in ("psnr", "ssim", "f1", "fp_rate", "sec"))
    assert sum(n for _, n in summ["model"]["fp_by_background"].values()) == 1  # one clean image
    table = out.output
    assert table.splitlines()[0] == ("clearmark eval: n=3: 3 watermarked, 1 clean, "
                                     "1 product-text; seed=5")
    for method in ("model", "none", "telea"):
        assert any(line.startswith(method) for line in table.splitlines())


def test_eval_of_one_slice_and_what_the_manifest_refuses(tmp_path):
    out = CliRunner().invoke(cli, ["eval", "--n", "3", "--seed", "6", "--threads", "1",
                                   "--slice", "clean", "--json", str(tmp_path / "eval.json")])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[0] == "clearmark eval: n=3: 1 clean; seed=6"
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert {r["slice"] for r in rows} == {"clean"} and len(rows) == 3   # one image, 3 methods
    refused = CliRunner().invoke(cli, ["eval", "--n", "3", "--slice", "wm", "--update-manifest"])
    assert refused.exit_code == 2 and "drop --slice" in refused.output
