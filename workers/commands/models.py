"""Model commands: `clearmark train`, `reproduce`, `eval`, `eval-real` and `calibrate-suspects`."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from clearmark.models.weights import KINDS, WEIGHTS_DIR, MissingWeights, read_manifest
from clearmark.settings import get_settings
from clearmark.workers.commands.common import synthetic_photos
from clearmark.workers.commands.deferred import deferred

if TYPE_CHECKING:
    import numpy as np
    import tqdm

    from clearmark.models import evaluate as synthetic_eval
    from clearmark.models import registry, scenes, text_prior
    from clearmark.models import reproduce as repeat
    from clearmark.models import train as training
    from clearmark.pipeline import calibrate, gate, process, verdict
    from clearmark.pipeline import evaluate_real as real_eval
else:
    tqdm = deferred("tqdm")
    synthetic_eval = deferred("clearmark.models.evaluate")
    registry = deferred("clearmark.models.registry")
    scenes = deferred("clearmark.models.scenes")
    text_prior = deferred("clearmark.models.text_prior")
    repeat = deferred("clearmark.models.reproduce")
    training = deferred("clearmark.models.train")
    calibrate = deferred("clearmark.pipeline.calibrate")
    gate = deferred("clearmark.pipeline.gate")
    process = deferred("clearmark.pipeline.process")
    verdict = deferred("clearmark.pipeline.verdict")
    real_eval = deferred("clearmark.pipeline.evaluate_real")

# Defaults click calls when a command runs, not for its --help (which shows the text given
# beside them), so that the modules holding them load only then.
SHARED_DATA = "../shared/data"  # scenes.DEFAULT_DATA, beside the checkout


def _shared_data() -> Path:
    return scenes.DEFAULT_DATA


def _shipped_prior() -> Path:
    return verdict.PRIOR_PATH


class CannotRepeat(click.ClickException):
    """The run cannot be repeated as recorded: exit status 2 (1 is "it differs")."""

    exit_code = 2


def _in_process_engines(weights_dir: Path) -> process.Engines:
    """The models in `weights_dir`, run by PyTorch in this process (no engine export):
    candidate weights are evaluated as they are."""
    try:
        detector, remover = (registry.ModelEngine(registry.load_model(kind, weights_dir)) for kind in KINDS)
        text = text_prior.TextDetector.load() if get_settings().text_prior else None
        return process.Engines(detector, remover, text)
    except MissingWeights as exc:
        raise click.ClickException(str(exc)) from None


def _command_line(kind: str) -> str:
    """This run as one `clearmark train` command with every option spelled out (for the
    recipe: it repeats the run whatever the defaults become)."""
    ctx = click.get_current_context()
    opts = [
        f"{param.opts[0]} {ctx.params[param.name]}"
        for param in ctx.command.params
        if isinstance(param, click.Option) and ctx.params.get(param.name) is not None
    ]
    return " ".join(["clearmark train", kind, *opts])


@click.command("train")
@click.argument("kind", type=click.Choice(KINDS))
@click.option(
    "--steps",
    default=2400,
    show_default=True,
    type=click.IntRange(0),
    help="optimizer steps (cosine schedule length); 0 with --init only converts "
    "older weights to the current architecture (see models.train.load_init)",
)
@click.option("--batch", default=16, show_default=True)
@click.option("--crop", default=160, show_default=True, help="training crop size in px")
@click.option("--seed", default=0, show_default=True)
@click.option("--lr", default=2e-3, show_default=True)
@click.option("--threads", default=1, show_default=True, help="torch CPU threads")
@click.option("--max-minutes", type=float, default=None, help="stop early after this long")
@click.option(
    "--init",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="start from these weights (fine-tuning)",
)
@click.option(
    "--trainable",
    type=click.Choice(["all", "mark-head"]),
    default="all",
    show_default=True,
    help="mark-head: train only the remover's mark refiner (the restored image stays as --init makes it)",
)
@click.option(
    "--detector-masks",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="remover: mask most crops as this detector (weights file) and "
    "the pipeline would, instead of the noisy true mask",
)
@click.option(
    "--refine-width",
    type=click.IntRange(1),
    default=None,
    help="remover: hidden channels of the mark refiner (default 16, or --init's); "
    "a wider one grows from --init's without changing its output",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="where the network trains: cpu, cuda or cuda:N (a lent GPU)",
)
@click.option(
    "--data-workers",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="processes synthesising batches (0: one thread); the batches are the same",
)
@click.option(
    "--photos",
    type=click.Choice(["synthetic", "products"]),
    default="synthetic",
    show_default=True,
    help="products: the detector trains mostly on real product "
    "photos (train split of <data>/products) with marks "
    "composited at their own resolution, a third left clean",
)
@click.option(
    "--reviewed",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="a `clearmark review export` folder: a quarter of each batch's crops come from the "
    "photos people reviewed (their accepted masks and results as the truth)",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=_shared_data,
    show_default=SHARED_DATA,
    help="directory holding grocery/ and products/",
)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=WEIGHTS_DIR, show_default=True)
def train_command(
    kind: str,
    steps: int,
    batch: int,
    crop: int,
    seed: int,
    lr: float,
    threads: int,
    max_minutes: float | None,
    init: Path | None,
    trainable: str,
    detector_masks: Path | None,
    refine_width: int | None,
    device: str,
    data_workers: int,
    photos: str,
    reviewed: Path | None,
    data_dir: Path,
    out_dir: Path,
) -> None:
    """Train the detector or the remover on synthetic watermarks; writes KIND.pt + manifest.

    With --reviewed, a quarter of each batch's crops are photos people reviewed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tqdm.tqdm(total=steps, desc=f"train {kind}", mininterval=5) as bar:
        try:
            recipe = training.train(
                kind,
                steps=steps,
                batch=batch,
                crop=crop,
                seed=seed,
                lr=lr,
                data_dir=data_dir,
                out_dir=out_dir,
                threads=threads,
                max_minutes=max_minutes,
                init=init,
                trainable=trainable,
                detector_masks=detector_masks,
                refine_width=refine_width,
                device=device,
                data_workers=data_workers,
                photos=photos,
                reviewed=reviewed,
                command=_command_line(kind),
                progress=bar,
            )
        except ValueError as exc:  # options that do not fit together, or no such device
            raise click.UsageError(str(exc)) from None
    click.echo(json.dumps(recipe, indent=2))


@click.command("reproduce")
@click.argument("kind", type=click.Choice(KINDS))
@click.option(
    "--weights",
    "weights_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=WEIGHTS_DIR,
    show_default=True,
    help="the weights (KIND.pt and manifest.json) whose last training run to repeat",
)
@click.option(
    "--init",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="the weights that run started from (default: found by sha256 "
    "beside --weights or in this checkout's git history)",
)
@click.option(
    "--detector-masks",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="remover: the detector that masked the run's crops (found like --init by default)",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=_shared_data,
    show_default=SHARED_DATA,
    help="directory holding grocery/",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where the repeated run writes its weights (default: a new temporary directory, kept)",
)
def reproduce_command(
    kind: str,
    weights_dir: Path,
    init: Path | None,
    detector_masks: Path | None,
    data_dir: Path,
    out_dir: Path | None,
) -> None:
    """Repeat the training run that made KIND.pt and check the result bit for bit.

    The run's options, seed and input weights come from the manifest's recipe; the result
    is compared by sha256. Exits 1 when it differs (other code, libraries or CPU), 2 when
    the run cannot be repeated as recorded. It takes as long as the run did (its recipe's
    train_minutes; the shipped runs took 31 and 39 minutes on a 2-core CPU)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out_dir = out_dir or Path(tempfile.mkdtemp(prefix=f"clearmark-reproduce-{kind}-"))
    recipe = read_manifest(weights_dir).get(kind, {}).get("recipe", {})
    click.echo(
        f"repeating: {recipe.get('command', '?')}\n  (recorded at {recipe.get('code')} "
        f"on {recipe.get('device')}, {recipe.get('train_minutes')} min) into {out_dir}"
    )
    with tqdm.tqdm(total=recipe.get("steps", 0), desc=f"reproduce {kind}", mininterval=5) as bar:
        try:
            res = repeat.reproduce(kind, out_dir, weights_dir, data_dir, init, detector_masks, bar)
        except repeat.ReproduceError as exc:
            raise CannotRepeat(str(exc)) from None
    if res["same"]:
        click.echo(f"reproduced {kind}.pt bit for bit: sha256 {res['got']}")
        return
    click.echo(
        f"differs: got sha256 {res['got'][:12]} ({res['path']}), the manifest records "
        f"{res['expected'][:12]}; it landed {res['gap']:.2%} of the recorded run's "
        f"change away from it; "
        f"recorded at {res['recipe_code']}, now {res['code']}"
    )
    raise SystemExit(1)


@click.command("eval")
@click.option(
    "--n", "n", default=60, show_default=True, help="watermarked images (plus n/3 clean, n/3 product-text)"
)
@click.option("--seed", default=0, show_default=True, help="evaluation seed (never used in training)")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=None,
    help=f"directory holding grocery/ (the photo backgrounds); default {SHARED_DATA} "
    "where it holds them, else studio scenes only",
)
@click.option(
    "--weights", "weights_dir", type=click.Path(path_type=Path), default=WEIGHTS_DIR, show_default=True
)
@click.option("--threads", default=2, show_default=True)
@click.option(
    "--json", "json_path", type=click.Path(path_type=Path), default=None, help="also write all numbers here"
)
@click.option(
    "--slice",
    "slices",
    multiple=True,
    type=click.Choice(["wm", "clean", "text"]),
    help="only these parts of the set (repeatable; default all), e.g. `--slice clean` "
    "to count false alarms on other seeds; the images do not change",
)
@click.option("--update-manifest", is_flag=True, help="store the summary in the weights manifest")
def eval_command(
    n: int,
    seed: int,
    data_dir: Path | None,
    weights_dir: Path,
    threads: int,
    json_path: Path | None,
    slices: tuple[str, ...],
    update_manifest: bool,
) -> None:
    """Evaluate the shipped models against two baselines on a held-out synthetic set.

    Its backgrounds are procedural studio scenes and grocery photos (held out of training)
    from --data; without the photos (a clone has no ../shared/data), studio scenes only."""
    slices = tuple(slices) or synthetic_eval.SLICES
    if update_manifest and set(slices) != set(synthetic_eval.SLICES):
        raise click.UsageError("--update-manifest records the whole set: drop --slice")
    data_dir, studio_only = synthetic_photos(data_dir, "--data DIR for photo backgrounds")
    if update_manifest and studio_only:
        raise click.UsageError("--update-manifest records the whole set, photos included: give --data")
    settings = get_settings()
    engines = _in_process_engines(weights_dir)

    def model(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = process.clean_rgb(engines, rgb, settings)
        return c.restored, c.found, c.mask.dilated

    results = synthetic_eval.evaluate(
        model,
        settings.mask_dilate_px,
        n=n,
        seed=seed,
        data_dir=data_dir,
        threads=threads,
        slices=slices,
        studio_only=studio_only,
    )
    click.echo(synthetic_eval.format_table(results))
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    if update_manifest:
        synthetic_eval.store_in_manifest(results, weights_dir)


@click.command("eval-real")
@click.option(
    "--split",
    type=click.Choice(["dev", "train"]),
    default="dev",
    show_default=True,
    help="photos of this split of <data>/products (tune on train, report dev)",
)
@click.option(
    "--family",
    type=click.Choice(["heldout", "train"]),
    default="heldout",
    show_default=True,
    help="mark styles: held out of all training, or training's own",
)
@click.option("--marked", "n_marked", default=48, show_default=True, type=click.IntRange(0))
@click.option("--clean", "n_clean", default=24, show_default=True, type=click.IntRange(0))
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--backend",
    default="onnxruntime",
    show_default=True,
    help="engine backend the pipeline runs on (torch, onnxruntime, auto)",
)
@click.option(
    "--weights",
    "weights_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="candidate weights (PyTorch) instead of the shipped engines",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=_shared_data,
    show_default=SHARED_DATA,
    help="directory holding products/",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="also write every number, per image, here",
)
@click.option(
    "--gallery",
    type=click.Path(path_type=Path),
    default=None,
    help="write a before/after HTML page of 12 of the images here",
)
@click.option(
    "--baselines/--no-baselines",
    default=True,
    show_default=True,
    help="also score doing nothing and true-mask Telea on the same images",
)
@click.option(
    "--update-manifest",
    is_flag=True,
    help="store the summary in the shipped weights' manifest (eval_real); needs the "
    "baselines and the shipped engines",
)
@click.option(
    "--sweep-gate",
    is_flag=True,
    help="tuning: let every region through, then print which gate limits would have "
    "harmed no image (run it on --split train, never on the split you report)",
)
@click.option(
    "--reviewed",
    "reviewed_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="score the photos reviewers kept (a `clearmark review export` folder) instead: "
    "the accepted mask is the truth, the accepted result the clean photo",
)
def eval_real_command(
    split: str,
    family: str,
    n_marked: int,
    n_clean: int,
    seed: int,
    backend: str,
    weights_dir: Path | None,
    data_dir: Path,
    json_path: Path | None,
    gallery: Path | None,
    baselines: bool,
    update_manifest: bool,
    sweep_gate: bool,
    reviewed_dir: Path | None,
) -> None:
    """Score the pipeline (decode to encode, gate included) on real product photos, marked
    and clean, against doing nothing and true-mask Telea: harm rate, clean photos changed,
    PSNR/SSIM, PSNR inside and outside the mark, mask F1, statuses, per style, with
    bootstrap 95% intervals."""
    if update_manifest and (weights_dir or not baselines or sweep_gate or reviewed_dir):
        raise click.UsageError(
            "--update-manifest records the shipped engines with baselines "
            "and the gate as set on the products set: drop --weights, --no-baselines, --sweep-gate, "
            "--reviewed"
        )
    settings = get_settings().replace(backend=backend)
    if sweep_gate:
        settings = settings.replace(**real_eval.OPEN_GATE)
    if weights_dir:
        engines = _in_process_engines(weights_dir)
        backend = f"torch ({weights_dir})"
    else:
        engines = process.Engines.load(settings)
    methods = real_eval.METHODS if baselines else ("model",)
    try:
        with tqdm.tqdm(total=n_marked + n_clean, desc="eval-real", mininterval=5) as bar:
            if reviewed_dir:
                results = real_eval.evaluate_reviewed(
                    reviewed_dir, engines, settings, methods, backend=backend, progress=bar
                )
            else:
                results = real_eval.evaluate_real(
                    data_dir,
                    engines,
                    settings,
                    split,
                    n_marked,
                    n_clean,
                    seed,
                    family,
                    methods,
                    backend=backend,
                    progress=bar,
                )
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(real_eval.format_report(results))
    if sweep_gate:
        click.echo("\n" + real_eval.format_sweep(results["rows"]["model"], gate.GateLimits))
    if gallery:
        Path(gallery).write_text(real_eval.gallery_html(results))
        click.echo(f"gallery: {gallery}")
    if update_manifest:
        real_eval.store_in_manifest(
            results,
            f"clearmark eval-real --split {split} --family {family} "
            f"--marked {n_marked} --clean {n_clean} --seed {seed} "
            f"--backend {backend}",
        )
    if json_path:
        slim = {k: v for k, v in results.items() if k != "cases"}
        slim["rows"] = {
            m: [{k: v for k, v in r.items() if k != "thumbs"} for r in rows]
            for m, rows in results["rows"].items()
        }
        Path(json_path).write_text(json.dumps(slim, indent=1, default=str) + "\n")


@click.command("calibrate-suspects")
@click.option("--marked", "n_marked", default=70, show_default=True, type=click.IntRange(1))
@click.option("--clean", "n_clean", default=90, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=21, show_default=True)
@click.option(
    "--data", "data_dir", type=click.Path(path_type=Path), default=_shared_data, show_default=SHARED_DATA
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=_shipped_prior,
    show_default="models/weights/suspect_prior.json",
    help="where the prior goes",
)
def calibrate_suspects_command(n_marked: int, n_clean: int, seed: int, data_dir: Path, out: Path) -> None:
    """Fit the suspect prior on the TRAIN split (training's mark styles) and choose its
    limit there: how likely each region the detector flags is a mark, from the detector's
    scores, the remover's second opinion and the gate's measurements (pipeline/calibrate.py)."""
    settings = get_settings().replace(backend="onnxruntime")
    engines = process.Engines.load(settings)
    try:
        cases = real_eval.build_set(data_dir, "train", n_marked, n_clean, seed=seed, family="train")
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    photos = list(tqdm.tqdm(calibrate.observe(cases, engines, settings), total=len(cases), desc="calibrate"))
    try:
        prior = calibrate.fit_prior(photos)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    command = f"clearmark calibrate-suspects --marked {n_marked} --clean {n_clean} --seed {seed}"
    calibrate.write_prior(prior, command, out)
    at = prior["at_limit"]
    click.echo(
        f"limit {prior['limit']}: on train, {at['marked_dismissed']:.1%} of marked photos would be "
        f"dismissed unchanged, {at['clean_flagged']:.1%} of clean photos flagged; "
        f"{prior['suspects']['on_mark']} suspects on marks, {prior['suspects']['false_alarm']} false "
        f"alarms; written to {out}"
    )
