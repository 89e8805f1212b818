"""Mark styles for real product photos: the palette training draws with, and a held-out
family (fonts, names, phrases and three kinds of mark) that no training run ever sees, so
the real-photo evaluation measures transfer to marks the models have not met.

- `TRAIN`: DejaVu (as the synthetic set) and Liberation fonts, the synthesizer's names and
  phrases, its six kinds and the seller marks of `models.seller_marks` (badges, stickers,
  icons, contact blocks, glow/emboss/gradient text, faint large marks).
- `HELDOUT`: URW base-35 fonts (Nimbus, C059, P052, Bookman, Gothic, Z003 script), other
  shop names and phrases, other CJK phrases, and the kinds `banner` (a filled label with
  the name knocked out), `stamp` (a double ring around a word) and `diagonal` (one large
  line of text across the photo), besides the six familiar kinds drawn in those fonts.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from clearmark.models.scenes import CJK_FONTS, LATIN_FONTS, font
from clearmark.models.seller_marks import SELLER_KINDS
from clearmark.models.synth import (
    CJK_WORDS,
    KINDS,
    MARK_WORDS,
    NAMES,
    Element,
    Palette,
    _name,
    _phrase,
    _solid,
    _text_masks,
)

TRAIN = Palette(
    latin_fonts=tuple(LATIN_FONTS)
    + (
        "LiberationSans-Regular.ttf",
        "LiberationSans-Bold.ttf",
        "LiberationSerif-Regular.ttf",
        "LiberationSerif-Bold.ttf",
        "LiberationMono-Bold.ttf",
        "LiberationSans-Italic.ttf",
    ),
    cjk_fonts=tuple(CJK_FONTS),
    names=tuple(NAMES),
    words=tuple(MARK_WORDS),
    cjk_words=tuple(CJK_WORDS),
)

HELDOUT = Palette(
    latin_fonts=(
        "NimbusSans-Regular.otf",
        "NimbusSans-Bold.otf",
        "C059-Roman.otf",
        "C059-BdIta.otf",
        "P052-Bold.otf",
        "URWBookman-Demi.otf",
        "URWGothic-Book.otf",
        "Z003-MediumItalic.otf",
        "NimbusMonoPS-Bold.otf",
        "NimbusSansNarrow-Bold.otf",
    ),
    cjk_fonts=tuple(CJK_FONTS),
    names=(
        "Kestrel Goods",
        "Orchard & Co",
        "Bellamy",
        "Tovari",
        "Fjordline",
        "Marlowe",
        "Sable Market",
        "Ivy Lane",
        "Corvo",
        "Hanami",
    ),
    words=(
        "WATERMARK",
        "COPYRIGHT {n}",
        "not for resale",
        "Photo: {n}",
        "EXCLUSIVE",
        "{n} original",
        "sold by {n}",
        "ⓒ {n}",
    ),
    cjk_words=("禁止转载", "官方正品", "实拍图", "新品上市", "原创设计", "专柜同款"),
    badge_font="URWGothic-Demi.otf",
)


def banner_element(rng: np.random.Generator, long_side: int, colour: np.ndarray, pal: Palette) -> Element:
    """A filled rounded label with the shop's name knocked out of it."""
    size = long_side * rng.uniform(0.02, 0.05)
    text, _ = _text_masks(
        _name(rng, pal), font(pal.latin_fonts[int(rng.integers(len(pal.latin_fonts)))], size), 0
    )
    th, tw = text.shape
    pad_y, pad_x = int(size * 0.4), int(size * 0.8)
    im = Image.new("L", (tw + 2 * pad_x, th + 2 * pad_y), 0)
    ImageDraw.Draw(im).rounded_rectangle(
        (0, 0, im.width - 1, im.height - 1), radius=int(min(im.size) * 0.3), fill=255
    )
    cov = np.asarray(im, np.float32) / 255
    cov[pad_y : pad_y + th, pad_x : pad_x + tw] *= 1 - text
    return _solid(cov, colour)


def stamp_element(rng: np.random.Generator, long_side: int, colour: np.ndarray, pal: Palette) -> Element:
    """Two concentric rings around one word, like a rubber stamp."""
    s = max(24, int(long_side * rng.uniform(0.12, 0.25)))
    lw = max(1, int(s * 0.025))
    im = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(im)
    d.ellipse((lw, lw, s - lw, s - lw), outline=255, width=lw)
    inner = int(s * 0.1)
    d.ellipse((inner, inner, s - inner, s - inner), outline=255, width=max(1, lw // 2))
    cov = np.asarray(im, np.float32) / 255
    word = _phrase(rng, "text", pal).split()[0][:9]
    fill, _ = _text_masks(
        word, font(pal.latin_fonts[int(rng.integers(len(pal.latin_fonts)))], s * 0.6 / max(3, len(word))), 0
    )
    fh, fw = (min(a, s) for a in fill.shape)
    y0, x0 = (s - fh) // 2, (s - fw) // 2
    np.maximum(cov[y0 : y0 + fh, x0 : x0 + fw], fill[:fh, :fw], out=cov[y0 : y0 + fh, x0 : x0 + fw])
    return _solid(cov, colour)


def diagonal_element(rng: np.random.Generator, long_side: int, colour: np.ndarray, pal: Palette) -> Element:
    """One line of text about as long as the photo (the synthesizer rotates and places it)."""
    text = _phrase(rng, "text", pal)
    name = pal.latin_fonts[int(rng.integers(len(pal.latin_fonts)))]
    width = max(1, font(name, 100).getbbox(text)[2])
    size = 100 * long_side * rng.uniform(0.5, 0.9) / width
    fill, _ = _text_masks(text, font(name, min(size, long_side * 0.2)), 0)
    return _solid(fill, colour)


HELDOUT_KINDS = {"banner": banner_element, "stamp": stamp_element, "diagonal": diagonal_element}
FAMILIES = {
    "train": (TRAIN, KINDS + tuple(SELLER_KINDS), SELLER_KINDS),
    "heldout": (HELDOUT, KINDS + tuple(HELDOUT_KINDS), HELDOUT_KINDS),
}
