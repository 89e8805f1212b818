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
    assert table.splitlines()[0].startswith("clearmark eval: n=3 watermarked")
    for method in ("model", "none", "telea"):
        assert any(line.startswith(method) for line in table.splitlines())
