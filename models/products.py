"""Real product photos (`<data>/products/`, see ../shared/data/README.md): the train/dev
split by product group, and watermarked samples made from them.

The split comes from `products/split.csv` (file, split, group). `check_split` refuses a
table in which one product group has files on both sides; every reader goes through it.
Marks are composited at the photo's own resolution (what the pipeline sees: up to 2,000 px),
drawn from a `models.styles` family, and both the clean photo and the composite are JPEG
encoded at one quality, as in `models.synth`.
"""

from __future__ import annotations

import csv
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from clearmark.models.styles import FAMILIES
from clearmark.models.synth import blend, jpeg, render_watermark, visible_part

SPLITS = ("train", "dev")
MAX_SIDE = 2000


@dataclass(frozen=True)
class ProductPhoto:
    file: str  # path relative to products/
    split: str
    group: str


def check_split(photos: list[ProductPhoto]) -> None:
    """Raise ValueError when a product group has files in more than one split."""
    sides: dict[str, set[str]] = {}
    for p in photos:
        if p.split not in SPLITS:
            raise ValueError(f"{p.file}: unknown split {p.split!r} (expected {SPLITS})")
        sides.setdefault(p.group, set()).add(p.split)
    straddling = sorted(g for g, s in sides.items() if len(s) > 1)
    if straddling:
        raise ValueError(
            f"product groups on both sides of the split: {', '.join(straddling[:5])}"
            + (f" and {len(straddling) - 5} more" if len(straddling) > 5 else "")
        )


def read_split(data_dir: Path | str) -> list[ProductPhoto]:
    """Every row of products/split.csv, checked (`check_split`)."""
    path = Path(data_dir) / "products" / "split.csv"
    if not path.exists():
        raise FileNotFoundError(
            f"no {path}: the real product photos live in ../shared/data/products "
            "(pass --data to point elsewhere)"
        )
    with open(path, newline="") as f:
        photos = [ProductPhoto(r["file"], r["split"], r["group"]) for r in csv.DictReader(f)]
    check_split(photos)
    return photos


@lru_cache(maxsize=8)
def split_paths(data_dir: str, split: str) -> tuple[Path, ...]:
    root = Path(data_dir) / "products"
    return tuple(root / p.file for p in read_split(data_dir) if p.split == split)


def load_photo(path: Path, max_side: int = MAX_SIDE) -> np.ndarray:
    """uint8 RGB; a cut-out's transparency is flattened onto white (as a shop shows it)."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise OSError(f"cannot read {path}")
    if raw.ndim == 2:
        raw = cv2.cvtColor(raw, cv2.COLOR_GRAY2BGR)
    if raw.shape[2] == 4:
        a = raw[..., 3:4].astype(np.float32) / 255.0
        raw = np.clip(raw[..., :3] * a + 255.0 * (1 - a) + 0.5, 0, 255).astype(np.uint8)
    rgb = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    scale = max_side / max(rgb.shape[:2])
    if scale < 1:
        rgb = cv2.resize(
            rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA
        )
    return rgb


class PhotoCache:
    """The last `size` decoded photos (training draws from ~1,000 photos of ~5 MB each)."""

    def __init__(self, size: int = 48):
        self.size = size
        self._items: OrderedDict[Path, np.ndarray] = OrderedDict()

    def get(self, path: Path) -> np.ndarray:
        if path in self._items:
            self._items.move_to_end(path)
            return self._items[path]
        img = load_photo(path)
        self._items[path] = img
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return img


@dataclass
class MarkedPhoto:
    clean: np.ndarray  # uint8 H x W x 3, JPEG'd at `quality`
    composite: np.ndarray  # uint8 H x W x 3, the same with the mark, JPEG'd at `quality`
    alpha: np.ndarray  # float32 H x W opacity of the visible mark
    kinds: list[str] = field(default_factory=list)
    quality: int = 90
    jpeg_bytes: bytes = b""  # the composite's JPEG file (what a storefront would upload)

    @property
    def mask(self) -> np.ndarray:
        return self.alpha > 0


def draw_kinds(rng: np.random.Generator, family: str) -> list[str]:
    """One kind of mark (three times in four) or two, uniformly from the family's kinds."""
    _, kinds, _ = FAMILIES[family]
    n = 1 if rng.random() < 0.75 else 2
    return [str(k) for k in rng.choice(kinds, size=n, replace=False)]


def mark_photo(
    rng: np.random.Generator,
    photo: np.ndarray,
    family: str = "train",
    kinds: list[str] | None = None,
    long_side: int | None = None,
    quality: int | None = None,
) -> MarkedPhoto:
    """`photo` (or a window of a photo whose long side is `long_side`) with a mark of
    `family`; `kinds=[]` draws none (a clean negative, JPEG'd all the same)."""
    h, w = photo.shape[:2]
    pal, _, extra = FAMILIES[family]
    kinds = draw_kinds(rng, family) if kinds is None else kinds
    quality = int(quality or rng.integers(75, 98))
    if not kinds:
        data, clean = _jpeg_file(photo, quality)
        return MarkedPhoto(clean, clean, np.zeros((h, w), np.float32), [], quality, data)
    alpha, premult, labels = render_watermark(
        rng, h, w, long_side or max(h, w), kinds, photo.mean() / 255, pal, extra
    )
    alpha, premult = visible_part(photo, alpha, premult)
    data, composite = _jpeg_file(blend(photo, alpha, premult), quality)
    return MarkedPhoto(jpeg(photo, quality), composite, alpha, labels, quality, data)


def _jpeg_file(rgb: np.ndarray, quality: int) -> tuple[bytes, np.ndarray]:
    """(JPEG file at `quality`, its decoded pixels): the same pixels `synth.jpeg` gives."""
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    assert ok
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    assert decoded is not None  # OpenCV reads back the file it has just written
    return buf.tobytes(), cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def structured_window(
    rng: np.random.Generator, photo: np.ndarray, size: int, tries: int = 3
) -> tuple[int, int]:
    """Top-left of a `size` window: the one with most edges among `tries` random ones,
    so negatives show faces, straps, seams and print rather than empty backdrop."""
    h, w = photo.shape[:2]
    best, best_score = (0, 0), -1.0
    for _ in range(tries):
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        win = cv2.cvtColor(photo[y : y + size : 4, x : x + size : 4], cv2.COLOR_RGB2GRAY)
        score = float(np.abs(np.diff(win.astype(np.int16), axis=1)).mean())
        if score > best_score:
            best, best_score = (y, x), score
    return best
