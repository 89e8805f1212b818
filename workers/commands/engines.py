"""`clearmark engines ...` (ONNX export, TensorRT engines) and `clearmark bench`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from clearmark.errors import EngineUnavailable
from clearmark.models.weights import KINDS, weights_sha256
from clearmark.settings import get_settings
from clearmark.workers.commands.common import photo_folder, synthetic_photos
from clearmark.workers.commands.deferred import deferred

if TYPE_CHECKING:
    import onnxruntime as ort
    import torch

    from clearmark.engine_build import base, bench, onnx_export, trt_backend, trt_cache
    from clearmark.models import scenes
    from clearmark.pipeline import process
    from clearmark.workers import gpu_smoke, jpeg_bench, pipeline_bench, preflight, queue_bench
else:
    ort = deferred("onnxruntime")
    torch = deferred("torch")
    base = deferred("clearmark.engine_build.base")
    scenes = deferred("clearmark.models.scenes")
    bench = deferred("clearmark.engine_build.bench")
    onnx_export = deferred("clearmark.engine_build.onnx_export")
    trt_backend = deferred("clearmark.engine_build.trt_backend")
    trt_cache = deferred("clearmark.engine_build.trt_cache")
    jpeg_bench = deferred("clearmark.workers.jpeg_bench")
    pipeline_bench = deferred("clearmark.workers.pipeline_bench")
    process = deferred("clearmark.pipeline.process")
    preflight = deferred("clearmark.workers.preflight")
    queue_bench = deferred("clearmark.workers.queue_bench")
    gpu_smoke = deferred("clearmark.workers.gpu_smoke")

KIND_CHOICE = click.Choice([*KINDS, "all"])


def _kinds(kind: str) -> list[str]:
    return list(KINDS) if kind == "all" else [kind]


@click.group("engines")
def engines_group() -> None:
    """Export ONNX models and build TensorRT engines."""


@engines_group.command("export")
@click.option("--kind", type=KIND_CHOICE, default="all", show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="fp16: the cast graph TensorRT builds strongly typed.",
)
@click.option("--force", is_flag=True, help="Export again even when cached.")
def export_command(kind: str, precision: str, force: bool) -> None:
    """Export the models to ONNX (dynamic batch/height/width), check and run them."""
    for k in _kinds(kind):
        path = onnx_export.export_onnx(k, precision, force=force)
        click.echo(f"{k}: {path} (opset {onnx_export.ONNX_OPSET}, {precision}, checked)")


@engines_group.command("build")
@click.option("--kind", type=KIND_CHOICE, default="all", show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16"]),
    default=None,
    help="Default: what workers load (fp16 on TensorRT, fp32 on CPU).",
)
@click.option("--force", is_flag=True, help="Build again even when a valid file is cached.")
def build_command(kind: str, precision: str | None, force: bool) -> None:
    """Build the engine files the workers load with these settings (CLEARMARK_BACKEND,
    CLEARMARK_DEVICE, CLEARMARK_ENGINE_DIR), once: the ONNX export for ONNX Runtime, a
    TensorRT engine per model for this GPU and TensorRT version. Holds each file's build
    lock, so another process building the same file waits and then uses it. Workers only
    load; run this (compose: the build-engines service) before them."""
    settings = get_settings()
    for k in _kinds(kind):
        try:
            engine = base.load_engine(
                k, settings.backend, settings.device, precision, settings, build=True, force=force
            )
        except base.BackendUnavailable as exc:
            raise click.ClickException(str(exc)) from None
        if engine.artifact is None:
            click.echo(f"{k}: {engine.key} (no engine file: the weights run as they are)")
        else:
            state = "built" if engine.built else "cached"
            click.echo(f"{k}: {engine.key} {state}: {engine.artifact}")


@engines_group.command("prune")
@click.option("--dry-run", is_flag=True, help="List what would be deleted, delete nothing.")
def prune_command(dry_run: bool) -> None:
    """Delete cached ONNX files and TensorRT engines made from other weights or code than
    the shipped ones (engines for other GPUs or TensorRT versions are kept)."""
    engine_dir = get_settings().engine_dir
    shipped = {k: weights_sha256(k) for k in KINDS}
    stale = onnx_export.stale_onnx(engine_dir) + trt_cache.stale_engines(engine_dir, shipped)
    freed = 0
    for path in stale:
        freed += path.stat().st_size
        click.echo(f"{'would delete' if dry_run else 'deleted'} {path}")
        if not dry_run:
            path.unlink()
    click.echo(
        f"{len(stale)} stale file(s), {freed / 1e6:.1f} MB "
        f"{'would be freed' if dry_run else 'freed'} in {engine_dir}"
    )


@engines_group.command("check")
@click.option("--build", is_flag=True, help="Build what is missing first, as `clearmark engines build` does.")
def check_command(build: bool) -> None:
    """Load the engines as a worker would (backend, weights, cached engine files), print
    what they are, or exit 1 with one line naming why they cannot load, a missing engine
    file included (`clearmark worker` runs this before it starts)."""
    settings = get_settings()
    try:
        engines = process.Engines.load(settings, build=build)
    except Exception as exc:  # noqa: BLE001 - whatever the backend raised, said in one line
        cause = EngineUnavailable.because(exc).message
        raise click.ClickException(f"{preflight.CANNOT_LOAD}: {cause}") from None
    click.echo(engines.version)


@engines_group.command("info")
def info_command() -> None:
    """Which backends are usable here and what `auto` picks."""
    settings = get_settings()
    ok, why = trt_backend.tensorrt_status()
    click.echo(f"tensorrt:    {'yes' if ok else 'no'} ({why})")
    click.echo(f"onnxruntime: {ort.__version__} providers {ort.get_available_providers()}")
    click.echo(f"torch:       {torch.__version__} cuda={torch.cuda.is_available()}")
    usable, reason = base.gpu_usable()
    click.echo(f"gpu:         {'yes' if usable else 'no'} ({reason})")
    click.echo(
        f"settings:    backend={settings.backend} device={settings.device} "
        f"-> {base.resolve_device(None)}; threads={settings.threads}; "
        f"engine_dir={settings.engine_dir}"
    )
    click.echo(f"auto on CPU: {base.CPU_AUTO_BACKEND}")


@engines_group.command("smoke")
@click.option(
    "--candidate",
    "candidates",
    multiple=True,
    metavar="BACKEND:DEVICE",
    help="Repeatable; default: tensorrt:cuda and torch:cuda, each skipped where it cannot run.",
)
@click.option(
    "--images", default=2, show_default=True, type=click.IntRange(1), help="Photos through process_image."
)
@click.option(
    "--size", default=1024, show_default=True, type=click.IntRange(64), help="Their long side (px)."
)
@click.option(
    "--eval-photos",
    default=6,
    show_default=True,
    type=click.IntRange(0),
    help="Marked real photos for eval-real's statuses (half as many clean ones); 0: not run.",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory holding products/ (default: ../shared/data beside the checkout).",
)
@click.option("--quick", is_flag=True, help="The two smallest remover buckets only.")
@click.option(
    "--have",
    type=click.Choice(["tensorrt", "cuda"]),
    default=None,
    help="Only say whether TensorRT (with pycuda and a GPU) or PyTorch's CUDA can run here: exit 0 or 1.",
)
def smoke_command(
    candidates: tuple[str, ...],
    images: int,
    size: int,
    eval_photos: int,
    data_dir: Path | None,
    quick: bool,
    have: str | None,
) -> None:
    """Compare GPU engines with the CPU's fp32 ONNX Runtime in output terms: engines at
    production shapes (mask IoU >= 0.98), process_image on watermarked photos (image PSNR
    >= 45 dB, mask IoU >= 0.98), eval-real's statuses on the same real photos. One line per
    check (ok, FAIL, skip); exit 1 at the first failure."""
    if have:
        ok, why = gpu_smoke.available(have)
        click.echo(f"{have}: {'yes' if ok else 'no'} ({why})")
        sys.exit(0 if ok else 1)
    settings = get_settings()
    chosen = [gpu_smoke.parse_candidate(c) for c in candidates] or gpu_smoke.default_candidates()
    runnable = any(not isinstance(c, gpu_smoke.Check) for c in chosen)
    uploads = _uploads(images, size, None) if runnable else []
    if data_dir is None:
        data_dir = scenes.DEFAULT_DATA
    ok = gpu_smoke.run_smoke(
        chosen,
        settings,
        uploads,
        data_dir if eval_photos else None,
        eval_photos,
        quick,
        lambda check: click.echo(check.line()),
    )
    if not ok:
        sys.exit(1)


@click.command("bench")
@click.option(
    "--backend",
    "backends",
    multiple=True,
    type=click.Choice(["auto", "tensorrt", "onnxruntime", "torch"]),
    help="Repeatable; default: torch and onnxruntime, plus tensorrt when usable.",
)
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1))
@click.option(
    "--size",
    default=None,
    type=click.IntRange(16),
    help="Engines: square input side in px, rounded up to a multiple of 16 "
    "(default 512). --pipeline: long side of the photos (default 1024).",
)
@click.option("--kind", type=KIND_CHOICE, default="all", show_default=True)
@click.option("--device", default=None, help="cpu, cuda[:N] or auto (default: settings).")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16"]),
    default=None,
    help="Default: fp16 on GPU, fp32 on CPU.",
)
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(0))
@click.option(
    "--seconds",
    default=3.0,
    show_default=True,
    type=float,
    help="Minimum timed seconds per row (at least 3 runs).",
)
@click.option(
    "--pipeline",
    is_flag=True,
    help="Time the whole pipeline (decode to encode) on watermarked JPEG photos "
    "instead of the engines alone, with the mirrored passes (detector and "
    "remover) on and off.",
)
@click.option(
    "--images",
    default=8,
    show_default=True,
    type=click.IntRange(1),
    help="--pipeline, --jpeg: how many photos.",
)
@click.option(
    "--jpeg",
    is_flag=True,
    help="Time and measure writing JPEG results, the exact path (the upload's own "
    "coefficients outside the changed blocks) against a full re-encode, on "
    "photos with a corner and a centred mark. No engines are run.",
)
@click.option(
    "--photos",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="--pipeline, --jpeg: a folder of your own photos instead (sub-folders included). "
    "Default: --pipeline, the evaluation set's watermarked images; --jpeg, the dev split "
    "of ../shared/data/products; studio scenes where ../shared/data is not there.",
)
@click.option(
    "--through-queue",
    "through_queue",
    type=click.IntRange(1),
    default=None,
    metavar="N",
    help="N photos through a real worker (one child, started here) on the configured broker "
    "and database, against the same N through the pipeline in this process: images/s of "
    "both and their ratio (the queue's and the database's overhead).",
)
@click.option(
    "--in-flight",
    "in_flight",
    default=None,
    metavar="K,K,...",
    help="--pipeline: run the photos with K jobs in flight (threads sharing one set of engines), "
    "unbatched and batched across jobs (up to --batch-max images per engine call), for each K.",
)
@click.option(
    "--batch-max",
    default=8,
    show_default=True,
    type=click.IntRange(2, 64),
    help="--in-flight: images per engine call when batched.",
)
def bench_command(
    backends: tuple[str, ...],
    batch: int,
    size: int | None,
    kind: str,
    device: str | None,
    precision: str | None,
    warmup: int,
    seconds: float,
    pipeline: bool,
    images: int,
    jpeg: bool,
    photos: Path | None,
    through_queue: int | None,
    in_flight: str | None,
    batch_max: int,
) -> None:
    """Images per second and ms per image for detection and removal, per backend; with
    --pipeline, seconds per photo for the whole pipeline, stage by stage; with --jpeg,
    what writing a JPEG result costs and changes."""
    if jpeg:  # no engines involved
        size = size or 1024
        files = photo_folder(photos, images) if photos else jpeg_bench.product_photos(images)
        if files:
            shots = jpeg_bench.read_photos(files, size)
        else:
            click.echo(
                "no product photos in ../shared/data/products (not in the repository): "
                "studio scenes instead; --photos DIR for your own",
                err=True,
            )
            shots = jpeg_bench.studio_photos(images, size)
        with click.progressbar(length=len(files) or images, label="photos", file=sys.stderr) as bar:
            jpeg_rows = jpeg_bench.bench_jpeg(shots, progress=bar.update)
        click.echo(jpeg_bench.format_jpeg_table(jpeg_rows))
        return

    if through_queue:
        _bench_through_queue(through_queue, backends, size or 1024, photos)
        return
    if not backends:
        backends = ("torch", "onnxruntime") + (("tensorrt",) if trt_backend.tensorrt_status()[0] else ())
    if pipeline:
        size = size or 1024
        uploads = _uploads(images, size, photos)
        if in_flight:
            try:
                jobs = [int(k) for k in in_flight.split(",") if k.strip()]
            except ValueError:
                raise click.BadParameter(
                    "a comma-separated list of numbers", param_hint="--in-flight"
                ) from None
            click.echo(
                pipeline_bench.format_in_flight_table(
                    [
                        row
                        for backend in backends
                        for row in pipeline_bench.bench_in_flight(
                            uploads, backend, jobs, batch_max, get_settings().batch_wait_ms, device=device
                        )
                    ]
                )
            )
            return
        click.echo(
            pipeline_bench.format_pipeline_table(
                [
                    pipeline_bench.bench_pipeline(
                        uploads, backend, flip, device=device, warmup=min(warmup, 1)
                    )
                    for backend in backends
                    for flip in (True, False)
                ]
            )
        )
        return
    size = size or 512
    rows: list[bench.BenchRow] = []
    for backend in backends:
        for k in _kinds(kind):
            rows.append(
                bench.bench_one(
                    backend,
                    k,
                    batch,
                    size,
                    device=device,
                    precision=precision,
                    warmup=warmup,
                    seconds=seconds,
                )
            )
    click.echo(bench.format_table(rows))


def _uploads(images: int, size: int, photos: Path | None) -> list[bytes]:
    if photos:
        return pipeline_bench.photo_uploads(photo_folder(photos, images), size)
    data_dir, studio_only = synthetic_photos(None, "--photos DIR to bench your own")
    return pipeline_bench.bench_images(images, size, data_dir=data_dir, studio_only=studio_only)


def _bench_through_queue(n: int, backends: tuple[str, ...], size: int, photos: Path | None) -> None:
    settings = get_settings()
    if len(backends) > 1:
        raise click.ClickException("--through-queue takes one --backend (default: the settings')")
    if backends:
        settings = settings.replace(backend=backends[0])
    if settings.embedded:
        raise click.ClickException(
            "--through-queue needs the service: set CLEARMARK_BROKER_URL and CLEARMARK_DATABASE_URL"
        )
    problems = preflight.worker_problems(settings)
    if problems:
        raise click.ClickException("; ".join(problems))
    log_path = settings.data_dir / "bench-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    click.echo(f"{preflight.describe(settings)}\nbench worker log: {log_path}", err=True)
    result = queue_bench.bench_through_queue(_uploads(n, size, photos), settings, log_path)
    click.echo(result.render())
