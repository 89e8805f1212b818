"""`clearmark engines ...` (ONNX export, TensorRT engines) and `clearmark bench`."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import onnxruntime as ort
import torch

from clearmark.engine_build.base import (
    CPU_AUTO_BACKEND,
    BackendUnavailable,
    gpu_usable,
    load_engine,
    resolve_device,
)
from clearmark.engine_build.bench import BenchRow, bench_one, format_table
from clearmark.engine_build.onnx_export import ONNX_OPSET, export_onnx, stale_onnx
from clearmark.engine_build.trt_backend import tensorrt_status
from clearmark.engine_build.trt_cache import stale_engines
from clearmark.errors import EngineUnavailable
from clearmark.models.weights import KINDS, weights_sha256
from clearmark.pipeline.process import Engines
from clearmark.settings import get_settings
from clearmark.workers.jpeg_bench import bench_jpeg, format_jpeg_table, photo_files
from clearmark.workers.pipeline_bench import bench_images, bench_pipeline, format_pipeline_table
from clearmark.workers.preflight import CANNOT_LOAD

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
        path = export_onnx(k, precision, force=force)
        click.echo(f"{k}: {path} (opset {ONNX_OPSET}, {precision}, checked)")


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
            engine = load_engine(
                k, settings.backend, settings.device, precision, settings, build=True, force=force
            )
        except BackendUnavailable as exc:
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
    stale = stale_onnx(engine_dir) + stale_engines(engine_dir, {k: weights_sha256(k) for k in KINDS})
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
        engines = Engines.load(settings, build=build)
    except Exception as exc:  # noqa: BLE001 - whatever the backend raised, said in one line
        raise click.ClickException(f"{CANNOT_LOAD}: {EngineUnavailable.because(exc).message}") from None
    click.echo(engines.version)


@engines_group.command("info")
def info_command() -> None:
    """Which backends are usable here and what `auto` picks."""
    settings = get_settings()
    ok, why = tensorrt_status()
    click.echo(f"tensorrt:    {'yes' if ok else 'no'} ({why})")
    click.echo(f"onnxruntime: {ort.__version__} providers {ort.get_available_providers()}")
    click.echo(f"torch:       {torch.__version__} cuda={torch.cuda.is_available()}")
    usable, reason = gpu_usable()
    click.echo(f"gpu:         {'yes' if usable else 'no'} ({reason})")
    click.echo(
        f"settings:    backend={settings.backend} device={settings.device} "
        f"-> {resolve_device(None)}; threads={settings.threads}; "
        f"engine_dir={settings.engine_dir}"
    )
    click.echo(f"auto on CPU: {CPU_AUTO_BACKEND}")


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
    help="--jpeg: a folder of photos (default: the dev split of ../shared/data/products).",
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
) -> None:
    """Images per second and ms per image for detection and removal, per backend; with
    --pipeline, seconds per photo for the whole pipeline, stage by stage; with --jpeg,
    what writing a JPEG result costs and changes."""
    if jpeg:  # no engines involved
        files = photo_files(photos, images)
        with click.progressbar(length=len(files), label="photos", file=sys.stderr) as bar:
            jpeg_rows = bench_jpeg(files, size or 1024, progress=bar.update)
        click.echo(format_jpeg_table(jpeg_rows))
        return

    if not backends:
        backends = ("torch", "onnxruntime") + (("tensorrt",) if tensorrt_status()[0] else ())
    if pipeline:
        uploads = bench_images(images, size or 1024)
        click.echo(
            format_pipeline_table(
                [
                    bench_pipeline(uploads, backend, flip, device=device, warmup=min(warmup, 1))
                    for backend in backends
                    for flip in (True, False)
                ]
            )
        )
        return
    size = size or 512
    rows: list[BenchRow] = []
    for backend in backends:
        for k in _kinds(kind):
            rows.append(
                bench_one(
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
    click.echo(format_table(rows))
