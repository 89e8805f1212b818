"""Training recipes for the Detector and the Remover (CPU-friendly, deterministic data).

Detector: sees what the pipeline sees, i.e. the photo resized so its long side is 640 px
(`Settings.detect_long_side`, recorded in the recipe). A crop of `crop` px at that scale is
rendered as a window of `crop * L / 640` px of an `L`-px catalogue photo (L in 800-1700)
and area-downscaled, so stroke widths, JPEG blur and text sizes match inference. Target:
pixels whose full-res watermark coverage is >= 20 % (thin strokes stay in the mask; the
pipeline dilates after).
STREAK_SHARE of the crops get straight shelf edges and highlights drawn into the background
(`scenes.add_streaks`): on clean tuning photos those were most of the detector's false alarms.
Loss: BCE + soft dice.

Remover: full-resolution crops around the mark, input mask = GT mask dilated 2-6 px with
noise (missed blobs, spurious blobs, feathered edges) because at inference it gets the
detector's thresholded, dilated mask; in half the crops that show the product's own
printed text, that text is added to the mask too (the detector's typical false alarm),
so the remover learns to leave it as it is and to say it is no watermark. The Telea
prefill is computed over that noisy mask, exactly as the pipeline does
(`models.networks.remover_input`). Loss: L1 of the restored image inside the input mask
(normalised by its area) + 0.5 x L1 of the predicted opacity against the true `alpha`
(the blend-inversion branch learns the physics) + 0.25 x (BCE + soft dice) of the
full-resolution mask output against `alpha > 0` inside the input mask + a small L1 on
image gradients. `--trainable mark-head` trains only the mark refiner on the mask loss.
`--detector-masks` swaps the noisy true mask, in most crops, for the one a given detector
and the pipeline build (`detector_mask`, seen with context around the crop): its false
alarms hug the mark and follow the photo's own edges and print, which no random blob
imitates, and the refiner has to learn to reject exactly those pixels. Those masks are
dilated as the pipeline's settings say (`CLEARMARK_MASK_DILATE_PX`, in the recipe). Drawing
the dilation per crop from 3-8 px instead (3000 steps, 39 min) did not help: tuning F1 at
the pipeline's 6 px 0.8956 against 0.8958 without it, and lower at 4-5 px.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from clearmark.models import reviewed_data
from clearmark.models.feed import BatchRecipe, batches
from clearmark.models.inference import detect_probability
from clearmark.models.masks import build_mask, dilate_disc
from clearmark.models.networks import MarkRefiner, remover_input
from clearmark.models.products import PhotoCache, mark_photo, split_paths, structured_window
from clearmark.models.registry import ModelEngine, build_model, load_weights
from clearmark.models.scenes import DEFAULT_DATA
from clearmark.models.synth import make_sample
from clearmark.models.weights import WEIGHTS_DIR, file_sha256, read_manifest
from clearmark.settings import get_settings

log = logging.getLogger("clearmark.train")
DEFAULT_ARCH = {"detector": {"base": 16}, "remover": {"base": 16}}
TRAIN_TAG = 1  # rng stream tag for training data; evaluation uses another tag
MARK_LOSS_WEIGHT = 0.25  # the remover's full-resolution mask head (`mark_loss`)
STREAK_SHARE = 0.3  # detector crops with straight shelf edges / highlights (negatives)
DETECTOR_MASK_SHARE = 0.75  # remover crops masked by the detector, when one is given
DETECTOR_CLEAN_SHARE = 0.2  # of those, photos without a mark: its false alarms, to reject
CLOCK_LEAD = 0.01  # how far the time budget must be ahead of the steps to set the schedule
PRODUCT_NONE = 0.35  # real-photo detector crops left clean: hard negatives (faces, straps, print)
PRODUCT_SYNTH_SHARE = 0.25  # detector crops still from procedural studio scenes
REVIEWED_STREAM = 7  # rng stream of the reviewed crops within a step (`--reviewed`)


def _to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWxC (or float HxW) list -> float N x C x H x W."""
    x = np.stack([a if a.ndim == 3 else a[..., None] for a in arrays]).astype(np.float32)
    if arrays[0].dtype == np.uint8:
        x /= 255.0
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def _detector_view(composite: np.ndarray, mask: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """A full-resolution window and its mark as the detector sees them: area-downscaled to
    `crop`, target = pixels whose mark coverage is >= 20 %."""
    image = cv2.resize(composite, (crop, crop), interpolation=cv2.INTER_AREA)
    cov = cv2.resize(mask.astype(np.float32), (crop, crop), interpolation=cv2.INTER_AREA)
    return image, (cov >= 0.2).astype(np.float32)


def _synthetic_detector_sample(
    rng: np.random.Generator, crop: int, data_dir=None, source: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    long_side = int(rng.integers(800, 1701))
    region = int(round(crop * long_side / get_settings().detect_long_side))
    s = make_sample(
        rng, region, region, long_side, data_dir=data_dir, source=source, streaks=rng.random() < STREAK_SHARE
    )
    return _detector_view(s.composite, s.mask, crop)


def detector_batch(
    rng: np.random.Generator, batch: int, crop: int, data_dir=None, source: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    return _stack_pairs([_synthetic_detector_sample(rng, crop, data_dir, source) for _ in range(batch)])


def _stack_pairs(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, targets) batches from a list of (image, target) pairs."""
    return _to_tensor([p[0] for p in pairs]), _to_tensor([p[1] for p in pairs])


_PHOTOS = PhotoCache()


def _product_detector_sample(rng: np.random.Generator, crop: int, data_dir) -> tuple[np.ndarray, np.ndarray]:
    """A window of a real train-split product photo at the detector's scale, marked in the
    training family (`models.styles.TRAIN`) or, PRODUCT_NONE of the time, clean."""
    seen = get_settings().detect_long_side
    window, long_side = _product_window(rng, lambda long: int(round(crop * max(1.0, long / seen))), data_dir)
    kinds: list[str] | None = [] if rng.random() < PRODUCT_NONE else None
    s = mark_photo(rng, window, "train", kinds, long_side=long_side)
    return _detector_view(s.composite, s.mask, crop)


def product_detector_batch(
    rng: np.random.Generator, batch: int, crop: int, data_dir=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`--photos products`: real product photos (train split) for all but
    PRODUCT_SYNTH_SHARE of the crops, which stay procedural studio scenes (never the
    upscaled grocery photos: their softness taught the first models that crisp = mark)."""
    pairs = [
        _synthetic_detector_sample(rng, crop, data_dir, source="studio")
        if rng.random() < PRODUCT_SYNTH_SHARE
        else _product_detector_sample(rng, crop, data_dir)
        for _ in range(batch)
    ]
    return _stack_pairs(pairs)


def noisy_mask(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """The GT mask as the pipeline would hand it over: dilated, imperfect, maybe feathered."""
    h, w = mask.shape
    r = int(rng.integers(2, 7))
    m = dilate_disc(mask, r)
    for _ in range(int(rng.poisson(0.6))):  # spurious (+) or missed (-) blobs
        c = (int(rng.integers(w)), int(rng.integers(h)))
        axes = (int(rng.integers(3, max(4, w // 6))), int(rng.integers(3, max(4, h // 6))))
        cv2.ellipse(m, c, axes, float(rng.uniform(0, 180)), 0, 360, int(rng.random() < 0.6), -1)
    m = m.astype(np.float32)
    if rng.random() < 0.3:
        m = np.maximum(m, cv2.GaussianBlur(m, (0, 0), rng.uniform(0.7, 2.0)))
    return m


def remover_batch(
    rng: np.random.Generator, batch: int, crop: int, data_dir=None, source: str | None = None, detector=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """With a `detector` (a `ModelEngine`), DETECTOR_MASK_SHARE of the crops get the input
    mask the pipeline would hand over (`detector_mask`) instead of the noisy true mask,
    centred on a pixel it found or missed; DETECTOR_CLEAN_SHARE of those photos carry no
    mark, so what it finds there are false alarms, for the mark output to reject."""
    inputs, cleans, alphas = [], [], []
    for _ in range(batch):
        long_side = int(rng.integers(800, 1701))
        mask = None
        if detector is not None and rng.random() < DETECTOR_MASK_SHARE:
            window = crop + crop // 2  # the detector sees some context around the crop
            s = make_sample(
                rng, window, window, long_side, data_dir=data_dir, p_none=DETECTOR_CLEAN_SHARE, source=source
            )
            found = detector_mask(detector, s.composite, long_side, get_settings().mask_dilate_px)
            ys, xs = np.nonzero(found | s.mask)  # a crop around a pixel it found, or missed
            centre = (0, 0)
            if len(ys):
                k = int(rng.integers(len(ys)))
                centre = (ys[k], xs[k])
            y, x = (int(np.clip(c - crop // 2, 0, window - crop)) for c in centre)
            s, found = s.crop(y, x, crop), found[y : y + crop, x : x + crop]
            mask = found.astype(np.float32) if found.any() else None  # it missed: noisy truth
        else:
            s = make_sample(rng, crop, crop, long_side, data_dir=data_dir, p_none=0.0, source=source)
        if mask is None:
            mask = noisy_mask(rng, s.mask)
            if s.product.any() and rng.random() < 0.5:  # where the detector errs: product print
                grown = dilate_disc(s.product, int(rng.integers(2, 7)))
                mask = np.maximum(mask, grown.astype(np.float32))
        inputs.append(torch.from_numpy(remover_input(s.composite, mask)))
        cleans.append(s.clean)
        alphas.append(s.alpha.astype(np.float32))
    return torch.stack(inputs), _to_tensor(cleans), _to_tensor(alphas)


def detector_mask(detector, composite: np.ndarray, long_side: int, dilate_px: int) -> np.ndarray:
    """The mask (bool H x W), dilated by `dilate_px`, that the pipeline builds from
    `detector` for a window of a photo with long side `long_side`: seen at the pipeline's
    scale, with its other settings."""

    st = get_settings()
    prob = detect_probability(
        detector,
        composite,
        st.detect_long_side,
        st.detect_flip,
        scale=min(1.0, st.detect_long_side / long_side),
    )
    return build_mask(prob, st.mask_threshold, st.mask_min_area, dilate_px).dilated


def detector_loss(model, batch) -> torch.Tensor:
    image, target = batch
    prob = model(image).clamp(1e-6, 1 - 1e-6)
    bce = F.binary_cross_entropy(prob, target)
    inter = (prob * target).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    return bce + dice.mean()


def _grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def remover_loss(model, batch) -> torch.Tensor:
    x, clean, alpha = batch
    mask = x[:, 3:4]
    restored, alpha_pred, mark = model.parts(x)
    area = mask.sum((1, 2, 3)).clamp(min=16.0)
    l1 = ((restored - clean).abs() * mask).sum((1, 2, 3)) / (3 * area)
    la = ((alpha_pred - alpha).abs() * mask).sum((1, 2, 3)) / area
    gy, gx = _grad(restored - clean)
    lg = gy.abs().mean() + gx.abs().mean()
    return (l1 + 0.5 * la + MARK_LOSS_WEIGHT * mark_loss(mark, mask, alpha)).mean() + 0.5 * lg


def mark_loss(mark: torch.Tensor, mask: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Per sample: BCE + soft dice of the full-resolution mark (N x 1 x H x W probability)
    against `alpha > 0`, both inside the input mask (the pipeline scores nothing outside
    it). Dice is what the evaluation's per-image F1 rewards: edge pixels of thin strokes."""
    inside = (mask > 0).float()
    target = (alpha > 0).float() * inside
    bce = F.binary_cross_entropy(mark.clamp(1e-6, 1 - 1e-6), target, reduction="none")
    bce = (bce * inside).sum((1, 2, 3)) / inside.sum((1, 2, 3)).clamp(min=16.0)
    p = mark * inside
    dice = 1 - (2 * (p * target).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    return bce + dice


def mark_head_loss(model, batch) -> torch.Tensor:
    """`--trainable mark-head`: the mark loss alone (the rest of the remover is frozen)."""
    x, _, alpha = batch
    _, _, mark = model.parts(x)
    return mark_loss(mark, x[:, 3:4], alpha).mean()


def _product_window(rng: np.random.Generator, size, data_dir) -> tuple[np.ndarray, int]:
    """A square window of a random train-split product photo at full resolution, mirrored
    half the time, and the photo's long side. `size` is the side in px, or a function of
    the photo's long side giving it; the photo's short side caps it."""
    paths = split_paths(str(data_dir or DEFAULT_DATA), "train")
    photo = _PHOTOS.get(paths[int(rng.integers(len(paths)))])
    size = min(size(max(photo.shape[:2])) if callable(size) else size, *photo.shape[:2])
    if rng.random() < 0.6:
        y, x = structured_window(rng, photo, size)
    else:
        y = int(rng.integers(0, photo.shape[0] - size + 1))
        x = int(rng.integers(0, photo.shape[1] - size + 1))
    window = photo[y : y + size, x : x + size]
    return np.ascontiguousarray(window[:, ::-1] if rng.random() < 0.5 else window), max(photo.shape[:2])


def product_remover_batch(
    rng: np.random.Generator, batch: int, crop: int, data_dir=None, detector=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`--photos products` for the remover: full-resolution windows of real train-split
    photos, marked in the training family or (PRODUCT_NONE) clean, masked as `detector`
    and the pipeline would (DETECTOR_MASK_SHARE; on real photos its false alarms cover
    faces, straps and print, which the mark output must reject) or by the noisy truth."""
    inputs, cleans, alphas = [], [], []
    for _ in range(batch):
        window, long_side = _product_window(rng, crop + crop // 2, data_dir)
        kinds: list[str] | None = [] if rng.random() < PRODUCT_NONE else None
        s = mark_photo(rng, window, "train", kinds, long_side=long_side)
        size = min(crop, *window.shape[:2])
        found = None
        if detector is not None and rng.random() < DETECTOR_MASK_SHARE:
            found = detector_mask(detector, s.composite, long_side, get_settings().mask_dilate_px)
        ys, xs = np.nonzero((found if found is not None else s.mask) | s.mask)
        centre = (ys[k], xs[k]) if len(ys) and (k := int(rng.integers(len(ys)))) >= 0 else (0, 0)
        y, x = (int(np.clip(c - size // 2, 0, n - size)) for c, n in zip(centre, window.shape[:2]))
        win = (slice(y, y + size), slice(x, x + size))
        mask = (
            found[win].astype(np.float32)
            if found is not None and found[win].any()
            else noisy_mask(rng, s.mask[win])
        )
        composite, clean, alpha = s.composite[win], s.clean[win], s.alpha[win]
        if size < crop:  # a small photo: pad to the batch's size (the mask stays 0 there)
            pad = ((0, crop - size), (0, crop - size))
            composite, clean = (np.pad(a, pad + ((0, 0),), mode="reflect") for a in (composite, clean))
            mask, alpha = np.pad(mask, pad), np.pad(alpha, pad)
        inputs.append(torch.from_numpy(remover_input(composite, mask)))
        cleans.append(clean)
        alphas.append(alpha.astype(np.float32))
    return torch.stack(inputs), _to_tensor(cleans), _to_tensor(alphas)


# kind -> (rng, batch, crop, data_dir, **options) -> the batch's tensors
BATCHES: dict[str, Callable[..., Sequence[torch.Tensor]]] = {
    "detector": detector_batch,
    "remover": remover_batch,
}
PRODUCT_BATCHES: dict[str, Callable[..., Sequence[torch.Tensor]]] = {
    "detector": product_detector_batch,
    "remover": product_remover_batch,
}
_detectors: dict[str, ModelEngine] = {}  # per process, by file hash: loaded on first use


def make_batch(recipe: BatchRecipe, step: int) -> list[np.ndarray]:
    """The arrays of the batch of `step` (`models.feed` makes them ahead of the optimizer,
    here or in worker processes)."""
    batch_of = (PRODUCT_BATCHES if recipe.photos == "products" else BATCHES)[recipe.kind]
    if recipe.detector_masks:
        key = file_sha256(recipe.detector_masks)
        if key not in _detectors:
            _detectors[key] = ModelEngine(load_weights("detector", recipe.detector_masks))
        batch_of = partial(
            PRODUCT_BATCHES["remover"] if recipe.photos == "products" else remover_batch,
            detector=_detectors[key],
        )
    rng = np.random.default_rng([TRAIN_TAG, recipe.seed, step])
    arrays = [t.numpy() for t in batch_of(rng, recipe.batch, recipe.crop, recipe.data_dir)]
    if recipe.reviewed:
        mix = np.random.default_rng([TRAIN_TAG, recipe.seed, step, REVIEWED_STREAM])
        seen = get_settings().detect_long_side
        arrays = reviewed_data.replace_some(mix, recipe.kind, arrays, recipe.reviewed, recipe.crop, seen)
    return arrays


LOSSES = {"detector": detector_loss, "remover": remover_loss}
TRAINABLE = {"all": "", "mark-head": "refine."}  # parameter-name prefix that trains


def update_manifest(out_dir: Path, kind: str, entry: dict, drop: tuple[str, ...] = ()) -> None:
    """Merge `entry` into manifest.json[kind], less the `drop` keys (keeps other kinds and
    keys)."""
    manifest = read_manifest(out_dir)
    mine = manifest.setdefault(kind, {})
    mine.update(entry)
    for key in drop:
        mine.pop(key, None)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (Path(out_dir) / "manifest.json").write_text(text)


def lineage(out_dir: Path, kind: str, init: Path | None) -> list[dict]:
    """The `history` of weights trained from `init`: when a manifest (the one in `out_dir`,
    or the one beside `init`) describes `init`, its history plus its recipe (with its
    sha256); from scratch or from weights no manifest describes, empty."""
    if init is None:
        return []
    init_sha = file_sha256(init)
    for directory in (out_dir, Path(init).parent):
        entry = read_manifest(directory).get(kind, {})
        if "recipe" in entry and entry.get("sha256") == init_sha:
            return entry.get("history", []) + [{**entry["recipe"], "sha256": init_sha}]
    return []


def code_version() -> str | None:
    """`git <short hash>` of this checkout (`+ changes` when the tree differs), or None."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True, capture_output=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"git {head}" + (" + changes" if dirty else "")


def save(model, kind: str, out_dir: Path, recipe: dict, history: list[dict]) -> Path:
    """Write the weights and their manifest entry; the old `eval` and `eval_real` go (they
    measured the weights this file replaces)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{kind}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)
    update_manifest(
        out_dir,
        kind,
        {
            "sha256": file_sha256(path),
            "architecture": recipe["architecture"],
            "recipe": recipe,
            "seed": recipe["seed"],
            "steps": recipe["steps_done"],
            "history": history,
        },
        drop=("eval", "eval_real"),
    )
    return path


def load_init(model: torch.nn.Module, state: dict) -> None:
    """Start from `state`, an older remover's weights included:
    - a first convolution with fewer input channels (the single-stage remover, before the
      prefill input) is widened with zero weights, and the prefill correction head (output
      channels 4-6) starts at zero, so the model begins as "inverted blend or prefill";
    - a head without the mask output (channel 8) gets one copied from the opacity logit,
      shifted so that it starts as "opacity >= synth.MIN_ALPHA" (sigmoid(-4) = 0.018),
      which is what the mask output learns: the watermark's pixels;
    - a remover without the mark refiner keeps the fresh (zero-output) one."""
    own, state = model.state_dict(), dict(state)
    first, head_w, head_b = "net.downs.0.0.weight", "net.head.weight", "net.head.bias"
    if first in state and state[first].shape[1] < own[first].shape[1]:
        widened = torch.zeros_like(own[first])
        widened[:, : state[first].shape[1]] = state[first]
        state[first] = widened
        state[head_w], state[head_b] = state[head_w].clone(), state[head_b].clone()
        state[head_w][4:7], state[head_b][4:7] = 0.0, 0.0
    if head_w in state and state[head_w].shape[0] == 8 and own[head_w].shape[0] == 9:
        state[head_w] = torch.cat([state[head_w], state[head_w][0:1]])
        state[head_b] = torch.cat([state[head_b], state[head_b][0:1] + 4.0])
    for key in own:  # a remover without the mark refiner: the new one starts as a no-op
        if key.startswith("refine.") and key not in state:
            state[key] = own[key]
    _widen_refiner(own, state)
    model.load_state_dict(state)


def _widen_refiner(own: dict, state: dict) -> None:
    """A narrower mark refiner in `state` grows to the width of `own` and computes the same
    function: its channels are kept, the new hidden channels start as `own` has them
    (random), and every weight from a new channel into an old one or into the output is
    zero, so they only change the output as they learn."""
    first, middle, last = (f"refine.body.{i}.weight" for i in (0, 2, 4))
    if first not in state or state[first].shape[0] >= own[first].shape[0]:
        return
    w = state[first].shape[0]
    for key in (first, first.replace("weight", "bias"), middle.replace("weight", "bias")):
        grown = own[key].clone()
        grown[:w] = state[key]
        state[key] = grown
    grown = own[middle].clone()
    grown[:w] = 0.0
    grown[:w, :w] = state[middle]
    state[middle] = grown
    grown = torch.zeros_like(own[last])
    grown[:, :w] = state[last]
    state[last] = grown


def select_trainable(model: torch.nn.Module, trainable: str) -> list[torch.nn.Parameter]:
    """Put `model` in training mode with only its `trainable` part (a TRAINABLE key)
    learning, and return those parameters. With "mark-head" the remover's U-Net stays in
    eval mode, so its batch norm keeps the running statistics too."""
    model.train()
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(TRAINABLE[trainable]))
    if trainable == "mark-head":
        net = model.net
        assert isinstance(net, torch.nn.Module)
        net.eval()
    return [p for p in model.parameters() if p.requires_grad]


def train(
    kind: str,
    steps: int = 2000,
    batch: int = 16,
    crop: int = 160,
    seed: int = 0,
    lr: float = 2e-3,
    data_dir=None,
    out_dir: Path = WEIGHTS_DIR,
    threads: int = 1,
    arch: dict | None = None,
    max_minutes: float | None = None,
    save_every: int = 100,
    init: Path | None = None,
    trainable: str = "all",
    detector_masks: Path | None = None,
    refine_width: int | None = None,
    device: str = "cpu",
    data_workers: int = 0,
    photos: str = "synthetic",
    reviewed: Path | None = None,
    command: str | None = None,
    progress=None,
) -> dict:
    """Train `kind` and save weights + manifest every `save_every` steps and at the end.

    `max_minutes` stops early and shortens the cosine schedule to fit; the manifest records
    the steps actually done. `init` starts from a state_dict (fine-tuning). `trainable`
    "mark-head" trains only the remover's mark refiner, on `mark_head_loss`: the restored
    image stays exactly as `init` makes it. `detector_masks` (detector weights, remover
    only) masks most crops the way that detector and the pipeline would (`remover_batch`).
    `refine_width` sets the remover's mark refiner width (default: `init`'s, else 16).
    `reviewed` (a `clearmark review export` folder) puts `reviewed_data.REVIEWED_SHARE` of
    each batch's crops from the photos people reviewed. `device` is where the network
    trains ("cuda" on a lent GPU); `data_workers` > 0 makes batches in that many processes
    (`models.feed`; the same batches either way). `command`
    (the command line) and the code version go into the recipe; `lineage` gives the
    manifest's history."""
    if trainable not in TRAINABLE or (trainable != "all" and kind != "remover"):
        raise ValueError(f"trainable={trainable!r} is not available for the {kind}")
    if detector_masks and kind != "remover":
        raise ValueError("detector_masks is for training the remover")
    if photos not in ("synthetic", "products") or (photos == "products" and kind not in PRODUCT_BATCHES):
        raise ValueError(f"photos={photos!r} is not available for the {kind}")
    n_reviewed = len(reviewed_data.load(str(reviewed))) if reviewed else 0  # ValueError when unusable
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: PyTorch sees no CUDA GPU here")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if refine_width and kind != "remover":
        raise ValueError("refine_width is the remover's")
    init_state = torch.load(init, map_location="cpu", weights_only=True) if init else {}
    arch = dict(arch or DEFAULT_ARCH[kind])
    width = refine_width or len(init_state.get("refine.body.0.bias", ()))
    if width and width != MarkRefiner.DEFAULT_WIDTH:
        arch["refine_width"] = width
    model = build_model(kind, **arch)
    if init:
        load_init(model, init_state)
    # torch's stubs leave out Module.to's memory_format
    model = model.to(dev, memory_format=torch.channels_last)  # type: ignore[call-overload]
    params = select_trainable(model, trainable)
    loss_of = mark_head_loss if trainable == "mark-head" else LOSSES[kind]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    warm, start = min(100, steps // 10), time.time()
    clock_led = False  # did the time budget ever set the schedule? (then no rerun repeats it)

    def progress_of(i: int) -> float:
        """Fraction of the run done: by steps, or by the time budget once that is clearly
        ahead (so the cosine anneals to ~0 on a shared, slow CPU too). A lead under
        CLOCK_LEAD (a slow first step) is ignored, so a run that keeps to its budget
        follows its steps alone and a rerun repeats it exactly (`models.reproduce`)."""
        nonlocal clock_led
        frac = min(i, steps) / max(1, steps)
        if max_minutes:
            by_clock = min(1.0, (time.time() - start) / (max_minutes * 60))
            if by_clock > frac + CLOCK_LEAD:
                clock_led, frac = True, by_clock
        return frac

    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / max(1, warm)) * 0.5 * (1 + math.cos(math.pi * progress_of(i)))
    )
    recipe = {
        "kind": kind,
        "steps": steps,
        "batch": batch,
        "crop": crop,
        "seed": seed,
        "lr": lr,
        "optimizer": "AdamW(wd=1e-4), warmup + cosine over steps or max_minutes, whichever ends first",
        "max_minutes": max_minutes,
        "threads": threads,
        "architecture": arch,
        "command": command,
        "code": code_version(),
        "init": f"{init} (sha256 {file_sha256(init)})" if init else None,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "trainable": trainable,
        "detect_long_side": get_settings().detect_long_side,
        "reviewed": (
            {"path": str(reviewed), "photos": n_reviewed, "share": reviewed_data.REVIEWED_SHARE}
            if reviewed
            else None
        ),
        "detector_masks": (
            {
                "path": str(detector_masks),
                "sha256": file_sha256(detector_masks),
                "share": DETECTOR_MASK_SHARE,
                "clean_share": DETECTOR_CLEAN_SHARE,
                "dilate_px": get_settings().mask_dilate_px,
            }
            if detector_masks
            else None
        ),
        "data": (
            "clearmark.models.synth.make_sample, grocery train split + procedural studio scenes"
            if photos == "synthetic"
            else f"real product photos, train split, marks of models.styles.TRAIN "
            f"({PRODUCT_NONE:.0%} clean)"
            + (f" + {PRODUCT_SYNTH_SHARE:.0%} studio scenes" if kind == "detector" else "")
        ),
        **({"photos": photos} if photos != "synthetic" else {}),
    }
    history = lineage(out_dir, kind, init)  # read now: the first save replaces the entry
    ema, done = None, 0
    feed = batches(
        make_batch,
        BatchRecipe(kind, seed, batch, crop, data_dir, detector_masks, photos, reviewed),
        steps,
        data_workers,
    )
    for step, data in enumerate(feed):
        data = [t.to(dev, memory_format=torch.channels_last) if t.ndim == 4 else t.to(dev) for t in data]
        loss = loss_of(model, data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        done = step + 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{ema:.4f}", refresh=False)
        if done % 50 == 0:
            log.info(
                "%s step %d/%d loss %.4f (ema %.4f) %.1f min",
                kind,
                done,
                steps,
                loss.item(),
                ema,
                (time.time() - start) / 60,
            )
        out_of_time = max_minutes is not None and time.time() - start > max_minutes * 60
        if done % save_every == 0 or done == steps or out_of_time:
            recipe.update(
                steps_done=done,
                final_loss_ema=round(ema, 5),
                train_minutes=round((time.time() - start) / 60, 1),
                schedule_by="time" if clock_led else "steps",
            )
            save(model, kind, out_dir, recipe, history)
        if out_of_time:
            log.info("time budget reached at step %d", done)
            break
    feed.close()
    if done == 0:  # steps=0: the (converted) init weights themselves
        recipe.update(steps_done=0, final_loss_ema=None, train_minutes=0.0, schedule_by="steps")
        save(model, kind, out_dir, recipe, history)
    return recipe
