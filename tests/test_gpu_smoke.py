"""The GPU smoke test's CPU path (scripts/gpu-smoke.sh, `clearmark engines smoke`) and its
comparisons in output terms, run here with PyTorch on the CPU as the candidate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from clearmark.workers import gpu_smoke
from clearmark.workers.commands.engines import engines_group

ROOT = Path(__file__).resolve().parents[1]


def test_the_script_runs_on_a_cpu_and_says_what_it_skips(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, CLEARMARK_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run(
        ["bash", "scripts/gpu-smoke.sh", "--quick"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for backend, name in (("tensorrt", "tensorrt"), ("torch", "cuda")):
        if not gpu_smoke.available(name)[0]:
            assert any(line.startswith(f"skip {backend}:cuda: not here (") for line in lines), done.stdout
    if not gpu_smoke.available("tensorrt")[0]:
        assert "skip the real-TensorRT tests: no TensorRT here" in lines


def test_smoke_compares_a_candidate_with_the_cpu_in_output_terms():
    result = CliRunner().invoke(
        engines_group,
        [
            "smoke",
            "--candidate",
            "torch:cpu",
            "--quick",
            "--images",
            "1",
            "--size",
            "256",
            "--eval-photos",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # the note on stderr (no photos here: studio scenes) aside
    assert lines[0].startswith("ok   torch:cpu detector (2, 3, 640, 640): mask IoU ")
    assert [line.split(": ")[0] for line in lines[1:3]] == [
        "ok   torch:cpu remover (1, 7, 128, 128)",  # the two smallest crop buckets
        "ok   torch:cpu remover (1, 7, 256, 256)",
    ]
    assert lines[3].startswith("ok   torch:cpu process_image photo 0 (")
    assert lines[4].startswith("skip torch:cpu eval-real statuses")


def test_iou_and_status_comparison_fail_where_outputs_differ():
    a = np.zeros((8, 8), bool)
    a[:4] = True
    b = a.copy()
    b[4] = True  # one more row: 32 of 40 pixels shared
    assert gpu_smoke.iou(a, a) == 1.0 and gpu_smoke.iou(~a & a, ~a & a) == 1.0
    assert gpu_smoke.iou(a, b) == 0.8
    cpu = [{"name": "p1", "status": "succeeded"}, {"name": "p2", "status": "no_watermark"}]
    gpu = [{"name": "p1", "status": "needs_review"}, {"name": "p2", "status": "no_watermark"}]
    same = gpu_smoke.status_check(cpu, cpu, "x")
    differ = gpu_smoke.status_check(gpu, cpu, "x")
    assert same.status == "ok" and differ.status == "FAIL"
    assert differ.detail == "1 of 2 photos have the CPU's status; p1: succeeded on the CPU, needs_review here"
