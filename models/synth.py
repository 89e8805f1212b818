"""Deterministic watermark synthesizer: `I = a*W + (1-a)*B`, then JPEG.

Public functions (all take a seeded `numpy.random.Generator`; same seed, same output):
- `make_sample(rng, h, w, long_side, ...) -> Sample`: a clean background window, a
  watermark over it, ground truth (opacity `alpha`, colour, binary `mask == alpha > 0`),
  of the mark's visible part only (`visible_part`).
- `render_watermark(rng, h, w, long_side, ...) -> (alpha, premultiplied colour, kinds)`.
- `watermark_image(rgb_uint8, rng, kinds=None, quality=None) -> (composite_uint8, mask_bool)`:
  watermark one given photo (for examples and pipeline tests).

JPEG: the composite is re-encoded at quality 70-98 and the *clean* image is encoded with the
same quality, so `clean` is what the seller's photo would be without the overlay; outside
the mask they differ only by the block effects of the mark itself.

A watermark is built from elements in premultiplied form (alpha, alpha*colour), stacked with
the "over" operator; that keeps rotation/blur of coloured strokes free of dark fringes and
makes the final `W = premult / alpha` exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np
from PIL import Image, ImageDraw

from clearmark.models.scenes import (
    CJK_FONTS,
    LATIN_FONTS,
    add_streaks,
    font,
    have_cjk_font,
    render_background,
)

KINDS = ("text", "tiled", "corner", "url", "logo", "cjk")
NAMES = [
    "ShopLine",
    "BestDeals",
    "mystore",
    "Lumi Studio",
    "PhotoMart",
    "Kaufhaus",
    "TopSeller",
    "Bazaar",
    "NovaShop",
    "Vendr",
    "PixelGoods",
    "Maison Lys",
    "Atelier 9",
    "QuickBuy",
]
MARK_WORDS = ["SAMPLE", "PREVIEW", "© {n}", "{n}", "DO NOT COPY", "{n} ™", "PROOF", "© 2024 {n}"]
CJK_WORDS = ["样品", "版权所有", "淘宝店铺", "水印", "正品保证", "图片仅供参考", "盗图必究", "旗舰店", "精品"]
MIN_ALPHA = 0.02  # opacity below this is invisible; it is zeroed so that mask == alpha > 0
# A mark pixel that moves no channel of its background by this many grey levels cannot be
# seen (a white logo over a white backdrop); `visible_part` takes it out of the mark. In the
# seed-0 eval set about 12% of the mask pixels were such, two images wholly so.
MIN_CHANGE = 2.0
Element = tuple[np.ndarray, np.ndarray]  # (alpha HxW, premultiplied colour HxWx3), float32


@dataclass(frozen=True)
class Palette:
    """The fonts and words marks are drawn with. `SYNTH` is what the synthetic set always
    used; `models.styles` defines the real-photo training palette and a held-out one whose
    fonts, names and phrases no training run sees."""

    latin_fonts: tuple[str, ...]
    cjk_fonts: tuple[str, ...]
    names: tuple[str, ...]
    words: tuple[str, ...]
    cjk_words: tuple[str, ...]
    badge_font: str = "DejaVuSans-Bold.ttf"


SYNTH = Palette(tuple(LATIN_FONTS), tuple(CJK_FONTS), tuple(NAMES), tuple(MARK_WORDS), tuple(CJK_WORDS))


@dataclass
class Sample:
    clean: np.ndarray  # uint8 HxWx3, JPEG-encoded at `quality` like the composite
    composite: np.ndarray  # uint8 HxWx3
    alpha: np.ndarray  # float32 HxW opacity in [0, 1]
    colour: np.ndarray  # float32 HxWx3 watermark colour W in [0, 1] (0 where alpha == 0)
    mask: np.ndarray  # bool HxW, alpha > 0
    product: np.ndarray  # bool HxW, the product's own printed text/logos (keep!)
    kinds: list[str] = field(default_factory=list)
    background: str = ""
    quality: int = 95

    def crop(self, y: int, x: int, size: int) -> Sample:
        """The `size` x `size` window at (y, x) of every per-pixel array."""
        win = (slice(y, y + size), slice(x, x + size))
        return replace(
            self,
            clean=self.clean[win],
            composite=self.composite[win],
            alpha=self.alpha[win],
            colour=self.colour[win],
            mask=self.mask[win],
            product=self.product[win],
        )


def _name(rng: np.random.Generator, pal: Palette = SYNTH) -> str:
    return pal.names[int(rng.integers(len(pal.names)))]


def _phrase(rng: np.random.Generator, kind: str, pal: Palette = SYNTH) -> str:
    n = _name(rng, pal)
    if kind == "url":
        slug = n.lower().replace(" ", "")
        forms = [f"www.{slug}.com", f"@{slug}", f"{slug}.shop", f"https://{slug}.de", f"IG: @{slug}_"]
        return forms[int(rng.integers(len(forms)))]
    if kind == "cjk":
        return pal.cjk_words[int(rng.integers(len(pal.cjk_words)))] + (" " + n if rng.random() < 0.3 else "")
    return pal.words[int(rng.integers(len(pal.words)))].format(n=n)


def _colour(rng: np.random.Generator, bg_mean: float) -> np.ndarray:
    r = rng.random()
    if r < 0.35:  # contrasting grey level: white marks on dark, dark marks on light
        v = rng.uniform(0.0, 0.25) if bg_mean > 0.5 else rng.uniform(0.8, 1.0)
        return np.full(3, v, np.float32)
    if r < 0.55:
        return np.full(3, rng.choice([0.0, 1.0]), np.float32)
    if r < 0.7:
        return np.full(3, rng.uniform(0, 1), np.float32)
    return rng.uniform(0, 1, 3).astype(np.float32)


def _text_masks(text: str, fnt, stroke: int) -> tuple[np.ndarray, np.ndarray]:
    """(fill, fill+stroke) coverage in [0, 1] of `text`, on a tight canvas."""
    x0, y0, x1, y1 = fnt.getbbox(text, stroke_width=stroke)
    pad = 2 + stroke
    size = (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad)
    outs = []
    for sw in (0, stroke):
        im = Image.new("L", size, 0)
        ImageDraw.Draw(im).text(
            (pad - x0, pad - y0), text, font=fnt, fill=255, stroke_width=sw, stroke_fill=255
        )
        outs.append(np.asarray(im, np.float32) / 255)
    return outs[0], outs[1]


def _over(top: Element, bottom: Element) -> Element:
    a, p = top
    return a + bottom[0] * (1 - a), p + bottom[1] * (1 - a)[..., None]


def _solid(cov: np.ndarray, colour: np.ndarray) -> Element:
    return cov, cov[..., None] * colour


def text_element(
    rng: np.random.Generator,
    text: str,
    size: float,
    colour: np.ndarray,
    cjk: bool = False,
    pal: Palette = SYNTH,
) -> tuple[Element, str]:
    """Text with a random style: plain, outlined (two colours or hollow) or shadowed."""
    names = pal.cjk_fonts if cjk else pal.latin_fonts
    fnt = font(names[int(rng.integers(len(names)))], size)
    style = rng.choice(["plain", "outline", "hollow", "shadow"], p=[0.5, 0.2, 0.1, 0.2])
    stroke = max(1, int(size * rng.uniform(0.04, 0.1))) if style in ("outline", "hollow") else 0
    fill, full = _text_masks(text, fnt, stroke)
    if style == "outline":
        other = 1.0 - colour if rng.random() < 0.7 else rng.uniform(0, 1, 3).astype(np.float32)
        elem = _over(_solid(fill, colour), _solid(np.clip(full - fill, 0, 1), other))
    elif style == "hollow":
        elem = _solid(np.clip(full - fill, 0, 1), colour)
    else:
        elem = _solid(fill, colour)
    if style == "shadow":
        off = max(1, int(size * rng.uniform(0.04, 0.1)))
        a = np.pad(fill, ((0, off), (0, off)))
        sh: np.ndarray = cv2.GaussianBlur(np.roll(a, (off, off), (0, 1)), (0, 0), max(0.5, off / 2))
        sh *= rng.uniform(0.4, 0.8)
        shadow_col = np.zeros(3, np.float32) if colour.mean() > 0.4 else np.ones(3, np.float32)
        top = (np.pad(elem[0], ((0, off), (0, off))), np.pad(elem[1], ((0, off), (0, off), (0, 0))))
        elem = _over(top, _solid(sh, shadow_col))
    return elem, str(style)


def logo_element(rng: np.random.Generator, size: float, colour: np.ndarray, pal: Palette = SYNTH) -> Element:
    """A badge or geometric emblem: ring/disc/rounded box/star with initials."""
    s = max(12, int(size))
    im = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(im)
    shape = rng.choice(["ring", "disc", "box", "star"])
    lw = max(1, int(s * rng.uniform(0.04, 0.1)))
    if shape == "ring":
        d.ellipse((lw, lw, s - lw, s - lw), outline=255, width=lw)
    elif shape == "disc":
        d.ellipse((0, 0, s - 1, s - 1), fill=255)
    elif shape == "box":
        d.rounded_rectangle((lw, lw, s - lw, s - lw), radius=s // 6, outline=255, width=lw)
    else:
        ang = np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, s / 2 - 1, s / 4.5)
        d.polygon([(s / 2 + r * np.cos(t), s / 2 + r * np.sin(t)) for r, t in zip(rad, ang)], fill=255)
    cov = np.asarray(im, np.float32) / 255
    initials = "".join(c for c in _name(rng, pal) if c.isupper())[:2] or "S"
    fill, _ = _text_masks(initials, font(pal.badge_font, s * 0.35), 0)
    fh, fw = fill.shape
    y0, x0 = max(0, (s - fh) // 2), max(0, (s - fw) // 2)
    fill = fill[: s - y0, : s - x0]
    if shape in ("disc", "star"):  # initials knocked out of the solid shape
        cov[y0 : y0 + fill.shape[0], x0 : x0 + fill.shape[1]] *= 1 - fill
    else:
        region = cov[y0 : y0 + fill.shape[0], x0 : x0 + fill.shape[1]]
        np.maximum(region, fill, out=region)
    return _solid(cov, colour)


def _transform(elem: Element, angle: float, blur: float) -> Element:
    a, p = elem
    h, w = a.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * sin + w * cos) + 2, int(h * cos + w * sin) + 2
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    a = cv2.warpAffine(a, m, (nw, nh), flags=cv2.INTER_LINEAR)
    p = cv2.warpAffine(p, m, (nw, nh), flags=cv2.INTER_LINEAR)
    if blur > 0.3:
        a, p = cv2.GaussianBlur(a, (0, 0), blur), cv2.GaussianBlur(p, (0, 0), blur)
    return a, p


def _paste(canvas: Element, elem: Element, x: int, y: int) -> None:
    """Composite `elem` over `canvas` in place with its top-left at (x, y); clips."""
    ca, cp = canvas
    a, p = elem
    h, w = ca.shape
    eh, ew = a.shape
    cx0, cy0, cx1, cy1 = max(0, x), max(0, y), min(w, x + ew), min(h, y + eh)
    if cx0 >= cx1 or cy0 >= cy1:
        return
    ea, ep = a[cy0 - y : cy1 - y, cx0 - x : cx1 - x], p[cy0 - y : cy1 - y, cx0 - x : cx1 - x]
    ca[cy0:cy1, cx0:cx1], cp[cy0:cy1, cx0:cx1] = _over((ea, ep), (ca[cy0:cy1, cx0:cx1], cp[cy0:cy1, cx0:cx1]))


def _place(rng: np.random.Generator, h: int, w: int, eh: int, ew: int, corner: bool) -> tuple[int, int]:
    if corner:
        mx, my = rng.uniform(0.01, 0.05) * w, rng.uniform(0.01, 0.05) * h
        x = mx if rng.random() < 0.5 else w - ew - mx
        y = my if rng.random() < 0.5 else h - eh - my
        return int(x), int(y)
    # anywhere, but at least a third of the element lands inside the canvas
    # (an element larger than the canvas then covers it)
    xs, ys = sorted((-ew / 3, w - 2 * ew / 3)), sorted((-eh / 3, h - 2 * eh / 3))
    return int(rng.uniform(xs[0], xs[1])), int(rng.uniform(ys[0], ys[1]))


def _tiled(
    rng: np.random.Generator, h: int, w: int, long_side: int, colour: np.ndarray, pal: Palette = SYNTH
) -> Element:
    size = long_side * rng.uniform(0.025, 0.07)
    elem, _ = text_element(
        rng,
        _phrase(rng, "url" if rng.random() < 0.3 else "text", pal),
        size,
        colour,
        cjk=have_cjk_font() and rng.random() < 0.15,
        pal=pal,
    )
    eh, ew = elem[0].shape
    diag = int(np.hypot(h, w)) + 2
    big = (np.zeros((diag, diag), np.float32), np.zeros((diag, diag, 3), np.float32))
    sx, sy = ew + size * rng.uniform(0.5, 3), eh + size * rng.uniform(1.5, 5)
    shift, ox, oy = rng.uniform(0, 1), rng.uniform(0, sx), rng.uniform(0, sy)
    for r, y in enumerate(np.arange(-oy, diag, sy)):
        for x in np.arange(-ox - (r * shift % 1) * sx, diag, sx):
            _paste(big, elem, int(x), int(y))
    a, p = _transform(big, rng.uniform(15, 45) * rng.choice([-1, 1]), 0)
    y0, x0 = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
    return a[y0 : y0 + h, x0 : x0 + w], p[y0 : y0 + h, x0 : x0 + w]


def render_watermark(
    rng: np.random.Generator,
    h: int,
    w: int,
    long_side: int,
    kinds: list[str] | None = None,
    bg_mean: float = 0.8,
    pal: Palette = SYNTH,
    extra: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Opacity `alpha` (HxW), premultiplied colour (HxWx3) and the kinds drawn. `extra`
    maps further kind names to element makers `(rng, long_side, colour, pal) -> Element`
    (`models.styles`' held-out kinds); they are placed like a logo."""
    if kinds is None:
        pool = [k for k in KINDS if k != "cjk" or have_cjk_font()]
        probs = np.array(
            [{"text": 3, "tiled": 2, "corner": 2, "url": 2, "logo": 2, "cjk": 1.5}[k] for k in pool]
        )
        n = 1 if rng.random() < 0.75 else 2
        kinds = [str(k) for k in rng.choice(pool, size=n, replace=False, p=probs / probs.sum())]
    canvas = (np.zeros((h, w), np.float32), np.zeros((h, w, 3), np.float32))
    labels = []
    for kind in kinds:
        colour = _colour(rng, bg_mean)
        opacity = rng.uniform(0.15, 1.0) if rng.random() < 0.8 else rng.uniform(0.7, 1.0)
        if kind == "tiled":
            elem, style = _tiled(rng, h, w, long_side, colour, pal), "plain"
            opacity = min(opacity, rng.uniform(0.15, 0.7))
            x = y = 0
        else:
            if extra and kind in extra:
                elem, style = extra[kind](rng, long_side, colour, pal), "logo"
            elif kind == "logo":
                elem, style = logo_element(rng, long_side * rng.uniform(0.05, 0.2), colour, pal), "logo"
            else:
                size = (
                    long_side
                    * {
                        "text": rng.uniform(0.03, 0.12),
                        "corner": rng.uniform(0.015, 0.04),
                        "url": rng.uniform(0.02, 0.06),
                        "cjk": rng.uniform(0.03, 0.1),
                    }[kind]
                )
                elem, style = text_element(
                    rng, _phrase(rng, kind, pal), size, colour, cjk=kind == "cjk", pal=pal
                )
            angle = rng.uniform(-35, 35) if rng.random() < 0.5 and kind != "corner" else 0.0
            blur = rng.uniform(0.3, 1.5) if rng.random() < 0.25 else 0.0
            elem = _transform(elem, angle, blur)
            corner = kind == "corner" or (
                kind in ("url", "logo", "badge", "icon", "sticker") and rng.random() < 0.5
            )
            x, y = _place(rng, h, w, elem[0].shape[0], elem[0].shape[1], corner)
        _paste(canvas, (elem[0] * opacity, elem[1] * opacity), x, y)
        labels.append(kind if style in ("plain", "logo") else f"{kind}+{style}")
    alpha, premult = canvas
    keep = alpha >= MIN_ALPHA
    return np.where(keep, alpha, 0), np.where(keep[..., None], premult, 0), labels


def visible_part(bg: np.ndarray, alpha: np.ndarray, premult: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, premult) of the mark less the pixels where it changes `bg` (uint8 RGB) by
    under MIN_CHANGE grey levels in every channel, so the ground truth marks only what the
    composite shows."""
    change = np.abs(premult * 255 - alpha[..., None] * bg.astype(np.float32)).max(axis=2)
    keep = change >= MIN_CHANGE
    return np.where(keep, alpha, 0), np.where(keep[..., None], premult, 0)


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    assert ok
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    assert decoded is not None  # OpenCV reads back the file it has just written
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def blend(clean: np.ndarray, alpha: np.ndarray, premult: np.ndarray) -> np.ndarray:
    """uint8 composite `a*W + (1-a)*B` (premult = a*W) before any JPEG."""
    out = premult * 255 + (1 - alpha[..., None]) * clean.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def make_sample(
    rng: np.random.Generator,
    h: int,
    w: int,
    long_side: int,
    split: str = "train",
    data_dir=None,
    p_none: float = 0.1,
    kinds: list[str] | None = None,
    source: str | None = None,
    quality: int | None = None,
    streaks: bool = False,
) -> Sample:
    """An `h x w` window of a watermarked catalogue photo with long side `long_side`.
    `streaks` draws straight shelf edges and highlights into the background
    (`scenes.add_streaks`) after everything else is drawn from `rng`."""
    bg, product, bg_label = render_background(rng, h, w, long_side, split, data_dir, source)
    if kinds is None and rng.random() < p_none:
        kinds = []
    alpha, premult, labels = render_watermark(rng, h, w, long_side, kinds, bg.mean() / 255)
    quality = int(quality or rng.integers(70, 99))
    if streaks:
        bg = add_streaks(rng, bg, long_side)
    alpha, premult = visible_part(bg, alpha, premult)
    colour = np.divide(premult, alpha[..., None], out=np.zeros_like(premult), where=alpha[..., None] > 0)
    return Sample(
        clean=jpeg(bg, quality),
        composite=jpeg(blend(bg, alpha, premult), quality),
        alpha=alpha,
        colour=colour,
        mask=alpha > 0,
        product=product & ~(alpha > 0),
        kinds=labels,
        background=bg_label,
        quality=quality,
    )


def watermark_image(
    rgb: np.ndarray, rng: np.random.Generator, kinds: list[str] | None = None, quality: int | None = 90
) -> tuple[np.ndarray, np.ndarray]:
    """Watermark one given uint8 RGB photo: (composite uint8, mask bool). quality=None: no JPEG."""
    h, w = rgb.shape[:2]
    alpha, premult, _ = render_watermark(rng, h, w, max(h, w), kinds or None, rgb.mean() / 255)
    alpha, premult = visible_part(rgb, alpha, premult)
    out = blend(rgb, alpha, premult)
    return (jpeg(out, quality) if quality else out), alpha > 0
