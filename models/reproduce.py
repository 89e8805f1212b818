"""`clearmark reproduce`: repeat the training run that made a weights file, bit for bit.

Every weights file's manifest entry records its last run (`recipe`: options, seed, code
version, and the sha256 of the weights it started from and of the detector that masked its
crops). This module finds those input files (given, beside the weights, or in this
checkout's git history, by hash), runs `models.train.train` again with the recorded
options, and compares the new file's sha256 with the recorded one. On the same kind of
CPU, with the same code and libraries, a run repeats exactly: its data come from seeded
generators and one torch thread computes the same floats. The earlier runs in `history`
can be repeated the same way from their own code version (`git checkout` it first).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import torch

from clearmark.models.train import code_version, train
from clearmark.models.weights import WEIGHTS_DIR, file_sha256, read_manifest, weights_path
from clearmark.settings import get_settings


class ReproduceError(Exception):
    """The run cannot be repeated as recorded (missing input weights, other settings)."""


def _recorded_sha(field: str | None) -> str | None:
    """The sha256 in a recipe's `init` field ("path (sha256 <hex>)"), or None."""
    found = re.search(r"sha256 ([0-9a-f]{64})", field or "")
    return found.group(1) if found else None


def _git(args: list[str], cwd: Path) -> bytes:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True).stdout


def from_git_history(kind: str, sha: str, weights_dir: Path, into: Path) -> Path | None:
    """The version of `weights_dir/KIND.pt` with this sha256 from the git history of the
    checkout holding it, written to `into` (None outside a checkout or when no commit has it)."""
    path = weights_path(kind, weights_dir).resolve()
    try:
        root = Path(_git(["rev-parse", "--show-toplevel"], path.parent).decode().strip())
        rel = path.relative_to(root).as_posix()
        commits = _git(["log", "--format=%H", "--", rel], root).decode().split()
    except (OSError, ValueError, subprocess.CalledProcessError):
        return None
    for commit in commits:
        blob = _git(["show", f"{commit}:{rel}"], root)
        # hashed in memory: file_sha256 caches by (path, mtime, size), and every version of
        # one architecture has the same size
        if hashlib.sha256(blob).hexdigest() == sha:
            target = into / f"{kind}-{sha[:12]}.pt"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blob)
            return target
    return None


def find_weights(kind: str, sha: str, given: Path | None, weights_dir: Path, into: Path, option: str) -> Path:
    """The file with this sha256: `given` (which must match), `weights_dir/KIND.pt`, or a
    version from git history; else ReproduceError naming the `option` that supplies it."""
    if given is not None:
        if file_sha256(given) != sha:
            raise ReproduceError(
                f"{given} has sha256 {file_sha256(given)[:12]}, but the run started from {sha[:12]}"
            )
        return Path(given)
    shipped = weights_path(kind, weights_dir)
    if shipped.exists() and file_sha256(shipped) == sha:
        return shipped
    found = from_git_history(kind, sha, weights_dir, into)
    if found is None:
        raise ReproduceError(
            f"no {kind} weights with sha256 {sha[:12]} here or in git history; pass {option} FILE"
        )
    return found


def weights_gap(got: Path, recorded: Path, start: Path | None = None) -> float:
    """How far a repeated run landed from the recorded one: the norm of the difference of
    all floating-point tensors, relative to how far the recorded run moved them from its
    `start` weights (or to their norm, for a run from scratch). 0.0: the same numbers;
    0.03: within 3% of what the run changed."""
    g, r = (torch.load(p, map_location="cpu", weights_only=True) for p in (got, recorded))
    s = torch.load(start, map_location="cpu", weights_only=True) if start else None
    diff = moved = 0.0
    for key, rec in r.items():
        if rec.is_floating_point():
            rec = rec.double()
            diff += float((g[key].double() - rec).pow(2).sum())
            moved += float((rec - (s[key].double() if s is not None else 0.0)).pow(2).sum())
    return (diff / moved) ** 0.5 if moved else 0.0


def _check_settings(recipe: dict) -> None:
    st = get_settings()
    if recipe.get("detect_long_side", st.detect_long_side) != st.detect_long_side:
        raise ReproduceError(
            f"the run saw crops at long side {recipe['detect_long_side']}; "
            f"set CLEARMARK_DETECT_LONG_SIDE={recipe['detect_long_side']}"
        )
    masks = recipe.get("detector_masks") or {}
    if masks.get("dilate_px", st.mask_dilate_px) != st.mask_dilate_px:
        raise ReproduceError(
            f"the run dilated detector masks by {masks['dilate_px']} px; set "
            f"CLEARMARK_MASK_DILATE_PX={masks['dilate_px']}"
        )


def reproduce(
    kind: str,
    out_dir: Path,
    weights_dir: Path = WEIGHTS_DIR,
    data_dir=None,
    init: Path | None = None,
    detector_masks: Path | None = None,
    progress=None,
) -> dict:
    """Repeat the run recorded for `weights_dir/KIND.pt` into `out_dir` and compare.

    Returns {"same": bool, "expected", "got" (sha256), "gap" (`weights_gap` of the new
    file from the recorded one), "path", "recipe_code", "code"}.
    Raises ReproduceError when the run cannot be repeated as recorded: its input weights
    are missing, the settings it depended on differ, or its time budget (`max_minutes`)
    shaped its learning-rate schedule (the clock does not repeat)."""
    weights_dir, out_dir = Path(weights_dir), Path(out_dir)
    if out_dir.resolve() == weights_dir.resolve():
        raise ReproduceError("--out must not be the weights being checked")
    entry = read_manifest(weights_dir).get(kind, {})
    recipe = entry.get("recipe")
    if not recipe:
        raise ReproduceError(f"{weights_dir / 'manifest.json'} records no {kind} training run")
    if recipe["steps_done"] < recipe["steps"] or recipe.get("schedule_by") == "time":
        raise ReproduceError(
            "that run's learning-rate schedule followed its time budget "
            "(--max-minutes), so it cannot be repeated step for step"
        )
    _check_settings(recipe)
    inputs = out_dir / "inputs"
    start = _recorded_sha(recipe.get("init"))
    init_path = find_weights(kind, start, init, weights_dir, inputs, "--init") if start else None
    masks = recipe.get("detector_masks")
    masks_path = (
        find_weights("detector", masks["sha256"], detector_masks, weights_dir, inputs, "--detector-masks")
        if masks
        else None
    )
    train(
        kind,
        steps=recipe["steps"],
        batch=recipe["batch"],
        crop=recipe["crop"],
        seed=recipe["seed"],
        lr=recipe["lr"],
        data_dir=data_dir,
        out_dir=out_dir,
        threads=recipe["threads"],
        arch=recipe["architecture"],
        init=init_path,
        trainable=recipe.get("trainable", "all"),
        detector_masks=masks_path,
        command=f"clearmark reproduce {kind} --weights {weights_dir}",
        progress=progress,
    )
    path = weights_path(kind, out_dir)
    got = file_sha256(path)
    return {
        "same": got == entry["sha256"],
        "expected": entry["sha256"],
        "got": got,
        "gap": weights_gap(path, weights_path(kind, weights_dir), init_path),
        "path": str(path),
        "recipe_code": recipe.get("code"),
        "code": code_version(),
    }
