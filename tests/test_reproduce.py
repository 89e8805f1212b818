"""`clearmark reproduce`: a recorded training run repeats bit for bit, from input weights
found by hash (beside the weights or in git history), and says so when it cannot."""

import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from clearmark.models.reproduce import ReproduceError, reproduce, weights_gap
from clearmark.models.train import train
from clearmark.models.weights import file_sha256
from clearmark.workers.cli import cli

TINY = {"steps": 2, "batch": 2, "crop": 32}


@pytest.fixture
def data_dir(grocery_data):
    """Photos for train and reproduce: generated ones (conftest.py), not ../shared/data."""
    return grocery_data


def _git(repo, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True
    )


def _manifest(weights):
    return json.loads((weights / "manifest.json").read_text())


def test_a_run_from_scratch_repeats_bit_for_bit(tmp_path, data_dir):
    weights = tmp_path / "weights"
    train("detector", seed=4, out_dir=weights, **TINY, data_dir=data_dir)
    res = reproduce("detector", tmp_path / "again", weights, data_dir=data_dir)
    assert res["same"] and res["got"] == _manifest(weights)["detector"]["sha256"]
    assert res["gap"] == 0.0


def test_the_starting_weights_come_from_git_history(tmp_path, data_dir):
    repo = tmp_path / "repo"
    weights = repo / "models" / "weights"
    train("detector", seed=1, out_dir=weights, **TINY, data_dir=data_dir)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "first weights")
    first = file_sha256(weights / "detector.pt")
    start = shutil.copy(weights / "detector.pt", tmp_path / "start.pt")
    train("detector", seed=2, out_dir=weights, init=start, **TINY, data_dir=data_dir)  # replaces the file
    _git(repo, "commit", "-qam", "fine-tuned")
    assert first in _manifest(weights)["detector"]["recipe"]["init"]

    res = reproduce("detector", tmp_path / "again", weights, data_dir=data_dir)
    assert res["same"]
    assert file_sha256(tmp_path / "again" / "inputs" / f"detector-{first[:12]}.pt") == first
    # the gap is measured against what the run changed: its start is 100% of it away
    assert weights_gap(start, weights / "detector.pt", start) == pytest.approx(1.0)


def test_missing_or_wrong_starting_weights_are_named(tmp_path, data_dir):
    weights = tmp_path / "weights"
    train("detector", seed=1, out_dir=tmp_path / "first", **TINY, data_dir=data_dir)
    start = tmp_path / "first" / "detector.pt"
    train("detector", seed=2, out_dir=weights, init=start, **TINY, data_dir=data_dir)
    other = tmp_path / "other.pt"
    other.write_bytes(start.read_bytes() + b"x")
    with pytest.raises(ReproduceError, match="pass --init"):  # no git history holds it
        reproduce("detector", tmp_path / "a", weights, data_dir=data_dir)
    with pytest.raises(ReproduceError, match="started from"):
        reproduce("detector", tmp_path / "b", weights, init=other, data_dir=data_dir)
    assert reproduce("detector", tmp_path / "c", weights, init=start, data_dir=data_dir)["same"]


def test_the_cli_reports_a_different_result_and_an_unrepeatable_run(tmp_path, data_dir):
    weights = tmp_path / "weights"
    train("detector", seed=3, out_dir=weights, **TINY, data_dir=data_dir)
    manifest = _manifest(weights)
    manifest["detector"]["recipe"]["seed"] = 5  # not the run that made the file
    (weights / "manifest.json").write_text(json.dumps(manifest))
    res = CliRunner().invoke(
        cli,
        [
            "reproduce",
            "detector",
            "--weights",
            str(weights),
            "--out",
            str(tmp_path / "again"),
            "--data",
            str(data_dir),
        ],
    )
    assert res.exit_code == 1 and "differs" in res.output, res.output
    gap = weights_gap(tmp_path / "again" / "detector.pt", weights / "detector.pt")
    assert gap > 0 and f"{gap:.2%} of the recorded run's change" in res.output

    manifest["detector"]["recipe"]["schedule_by"] = "time"
    (weights / "manifest.json").write_text(json.dumps(manifest))
    res = CliRunner().invoke(
        cli,
        [
            "reproduce",
            "detector",
            "--weights",
            str(weights),
            "--out",
            str(tmp_path / "third"),
            "--data",
            str(data_dir),
        ],
    )
    assert res.exit_code == 2 and "time budget" in res.output, res.output


def test_a_run_that_keeps_to_its_time_budget_follows_its_steps(tmp_path, data_dir):
    unbounded = train("detector", seed=3, out_dir=tmp_path / "a", **TINY, data_dir=data_dir)
    budgeted = train("detector", seed=3, out_dir=tmp_path / "b", max_minutes=60, **TINY, data_dir=data_dir)
    assert unbounded["schedule_by"] == budgeted["schedule_by"] == "steps"
    a, b = (file_sha256(tmp_path / d / "detector.pt") for d in "ab")
    assert a == b
    cut = train("detector", seed=3, out_dir=tmp_path / "c", max_minutes=1e-6, **TINY, data_dir=data_dir)
    assert cut["schedule_by"] == "time" and cut["steps_done"] == 1
