"""constraints.txt, the lock for reproducible installs (scripts/lock.sh writes it): every
dependency pyproject.toml names has an exact pin inside its range, and the environment
running the tests was installed from it."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCKED_EXTRAS = ("test", "s3", "ops")  # not gpu: TensorRT and pycuda need a CUDA machine
REFRESH = "refresh the lock: bash scripts/lock.sh"


def pins() -> dict[str, Version]:
    found: dict[str, Version] = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert not req.extras and not req.marker and not req.url, f"line {number}: {line!r}"
        assert len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version, (
            f"constraints.txt line {number} is not an exact pin: {line!r}"
        )
        name = canonicalize_name(req.name)
        assert name not in found, f"{req.name} pinned twice"
        found[name] = Version(specs[0].version)
    return found


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    return [
        Requirement(r)
        for r in [*project["dependencies"], *(r for extra in LOCKED_EXTRAS for r in optional[extra])]
    ]


def installed_version(name: str) -> Version | None:
    try:
        return Version(metadata.version(name))
    except metadata.PackageNotFoundError:
        return None


def test_every_declared_dependency_is_pinned_within_its_range():
    locked = pins()
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in locked, f"{req} (pyproject.toml) has no pin in constraints.txt: {REFRESH}"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"constraints.txt pins {name}=={locked[name]}, outside pyproject.toml's {req}: {REFRESH}"
        )


def test_torch_pin_is_the_cpu_build():
    """The +cpu local version only exists on disk here and on PyTorch's CPU index, so the
    pin can never be met by PyPI's CUDA build (a multi-gigabyte download)."""
    assert str(pins()["torch"]).endswith("+cpu")


def test_gpu_extra_is_not_locked():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = pins()
    for req in map(Requirement, project["optional-dependencies"]["gpu"]):
        assert canonicalize_name(req.name) not in locked, req


def test_everything_the_install_pulls_in_is_pinned():
    """Walk the installed requirement graph from clearmark with the locked extras: each
    distribution it reaches that is installed here must have a pin (a new transitive
    dependency means the lock is stale)."""
    locked = pins()
    seen: set[str] = set()
    todo = [(canonicalize_name("clearmark"), set(LOCKED_EXTRAS))]
    missing = []
    while todo:
        name, extras = todo.pop()
        key = f"{name}{sorted(extras)}"
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # an extra this environment did not install (ops: flower)
        for req in map(Requirement, requires):
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ["", *extras]):
                continue
            dep = canonicalize_name(req.name)
            if dep not in locked and installed_version(dep) is not None:
                missing.append(f"{dep} (required by {name}: {req})")
            todo.append((dep, set(req.extras)))
    assert not missing, f"not pinned in constraints.txt: {sorted(set(missing))}; {REFRESH}"
    assert len(seen) > 50  # the walk really went through the installed metadata


def test_this_environment_was_installed_from_the_lock():
    mismatched = {
        name: f"installed {installed_version(name)}, pinned {pin}"
        for name, pin in pins().items()
        if installed_version(name) not in (None, pin)
    }
    assert not mismatched, (
        f"this environment is not the locked one: {mismatched}; reinstall "
        "with bash scripts/setup.sh (pip install -c constraints.txt ...)"
    )
    assert installed_version("torch") == pins()["torch"]
