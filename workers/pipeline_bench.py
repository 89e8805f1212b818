"""`clearmark bench --pipeline`: seconds per image for the whole pipeline, stage by stage.

`clearmark bench` alone times the engines on one batch shape. What a catalogue run costs
also includes decoding, resizing for the detector, the mirrored pass, the Telea prefill
of every crop, compositing, the residual check and encoding: `process_image` on real
files does all of that. The images are the evaluation set's watermarked ones (held-out
photos and studio scenes, or studio scenes alone where there are no photos; every
watermark kind, `models.evaluate.eval_set`), or the user's own photos, resized to `size` px
on the long side and saved as JPEG quality 90, as a storefront would upload them.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from clearmark.engine_build import BackendUnavailable
from clearmark.engine_build.batching import Batcher
from clearmark.models.evaluate import eval_set
from clearmark.models.products import load_photo
from clearmark.pipeline.process import Engines, process_image
from clearmark.pipeline.stages import STAGES
from clearmark.settings import get_settings


@dataclass
class PipelineBenchRow:
    backend: str
    flip: bool
    size: int
    images: int = 0
    total_ms: list[float] = field(default_factory=list)
    stage_ms: dict[str, float] = field(default_factory=dict)  # mean per stage
    statuses: dict[str, int] = field(default_factory=dict)
    error: str = ""


def bench_images(
    n: int, size: int, seed: int = 0, data_dir: Path | None = None, studio_only: bool = False
) -> list[bytes]:
    """`n` watermarked catalogue photos of the evaluation set, long side `size`, as JPEG
    files (`studio_only`: every background a studio scene)."""
    return as_uploads((s.composite for _, _, s in eval_set(n, seed, data_dir, ("wm",), studio_only)), size)


def photo_uploads(files: Iterable[Path], size: int) -> list[bytes]:
    """The user's photos (`--photos`), long side `size`, as JPEG files."""
    return as_uploads((load_photo(path) for path in files), size)


def as_uploads(photos: Iterable[np.ndarray], size: int) -> list[bytes]:
    """Each RGB photo resized to long side `size` and saved as JPEG quality 90."""
    files: list[bytes] = []
    for rgb in photos:
        h, w = rgb.shape[:2]
        scale = size / max(h, w)
        rgb = cv2.resize(
            rgb,
            (round(w * scale), round(h * scale)),
            interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
        )
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=90)
        files.append(buf.getvalue())
    return files


def bench_pipeline(
    files: list[bytes], backend: str, flip: bool, device: str | None = None, warmup: int = 1
) -> PipelineBenchRow:
    """Run `process_image` on every file (after `warmup` untimed runs of the first).
    `flip` turns both mirrored passes on or off (`detect_flip`, `remove_flip`)."""
    settings = get_settings().replace(backend=backend, detect_flip=flip, remove_flip=flip)
    if device:
        settings = settings.replace(device=device)
    size = max(Image.open(io.BytesIO(files[0])).size) if files else 0
    row = PipelineBenchRow(backend, flip, size)
    try:
        engines = Engines.load(settings)
    except (BackendUnavailable, ImportError) as exc:
        row.error = str(exc)
        return row
    row.backend = engines.detector.backend
    for _ in range(warmup):
        process_image(files[0], engines, settings)
    sums = dict.fromkeys(STAGES, 0.0)
    for data in files:
        t0 = time.perf_counter()
        result = process_image(data, engines, settings)
        row.total_ms.append((time.perf_counter() - t0) * 1000.0)
        for stage in STAGES:
            sums[stage] += result.metrics[f"ms_{stage}"]
        row.statuses[result.status] = row.statuses.get(result.status, 0) + 1
    row.images = len(files)
    row.stage_ms = {k: v / max(1, len(files)) for k, v in sums.items()}
    return row


def format_pipeline_table(rows: list[PipelineBenchRow]) -> str:
    head = (
        f"{'backend':<12} {'flip':<4} {'size':>5} {'images':>6} {'mean s':>7} {'median s':>8} "
        + " ".join(f"{s + ' ms':>11}" for s in STAGES)
        + "  bound by        statuses"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.error:
            lines.append(f"{r.backend:<12} {'on' if r.flip else 'off':<4} unavailable: {r.error}")
            continue
        stages = " ".join(f"{r.stage_ms[s]:11.0f}" for s in STAGES)
        lines.append(
            f"{r.backend:<12} {'on' if r.flip else 'off':<4} {r.size:>5} {r.images:>6} "
            f"{statistics.mean(r.total_ms) / 1000:7.2f} "
            f"{statistics.median(r.total_ms) / 1000:8.2f} {stages}  {bound_by(r):<15} "
            + ", ".join(f"{k} {v}" for k, v in sorted(r.statuses.items()))
        )
    return "\n".join(lines)


def bound_by(row: PipelineBenchRow) -> str:
    """The stage that takes the most of an image's time, and its share: what bounds the
    throughput (detect and remove are the engines; the rest runs on the CPU)."""
    stage = max(row.stage_ms, key=lambda k: row.stage_ms[k])
    total = sum(row.stage_ms.values())
    return f"{stage} {100 * row.stage_ms[stage] / total:.0f}%" if total else "-"


@dataclass
class InFlightRow:
    backend: str
    jobs: int
    batch_max: int  # 1: unbatched
    images: int = 0
    seconds: float = 0.0
    calls_per_run: float = 1.0  # the detector's: jobs' calls per engine run

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def bench_in_flight(
    files: list[bytes],
    backend: str,
    jobs: Sequence[int],
    batch_max: int,
    wait_ms: float,
    device: str | None = None,
) -> list[InFlightRow]:
    """Every file through `process_image` with `k` jobs in flight (threads sharing one set
    of engines), for each k in `jobs`: unbatched, then batched (up to `batch_max` images
    per engine call), back to back, after one untimed photo each."""
    rows = []
    for k in jobs:
        for top in (1, batch_max):
            settings = get_settings().replace(
                backend=backend, jobs_in_flight=k, batch_max=top, batch_wait_ms=wait_ms
            )
            if device:
                settings = settings.replace(device=device)
            engines = Engines.load(settings)
            process_image(files[0], engines, settings)
            row = InFlightRow(engines.detector.backend, k, top, len(files))
            start = time.perf_counter()
            with ThreadPoolExecutor(k) as pool:
                list(pool.map(lambda data: process_image(data, engines, settings), files))
            row.seconds = time.perf_counter() - start
            if isinstance(engines.detector, Batcher):
                sizes = engines.detector.sizes
                row.calls_per_run = sum(n * c for n, c in sizes.items()) / max(1, sum(sizes.values()))
            rows.append(row)
    return rows


def format_in_flight_table(rows: list[InFlightRow]) -> str:
    lines = [
        f"{'backend':<12} {'in flight':>9} {'batch max':>9} {'images':>6} {'seconds':>8} {'images/s':>8} "
        f"{'detector calls/run':>18}",
    ]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(
            f"{r.backend:<12} {r.jobs:>9} {r.batch_max if r.batch_max > 1 else 'off':>9} {r.images:>6} "
            f"{r.seconds:8.1f} {r.images_per_s:8.3f} {r.calls_per_run:18.2f}"
        )
    return "\n".join(lines)
