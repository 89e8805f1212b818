"""`clearmark bench --jpeg`: what writing a JPEG result costs, exact path against full re-encode.

Each photo (long side at most `size`: the real product photos' dev split where they are,
else procedural studio scenes, or a folder of the user's own) gets a semi-transparent
text mark in a corner or in the centre and is saved as a JPEG upload (quality 90, 4:2:0).
The "restoration" is perfect by construction: the clean photo inside the mark's dilated
box, the decoded upload everywhere else. So the numbers measure the encoder alone, not
the models: how many MCUs are re-encoded, how far pixels outside the mask and outside the
changed MCUs move from the decoded upload, how close the mark's pixels come to the clean
photo, the file size against the upload, and the encode time.
"""

from __future__ import annotations

import io
import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, JpegImagePlugin

from clearmark.models import scenes
from clearmark.models.products import load_photo, split_paths
from clearmark.pipeline.imaging import decode_image, encode_image
from clearmark.pipeline.jpeg_exact import reach_of_change
from clearmark.settings import get_settings

PLACES = ("corner", "centre")
MCU_BY_SAMPLING = {0: (8, 8), 1: (8, 16), 2: (16, 16)}  # Pillow sampling -> (h, w)


@dataclass
class JpegCase:
    upload: bytes
    clean: np.ndarray  # the photo without the mark (the perfect restoration)
    box: tuple[int, int, int, int]


@dataclass
class JpegBenchRow:
    place: str
    path: str  # "exact" or "full"
    blocks_share: list[float] = field(default_factory=list)
    psnr_outside_mask: list[float] = field(default_factory=list)
    moved_outside_blocks: list[int] = field(default_factory=list)
    psnr_inside_mark: list[float] = field(default_factory=list)
    size_change: list[float] = field(default_factory=list)
    encode_ms: list[float] = field(default_factory=list)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for name in ("DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def make_case(photo: np.ndarray, place: str, quality: int = 90) -> JpegCase:
    """`photo` with a white 55%-opacity text mark in the bottom-right corner or the centre."""
    h, w = photo.shape[:2]
    font = _font(max(12, round(max(h, w) * 0.06)))
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    text = "© SAMPLE SHOP"
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    tw, th = x1 - x0, y1 - y0
    if place == "corner":
        at = (w - tw - round(0.03 * w) - x0, h - th - round(0.03 * h) - y0)
    else:
        at = ((w - tw) // 2 - x0, (h - th) // 2 - y0)
    draw.text(at, text, fill=255, font=font)
    alpha = np.asarray(layer, np.float32)[..., None] / 255.0 * 0.55
    marked = np.clip(photo * (1 - alpha) + 255.0 * alpha + 0.5, 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(alpha[..., 0] > 0)
    buf = io.BytesIO()
    Image.fromarray(marked).save(buf, "JPEG", quality=quality, subsampling=2)
    return JpegCase(
        buf.getvalue(), photo, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    )


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()) if a.size else 0.0
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def measure(
    case: JpegCase, place: str, rows: dict[tuple[str, str], JpegBenchRow], dilate_px: int = 6
) -> None:
    dec = decode_image(case.upload)
    x0, y0, x1, y1 = case.box
    changed = np.zeros(dec.rgb.shape[:2], bool)
    changed[max(0, y0 - dilate_px) : y1 + dilate_px, max(0, x0 - dilate_px) : x1 + dilate_px] = True
    restored = dec.rgb.copy()
    restored[changed] = case.clean[changed]
    with Image.open(io.BytesIO(case.upload)) as im:
        mcu = MCU_BY_SAMPLING[JpegImagePlugin.get_sampling(im)]
    blocks = reach_of_change(changed, mcu)
    for path in ("exact", "full"):
        settings = get_settings().replace(jpeg_exact=path == "exact")
        t0 = time.perf_counter()
        enc = encode_image(dec, restored, changed, settings)
        ms = (time.perf_counter() - t0) * 1000
        with Image.open(io.BytesIO(enc.data)) as im:
            out = np.asarray(im.convert("RGB"))
        row = rows.setdefault((place, path), JpegBenchRow(place, path))
        total = enc.details.get("jpeg_blocks_total")
        row.blocks_share.append(enc.details["jpeg_blocks_changed"] / total if total else 1.0)
        row.psnr_outside_mask.append(_psnr(out[~changed], dec.rgb[~changed]))
        row.moved_outside_blocks.append(int((out[~blocks] != dec.rgb[~blocks]).any(axis=1).sum()))
        row.psnr_inside_mark.append(_psnr(out[changed], case.clean[changed]))
        row.size_change.append(len(enc.data) / len(case.upload) - 1)
        row.encode_ms.append(ms)


def product_photos(n: int) -> list[Path]:
    """The first `n` of the real product photos' dev split; none where they are not (a
    clone has no ../shared/data)."""
    try:
        return list(split_paths(str(scenes.DEFAULT_DATA), "dev"))[:n]
    except FileNotFoundError:
        return []


def read_photos(files: Iterable[Path], size: int) -> Iterator[np.ndarray]:
    for path in files:
        yield load_photo(path, max_side=size)


def studio_photos(n: int, size: int) -> Iterator[np.ndarray]:
    """`n` procedural studio scenes (`models.scenes`), `size` x 3/4 `size` px: photos the
    project makes itself, the same every run."""
    for i in range(n):
        yield scenes.studio_scene(np.random.default_rng([7, i]), size * 3 // 4, size, size)[0]


def bench_jpeg(
    photos: Iterable[np.ndarray], progress: Callable[[int], object] | None = None
) -> list[JpegBenchRow]:
    rows: dict[tuple[str, str], JpegBenchRow] = {}
    for photo in photos:
        for place in PLACES:
            measure(make_case(photo, place), place, rows)
        if progress:
            progress(1)
    return list(rows.values())


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def format_jpeg_table(rows: list[JpegBenchRow]) -> str:
    def db(v: float) -> str:
        return "inf" if math.isinf(v) else f"{v:.2f}"

    lines = [
        f"{'mark':<7} {'path':<6} {'n':>3} {'MCUs re-encoded':>16} {'PSNR outside mask':>18} "
        f"{'px moved outside MCUs':>22} {'PSNR in mark':>13} {'size vs upload':>15} "
        f"{'encode ms':>10}"
    ]
    for r in rows:
        lines.append(
            f"{r.place:<7} {r.path:<6} {len(r.encode_ms):>3} {_median(r.blocks_share):>15.2%} "
            f"{db(_median(r.psnr_outside_mask)):>18} {sum(r.moved_outside_blocks):>22} "
            f"{db(_median(r.psnr_inside_mark)):>13} {_median(r.size_change):>+14.1%} "
            f"{statistics.mean(r.encode_ms):>10.1f}"
        )
    lines.append(
        "(medians over photos; px moved: total over photos, outside the changed MCUs "
        "grown by 1 px; encode ms: mean)"
    )
    return "\n".join(lines)
