"""Throughput of each backend on each model: warm-up, then timed runs of one batch shape
of watermarked studio shots (`sample_batch`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from clearmark.engine_build.base import BackendUnavailable, load_engine
from clearmark.models.networks import remover_input, to_chw
from clearmark.models.scenes import studio_scene
from clearmark.models.synth import watermark_image


@dataclass
class BenchRow:
    backend: str
    kind: str
    batch: int
    size: int
    images_per_s: float = 0.0
    ms_per_image: float = 0.0
    runs: int = 0
    key: str = ""
    error: str = ""


def sample_batch(kind: str, batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A float32 input batch for `kind` (detector: N x 3, remover: N x 7 x H x W): studio
    shots (models.scenes) watermarked by the training synthesiser (models.synth), the
    remover's with their marks as its mask. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(batch):
        clean, _ = studio_scene(rng, height, width, max(height, width))
        marked, mask = watermark_image(clean, rng, quality=None)
        items.append(to_chw(marked) if kind == "detector" else remover_input(marked, mask.astype(np.float32)))
    return np.ascontiguousarray(np.stack(items), dtype=np.float32)


def round_up(px: int, stride: int = 16) -> int:
    return max(stride, -(-px // stride) * stride)


def bench_one(
    backend: str,
    kind: str,
    batch: int,
    size: int,
    device: str | None = None,
    precision: str | None = None,
    warmup: int = 2,
    seconds: float = 3.0,
    min_runs: int = 3,
) -> BenchRow:
    size = round_up(size)
    row = BenchRow(backend, kind, batch, size)
    try:
        engine = load_engine(kind, backend=backend, device=device, precision=precision)
    except (BackendUnavailable, ImportError) as exc:
        row.error = str(exc)
        return row
    row.key = engine.key
    row.backend = engine.backend  # "auto" shows what it resolved to
    x = sample_batch(kind, batch, size, size, seed=7)
    for _ in range(warmup):
        engine.run(x)
    runs, start = 0, time.perf_counter()
    while True:
        engine.run(x)
        runs += 1
        elapsed = time.perf_counter() - start
        if runs >= min_runs and elapsed >= seconds:
            break
    row.runs = runs
    row.images_per_s = batch * runs / elapsed
    row.ms_per_image = 1000.0 * elapsed / (batch * runs)
    return row


def format_table(rows: list[BenchRow]) -> str:
    head = ("backend", "model", "batch", "size", "images/s", "ms/image", "runs", "engine key")
    lines = [head]
    for r in rows:
        if r.error:
            lines.append(
                (r.backend, r.kind, str(r.batch), str(r.size), "-", "-", "-", f"unavailable: {r.error}")
            )
        else:
            lines.append(
                (
                    r.backend,
                    r.kind,
                    str(r.batch),
                    str(r.size),
                    f"{r.images_per_s:.2f}",
                    f"{r.ms_per_image:.1f}",
                    str(r.runs),
                    r.key,
                )
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    out = []
    for j, line in enumerate(lines):
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells + [line[-1]]))
        if j == 0:
            out.append("  ".join("-" * w for w in widths) + "  " + "-" * len(head[-1]))
    return "\n".join(out)
