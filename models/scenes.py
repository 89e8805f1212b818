"""Clean backgrounds for the synthesizer: real photos and procedural catalogue shots.

Every renderer draws an `h x w` window of a conceptual image whose long side is
`long_side` pixels. Sizes of objects and printed text scale with `long_side`, so a training
crop looks like a piece of a catalogue photo at that resolution, and `h, w == full size`
renders a whole photo. Procedural scenes also return a mask of the product's own printed
text and logos: those pixels belong to the photo and are negatives for the detector.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"
FONT_DIRS = [
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/truetype/wqy"),
    Path("/usr/share/fonts/truetype/liberation2"),
    Path("/usr/share/fonts/opentype/urw-base35"),
]
LATIN_FONTS = [
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansCondensed-Bold.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSans-ExtraLight.ttf",
]
CJK_FONTS = ["wqy-zenhei.ttc"]
EVAL_EVERY = 8  # one photo in 8 (by filename hash) is held out for evaluation

BRANDS = [
    "Nordic Farm",
    "Alpen",
    "GreenLeaf",
    "Sunny",
    "Oat Co",
    "PURE",
    "Milko",
    "Fresh",
    "Bio",
    "Vita",
    "Golden",
    "Mountain",
    "Casa",
    "Harvest",
    "Urban",
    "Lumo",
]
WORDS = [
    "ORGANIC",
    "500 g",
    "1 L",
    "Whole Milk",
    "Natural",
    "Since 1952",
    "Low Fat",
    "Premium",
    "100% Cotton",
    "Made in EU",
    "Vegan",
    "Original",
    "Extra",
    "Classic",
]


@lru_cache(maxsize=256)
def font(name: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for d in FONT_DIRS:
        if (d / name).exists():
            return ImageFont.truetype(str(d / name), max(6, int(size)))
    return ImageFont.load_default(size=max(6, int(size)))


def have_cjk_font() -> bool:
    return any((d / n).exists() for d in FONT_DIRS for n in CJK_FONTS)


def _is_eval(name: str) -> bool:
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % EVAL_EVERY == 0


@lru_cache(maxsize=8)
def photo_list(data_dir: str, subset: str, split: str) -> tuple[Path, ...]:
    """Sorted photo paths of grocery/<subset> in the deterministic train/eval split."""
    root = Path(data_dir) / "grocery" / subset
    paths = sorted(p for p in root.glob("*.jpg"))
    return tuple(p for p in paths if _is_eval(p.name) == (split == "eval"))


def has_grocery_photos(data_dir: Path | str, split: str) -> bool:
    """Whether `data_dir` holds the grocery photos of both subsets in `split` that
    `photo_window` draws from (a clone has no ../shared/data)."""
    return all(photo_list(str(data_dir), subset, split) for subset in ("iconic", "natural"))


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def photo_window(
    rng: np.random.Generator, h: int, w: int, long_side: int, split: str, data_dir: Path | str | None
) -> tuple[np.ndarray, str]:
    """A window of a grocery photo upscaled so the photo's long side is ~long_side."""
    subset = "iconic" if rng.random() < 0.4 else "natural"
    paths = photo_list(str(data_dir or DEFAULT_DATA), subset, split)
    if not paths:
        raise FileNotFoundError(f"no photos in {data_dir or DEFAULT_DATA}/grocery/{subset}")
    src = read_rgb(paths[int(rng.integers(len(paths)))])
    if rng.random() < 0.5:
        src = src[:, ::-1]
    ph, pw = src.shape[:2]
    scale = long_side / max(ph, pw) * rng.uniform(1.0, 1.3)
    sh, sw = min(ph, h / scale), min(pw, w / scale)  # source window size
    y0, x0 = rng.uniform(0, ph - sh), rng.uniform(0, pw - sw)
    # Affine map from output pixels to the source window (sub-pixel accurate, one resample).
    m = np.array([[sw / w, 0, x0], [0, sh / h, y0]], np.float32)
    out = cv2.warpAffine(
        src, m, (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )
    return out, f"photo_{subset}"


def _light_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.55:
        return np.full(3, rng.uniform(232, 255))
    if rng.random() < 0.8:
        return rng.uniform(170, 250, 3)
    return rng.uniform(20, 120, 3)


def _studio_base(rng: np.random.Generator, h: int, w: int, long_side: int) -> np.ndarray:
    c0, c1 = _light_colour(rng), _light_colour(rng)
    if rng.random() < 0.5:
        c1 = np.clip(c0 + rng.normal(0, 12, 3), 0, 255)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    t = (np.cos(ang) * xx + np.sin(ang) * yy + rng.uniform(-1, 1) * long_side) / long_side
    t = np.clip(t * rng.uniform(0.3, 1.0) + 0.5, 0, 1)[..., None]
    img = c0 * (1 - t) + c1 * t
    if rng.random() < 0.25:  # fabric / paper texture
        period = rng.uniform(3, 10) * long_side / 1000
        weave = np.sin(xx / period) * np.sin(yy / period * rng.uniform(0.7, 1.3))
        img += (weave * rng.uniform(2, 8) + rng.normal(0, 2, (h, w)))[..., None]
    return img.astype(np.float32)


def _shade(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    return 1.0 - rng.uniform(0.05, 0.25) * (x * rng.uniform(-1, 1) + y * rng.uniform(0, 1)) ** 2


def _draw_label(
    rng: np.random.Generator,
    img: Image.Image,
    prod: Image.Image,
    box: tuple[int, int, int, int],
    long_side: int,
) -> None:
    """Print brand text, descriptors and sometimes a round logo inside `box` (x0,y0,x1,y1).

    Everything is clipped to `box`: printed text belongs to a surface (a label, a card).
    Text floating on the backdrop would look exactly like an overlaid mark, and a negative
    that is indistinguishable from a positive only teaches the detector to doubt itself."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    if bw < 8 or bh < 8:
        return
    label, label_prod = img.crop(box), prod.crop(box)
    d, dp = ImageDraw.Draw(label), ImageDraw.Draw(label_prod)
    ink = tuple(int(v) for v in (rng.uniform(0, 90, 3) if rng.random() < 0.6 else rng.uniform(0, 255, 3)))
    y = bh * rng.uniform(0.05, 0.2)
    lines = [BRANDS[int(rng.integers(len(BRANDS)))]] + [
        WORDS[int(rng.integers(len(WORDS)))] for _ in range(int(rng.integers(0, 3)))
    ]
    for i, text in enumerate(lines):
        size = long_side * (rng.uniform(0.03, 0.08) if i == 0 else rng.uniform(0.015, 0.035))
        size = min(size, bh * 0.45)
        f = font(LATIN_FONTS[int(rng.integers(len(LATIN_FONTS)))], size)
        x = bw * rng.uniform(0.05, 0.3)
        d.text((x, y), text, font=f, fill=ink)
        dp.text((x, y), text, font=f, fill=255)
        y += size * 1.3
    if rng.random() < 0.5:  # the product's own logo
        r = min(long_side * rng.uniform(0.02, 0.06), bw * 0.3, bh * 0.3)
        cx, cy = bw * rng.uniform(0.2, 0.8), min(y + r * 1.2, bh - r)
        col = tuple(int(v) for v in rng.uniform(0, 255, 3))
        for dd, fill in ((d, col), (dp, 255)):
            dd.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        d.text((cx - r * 0.4, cy - r * 0.6), "B", font=font("DejaVuSans-Bold.ttf", r), fill=ink)
    img.paste(label, box[:2])
    prod.paste(label_prod, box[:2])


def _card(
    rng: np.random.Generator, img: Image.Image, h: int, w: int, long_side: int
) -> tuple[int, int, int, int]:
    """A tag or card lying on the backdrop (its own colour and outline); returns its box."""
    cw, ch = long_side * rng.uniform(0.15, 0.45), long_side * rng.uniform(0.08, 0.3)
    x0, y0 = rng.uniform(-0.1, 1.0) * w, rng.uniform(-0.1, 1.0) * h
    box = (int(x0), int(y0), int(x0 + cw), int(y0 + ch))
    fill = tuple(int(v) for v in (rng.uniform(200, 255, 3) if rng.random() < 0.6 else rng.uniform(0, 255, 3)))
    edge = tuple(int(v * rng.uniform(0.6, 0.9)) for v in fill)
    ImageDraw.Draw(img).rounded_rectangle(
        box, radius=int(min(cw, ch) * 0.05), fill=fill, outline=edge, width=max(1, int(long_side * 0.002))
    )
    return box


def studio_scene(rng: np.random.Generator, h: int, w: int, long_side: int) -> tuple[np.ndarray, np.ndarray]:
    """A plain or gradient studio shot with shadowed objects and printed packaging text.

    Returns (uint8 RGB, bool mask of the product's printed text/logos)."""
    base = _studio_base(rng, h, w, long_side)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    prod = Image.new("L", (w, h), 0)
    shadow: np.ndarray = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(0, 4))):
        ow, oh = long_side * rng.uniform(0.15, 0.5), long_side * rng.uniform(0.15, 0.7)
        cx, cy = rng.uniform(-0.3, 1.3) * w, rng.uniform(-0.3, 1.3) * h
        box = (int(cx - ow / 2), int(cy - oh / 2), int(cx + ow / 2), int(cy + oh / 2))
        # soft contact shadow under the object
        sh_img = Image.new("L", (w, h), 0)
        ImageDraw.Draw(sh_img).ellipse(
            (box[0], box[3] - oh * 0.08, box[2] + ow * 0.1, box[3] + oh * 0.08), fill=255
        )
        shadow = np.maximum(shadow, np.asarray(sh_img, np.float32) / 255 * rng.uniform(0.2, 0.5))
        col = rng.uniform(0, 255, 3)
        shape = rng.choice(["box", "bottle", "round"])
        draw = ImageDraw.Draw(img)
        fill = tuple(int(v) for v in col)
        if shape == "round":
            draw.ellipse(box, fill=fill)
        else:
            radius = int(min(ow, oh) * (0.25 if shape == "bottle" else 0.03))
            draw.rounded_rectangle(box, radius=radius, fill=fill)
            if rng.random() < 0.8:
                lx0, lx1 = box[0] + int(ow * 0.08), box[2] - int(ow * 0.08)
                ly0 = box[1] + int(oh * rng.uniform(0.15, 0.35))
                ly1 = ly0 + int(oh * rng.uniform(0.3, 0.5))
                lab = tuple(
                    int(v)
                    for v in (rng.uniform(200, 255, 3) if rng.random() < 0.5 else rng.uniform(0, 255, 3))
                )
                draw.rectangle((lx0, ly0, lx1, ly1), fill=lab)
                _draw_label(rng, img, prod, (lx0, ly0, lx1, ly1), long_side)
    if rng.random() < 0.4:  # a printed tag or card on the backdrop
        _draw_label(rng, img, prod, _card(rng, img, h, w, long_side), long_side)
    out: np.ndarray = np.asarray(img, np.float32)
    sig = max(1.0, long_side * 0.01)
    shadow = cv2.GaussianBlur(shadow, (0, 0), sig)
    bg_only = np.all(np.abs(out - np.clip(base, 0, 255).astype(np.uint8)) < 1, axis=2)
    out *= (1 - shadow * bg_only)[..., None]
    out = out * _shade(rng, (h, w))[..., None] if rng.random() < 0.5 else out
    out += rng.normal(0, rng.uniform(0, 2.0), out.shape)  # sensor noise
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), np.asarray(prod) > 0


def render_background(
    rng: np.random.Generator,
    h: int,
    w: int,
    long_side: int,
    split: str = "train",
    data_dir: Path | str | None = None,
    source: str | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """(uint8 RGB, product-text mask, label). `source` forces "studio" or "photo"."""
    source = source or ("studio" if rng.random() < 0.55 else "photo")
    if source == "studio":
        img, prod = studio_scene(rng, h, w, long_side)
        return img, prod, "studio"
    img, label = photo_window(rng, h, w, long_side, split, data_dir)
    return img, np.zeros((h, w), bool), label


def add_streaks(rng: np.random.Generator, img: np.ndarray, long_side: int) -> np.ndarray:
    """`img` with 1-3 long straight lines across it (sometimes a parallel pair): the bright
    edge of a shelf or tray and the highlight along a rail or a glass, which are what the
    detector takes for a watermark's stroke in clean real photos. Training draws them into
    some backgrounds as negatives; they are part of the photo, never of the mark."""
    h, w = img.shape[:2]
    out: np.ndarray = img.astype(np.float32)
    scale = long_side / 1000
    for _ in range(int(rng.integers(1, 4))):
        angle = rng.uniform(0, np.pi)
        dx, dy = np.cos(angle) * 2 * (h + w), np.sin(angle) * 2 * (h + w)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        thick = max(1, int(round(rng.uniform(1, 5) * scale)))
        layer: np.ndarray = np.zeros((h, w), np.float32)
        for offset in [0.0, rng.uniform(4, 20) * scale] if rng.random() < 0.3 else [0.0]:
            ox, oy = -np.sin(angle) * offset, np.cos(angle) * offset
            cv2.line(
                layer,
                (int(cx - dx + ox), int(cy - dy + oy)),
                (int(cx + dx + ox), int(cy + dy + oy)),
                1.0,
                thick,
                cv2.LINE_AA,
            )
        layer = cv2.GaussianBlur(layer, (0, 0), rng.uniform(0.4, 1.5) * scale)[..., None]
        colour = rng.uniform(200, 255, 3) if rng.random() < 0.6 else rng.uniform(0, 70, 3)
        a = rng.uniform(0.35, 1.0) * layer
        out = out * (1 - a) + a * colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
