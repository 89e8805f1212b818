"""The wheel, installed into a fresh environment: one `clearmark` package and nothing else
at the top of site-packages; the command, `python -m clearmark`, the migrations and the
shipped weights all work from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [
    *("pyproject.toml", "README.md", "clearmark"),
    *("workers", "pipeline", "models", "engine_build", "migrations"),
]

pytestmark = pytest.mark.slow


def run(*argv, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{argv}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the sources (the checkout gets no build/ or egg-info)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out),
        str(src),
    )
    (found,) = out.glob("clearmark-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed. Its dependencies come from this environment's
    site-packages through a .pth line (no download), which runs no .pth file of ours: the
    editable install of the checkout stays invisible there."""
    env = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", "--without-pip", str(env))
    site = Path(
        run(
            str(env / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"
        ).stdout.strip()
    )
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(env / "bin" / "python"),
        "install",
        "--no-deps",
        "-q",
        str(wheel),
    )
    return env


def test_the_wheel_holds_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"clearmark"}
    assert "clearmark/workers/api.py" in names and "clearmark/models/weights/detector.pt" in names
    assert "clearmark/pipeline/process.py" in names and "clearmark/pipeline/verdict.py" in names
    for shipped in ("text_detector.onnx", "text_prior.json", "suspect_prior.json"):
        assert f"clearmark/models/weights/{shipped}" in names, shipped
    assert "clearmark/migrations/script.py.mako" in names
    assert "clearmark/migrations/versions/0001_initial_schema.py" in names


def test_installed_wheel_works_and_leaves_no_stray_packages(venv, tmp_path):
    python, env = str(venv / "bin" / "python"), {**os.environ, "CLEARMARK_DATA_DIR": str(tmp_path / "data")}
    env.pop("PYTHONPATH", None)
    env.pop("CLEARMARK_DATABASE_URL", None)
    for stray in ("models", "workers", "pipeline", "engine_build", "migrations"):
        done = subprocess.run(
            [python, "-c", f"import {stray}"], capture_output=True, text=True, cwd=tmp_path, env=env
        )
        assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, stray
    where = run(python, "-c", "import clearmark.workers.cli as c; print(c.__file__)", cwd=tmp_path, env=env)
    assert str(venv) in where.stdout and str(ROOT) not in where.stdout

    assert "Commands:" in run(str(venv / "bin" / "clearmark"), "--help", cwd=tmp_path, env=env).stdout
    assert "clean" in run(python, "-m", "clearmark", "--help", cwd=tmp_path, env=env).stdout
    # The migrations ship and run: a new SQLite database at head.
    upgraded = run(str(venv / "bin" / "clearmark"), "db", "upgrade", cwd=tmp_path, env=env)
    assert "database at head" in upgraded.stdout
    # The shipped weights load from the installed package.
    code = "from clearmark.models.registry import load_model; print(type(load_model('detector')).__name__)"
    loaded = run(python, "-c", code, cwd=tmp_path, env=env)
    assert loaded.stdout.strip() == "Detector"
    # And the pipeline's own priors: the text detector and the suspect prior.
    code = (
        "from clearmark.models.text_prior import TextDetector; from clearmark.pipeline.verdict import "
        "load_prior; TextDetector.load(); print(load_prior().limit)"
    )
    assert float(run(python, "-c", code, cwd=tmp_path, env=env).stdout.strip()) > 0
