"""scripts/setup.sh chooses where PyTorch's CPU build comes from, and which pins hold.

Its functions run here alone (the file sourced, nothing installed), against the real pip
of this environment with its configuration replaced by each case's."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CPU_INDEX = ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]


def run_setup_function(
    function: str, env: dict[str, str], cwd: Path = ROOT, python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    """The setup.sh `function`, run with `python`'s pip."""
    script = f'source "$1" && PY="$2" && {function}'
    return subprocess.run(
        ["bash", "-c", script, "-", str(ROOT / "scripts" / "setup.sh"), python],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def setup_function_output(function: str, env: dict[str, str], cwd: Path = ROOT) -> list[str]:
    """What the setup.sh `function` prints, one item a line, run with this Python's pip."""
    done = run_setup_function(function, env, cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def pip_unconfigured(**variables: str) -> dict[str, str]:
    """This environment without any pip configuration (no PIP_* variables, no config
    files: a machine that reaches only PyPI), plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "CLEARMARK_"))}
    return {**env, "PIP_CONFIG_FILE": os.devnull, **variables}


@pytest.mark.parametrize("script", ["setup.sh", "lock.sh"])
def test_the_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)]).returncode == 0


def test_only_pypi_gets_pytorchs_cpu_index():
    assert setup_function_output("torch_index_args", pip_unconfigured()) == CPU_INDEX


@pytest.mark.parametrize(
    "variables",
    [
        {"PIP_INDEX_URL": "https://mirror.example/simple"},
        {"PIP_EXTRA_INDEX_URL": "https://other.example/simple"},
        {"PIP_FIND_LINKS": "/opt/wheels"},  # this machine's local wheels
        {"PIP_NO_INDEX": "1"},
        {"CLEARMARK_TORCH_SPEC": "torch==2.13.0"},  # another torch: its own index, if any
    ],
)
def test_where_the_user_chose_an_index_setup_adds_none(variables):
    assert setup_function_output("torch_index_args", pip_unconfigured(**variables)) == []


def test_an_index_in_a_pip_config_file_counts_too(tmp_path):
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nindex-url = https://mirror.example/simple\n")
    assert setup_function_output("torch_index_args", pip_unconfigured(PIP_CONFIG_FILE=str(config))) == []


@pytest.mark.parametrize(
    ("torch_pin", "drops_it"),
    [
        ("TORCH", False),  # the installed build: the pins as they are
        ("RELEASE+cu999", True),  # the same release, another build (a mirror's fallback)
        ("2.0.0+cpu", False),  # another release: the pins, so pip installs the pinned one
    ],
)
def test_pins_drop_torch_only_for_another_build_of_its_release(tmp_path, torch_pin, drops_it):
    installed = metadata.version("torch")
    pin = torch_pin.replace("TORCH", installed).replace("RELEASE", installed.split("+")[0])
    (tmp_path / "constraints.txt").write_text(f"numpy==1.0\ntorch=={pin}\nzstd==1.0\n")
    (tmp_path / ".venv").mkdir()
    args = setup_function_output("pin_args", pip_unconfigured(), cwd=tmp_path)
    if not drops_it:
        assert args == ["-c", "constraints.txt"]
        return
    assert args == ["-c", ".venv/constraints-but-torch.txt"]
    assert (tmp_path / args[1]).read_text() == "numpy==1.0\nzstd==1.0\n"


def plain_torch_wheel(folder: Path, version: str) -> None:
    """A stand-in for PyPI's torch `version` (no local label): a wheel that installs a
    `torch` package and nothing else."""
    folder.mkdir()
    info = f"torch-{version}.dist-info"
    files = {
        "torch/__init__.py": f"__version__ = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(folder / f"torch-{version}-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)


def test_a_mirror_without_the_cpu_build_gets_the_plain_release_and_the_other_pins(tmp_path):
    """The pins ask for torch 2.13.0+cpu; the only place pip may look has 2.13.0 alone."""
    plain_torch_wheel(tmp_path / "mirror", "2.13.0")
    (tmp_path / "constraints.txt").write_text("torch==2.13.0+cpu\nzstd==1.0\n")
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / ".venv")], check=True, timeout=300)
    python = str(tmp_path / ".venv" / "bin" / "python")
    mirror = pip_unconfigured(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path / "mirror"))

    done = run_setup_function("install_torch && pin_args", mirror, tmp_path, python)
    assert done.returncode == 0, done.stderr
    assert "warning: pip finds no torch==2.13.0+cpu where it looks" in done.stderr
    installed = subprocess.run(
        [python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
    )
    assert installed.stdout.strip() == "2.13.0"
    assert done.stdout.splitlines()[-2:] == ["-c", ".venv/constraints-but-torch.txt"]
    assert (tmp_path / ".venv" / "constraints-but-torch.txt").read_text() == "zstd==1.0\n"
