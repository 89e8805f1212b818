"""Marks sellers and stock sites put on product photos that the six original kinds never
drew: filled badges and stickers, small pictograms, multi-line contact blocks, text with a
glow, an emboss or a gradient fill, and very faint large marks. The training family
(`models.styles.TRAIN`) draws them; the held-out family never does, so its `banner`,
`stamp` and `diagonal` kinds still measure transfer to shapes no run has seen.

Each maker is `(rng, long_side, colour, palette) -> Element` like `models.styles`' held-out
kinds: coverage in [0, 1] with a premultiplied colour, placed and rotated by
`synth.render_watermark`. Several are multi-coloured (a badge and its lettering), which a
premultiplied element carries per pixel.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw

from clearmark.models.scenes import font, have_cjk_font
from clearmark.models.synth import Element, Palette, _name, _over, _phrase, _solid, _text_masks

STICKER_WORDS = ("SALE", "NEW", "HOT", "100%", "-30%", "TOP", "BEST", "ORIGINAL", "PROMO", "FREE")
STICKER_CJK = ("热卖", "新品", "包邮", "正品", "特价", "爆款")


def _contrast(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    """A lettering colour that reads on `colour`: white or black mostly, else any."""
    if rng.random() < 0.8:
        return np.full(3, 1.0 if colour.mean() < 0.55 else 0.0, np.float32)
    return rng.uniform(0, 1, 3).astype(np.float32)


def _fill(rng: np.random.Generator, shape: tuple[int, int], colour: np.ndarray) -> np.ndarray:
    """HxWx3 fill colour: flat, or (a third of the time) a two-colour linear gradient."""
    h, w = shape
    if rng.random() > 0.35:
        return np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
    other = np.clip(colour + rng.uniform(-0.5, 0.5, 3), 0, 1).astype(np.float32)
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h, dtype=np.float32)
    t = t[None, :, None] if t.size == w else t[:, None, None]
    return (colour * (1 - t) + other * t).astype(np.float32)


def _lettering(
    rng: np.random.Generator, text: str, height: float, pal: Palette, cjk: bool = False
) -> np.ndarray:
    names = pal.cjk_fonts if cjk else pal.latin_fonts + (pal.badge_font,)
    fill, _ = _text_masks(text, font(names[int(rng.integers(len(names)))], max(6, int(height))), 0)
    return fill


def _centre(cov: np.ndarray, glyphs: np.ndarray) -> tuple[slice, slice, np.ndarray]:
    """Where `glyphs` sit centred in `cov`, cropped to fit."""
    h, w = cov.shape
    gh, gw = min(glyphs.shape[0], h), min(glyphs.shape[1], w)
    y0, x0 = (h - gh) // 2, (w - gw) // 2
    return slice(y0, y0 + gh), slice(x0, x0 + gw), glyphs[:gh, :gw]


def _icon_cov(kind: str, s: int) -> np.ndarray:
    """An s x s pictogram's coverage: star, heart, check, camera, bag or leaf."""
    im = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(im)
    lw = max(1, s // 9)
    if kind == "star":
        ang = np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, s / 2 - 1, s / 4.8)
        d.polygon([(s / 2 + r * np.cos(t), s / 2 + r * np.sin(t)) for r, t in zip(rad, ang)], fill=255)
    elif kind == "heart":
        r = s / 4
        d.ellipse((0, s * 0.1, 2 * r, s * 0.1 + 2 * r), fill=255)
        d.ellipse((s - 2 * r, s * 0.1, s, s * 0.1 + 2 * r), fill=255)
        d.polygon([(s * 0.03, s * 0.35), (s * 0.97, s * 0.35), (s / 2, s * 0.95)], fill=255)
    elif kind == "check":
        d.line([(s * 0.1, s * 0.55), (s * 0.4, s * 0.85), (s * 0.9, s * 0.15)], fill=255, width=2 * lw)
    elif kind == "camera":
        d.rounded_rectangle((lw, s * 0.25, s - lw, s * 0.85), radius=s // 8, outline=255, width=lw)
        d.ellipse((s * 0.32, s * 0.36, s * 0.68, s * 0.72), outline=255, width=lw)
        d.rectangle((s * 0.35, s * 0.12, s * 0.6, s * 0.25), fill=255)
    elif kind == "bag":
        d.rounded_rectangle((s * 0.12, s * 0.35, s * 0.88, s * 0.95), radius=s // 10, fill=255)
        d.arc((s * 0.3, s * 0.08, s * 0.7, s * 0.55), 180, 360, fill=255, width=lw)
    else:  # leaf
        d.ellipse((s * 0.15, s * 0.05, s * 0.85, s * 0.95), fill=255)
        d.line([(s * 0.5, s * 0.1), (s * 0.5, s)], fill=0, width=max(1, lw // 2))
    return np.asarray(im, np.float32) / 255


ICONS = ("star", "heart", "check", "camera", "bag", "leaf")


def badge_element(rng: np.random.Generator, long_side: int, colour: np.ndarray, pal: Palette) -> Element:
    """An opaque rounded label or pill in a flat or gradient colour with the shop's name
    lettered on it in a contrasting colour (or knocked out), sometimes after an icon."""
    height = max(12, int(long_side * rng.uniform(0.02, 0.07)))
    cjk = have_cjk_font() and rng.random() < 0.25
    text = _phrase(rng, "cjk", pal) if cjk else _name(rng, pal)
    glyphs = _lettering(rng, text, height * 0.55, pal, cjk)
    icon = _icon_cov(str(rng.choice(ICONS)), int(height * 0.6)) if rng.random() < 0.4 else None
    gap = int(height * 0.25)
    inner_w = glyphs.shape[1] + (icon.shape[1] + gap if icon is not None else 0)
    w = inner_w + int(height * rng.uniform(0.5, 1.2))
    im = Image.new("L", (w, height), 0)
    radius = height // 2 if rng.random() < 0.5 else int(height * rng.uniform(0.1, 0.3))
    ImageDraw.Draw(im).rounded_rectangle((0, 0, w - 1, height - 1), radius=radius, fill=255)
    shape = np.asarray(im, np.float32) / 255
    letters = np.zeros_like(shape)
    left = (w - inner_w) // 2
    if icon is not None:
        ih = icon.shape[0]
        y0 = (height - ih) // 2
        letters[y0 : y0 + ih, left : left + ih] = icon
        left += ih + gap
    ys, xs, g = _centre(letters[:, left:], glyphs)
    letters[:, left:][ys, xs] = np.maximum(letters[:, left:][ys, xs], g)
    letters = np.minimum(letters, shape)
    if rng.random() < 0.3:  # knocked out: the photo shows through the lettering
        return _solid(shape * (1 - letters), colour)
    body = _fill(rng, shape.shape, colour)
    return _over(_solid(letters, _contrast(rng, colour)), (shape, shape[..., None] * body))


def sticker_element(rng: np.random.Generator, long_side: int, colour: np.ndarray, pal: Palette) -> Element:
    """A filled round or starburst sticker with one or two short words across it."""
    s = max(20, int(long_side * rng.uniform(0.05, 0.18)))
    im = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(im)
    if rng.random() < 0.5:
        points = int(rng.integers(12, 28))
        ang = np.linspace(0, 2 * np.pi, 2 * points + 1)[:-1]
        rad = np.where(np.arange(2 * points) % 2 == 0, s / 2 - 1, s / 2 * rng.uniform(0.78, 0.9))
        d.polygon([(s / 2 + r * np.cos(t), s / 2 + r * np.sin(t)) for r, t in zip(rad, ang)], fill=255)
    else:
        d.ellipse((0, 0, s - 1, s - 1), fill=255)
    shape = np.asarray(im, np.float32) / 255
    cjk = have_cjk_font() and rng.random() < 0.25
    word = str(rng.choice(STICKER_CJK if cjk else STICKER_WORDS))
    glyphs = _lettering(rng, word, s * 0.55 / max(2, len(word) * (1 if cjk else 0.55)), pal, cjk)
    letters = np.zeros_like(shape)
    ys, xs, g = _centre(letters, glyphs)
    letters[ys, xs] = g
    if rng.random() < 0.4:  # a thin ring inside the edge
        ring = Image.new("L", (s, s), 0)
        m, lw = int(s * 0.12), max(1, s // 40)
        ImageDraw.Draw(ring).ellipse((m, m, s - m, s - m), outline=255, width=lw)
        letters = np.maximum(letters, np.asarray(ring, np.float32) / 255)
    letters = np.minimum(letters, shape)
    body = _fill(rng, shape.shape, colour)
    return _over(_solid(letters, _contrast(rng, colour)), (shape, shape[..., None] * body))


def icon_element(rng: np.random.Generator, long_side: int, colour: np.ndarray, pal: Palette) -> Element:
    """A small pictogram, alone or before the shop's name (an icon-and-wordmark logo)."""
    s = max(10, int(long_side * rng.uniform(0.025, 0.09)))
    cov = _icon_cov(str(rng.choice(ICONS)), s)
    if rng.random() < 0.5:
        glyphs = _lettering(rng, _name(rng, pal), s * 0.6, pal)
        gap = max(2, s // 5)
        h = max(s, glyphs.shape[0])
        out = np.zeros((h, s + gap + glyphs.shape[1]), np.float32)
        out[(h - s) // 2 : (h - s) // 2 + s, :s] = cov
        gy = (h - glyphs.shape[0]) // 2
        out[gy : gy + glyphs.shape[0], s + gap :] = glyphs
        cov = out
    return _solid(cov, colour)


def contact_element(rng: np.random.Generator, long_side: int, colour: np.ndarray, pal: Palette) -> Element:
    """A block of two to five contact lines (messenger IDs, phone, shop URL), CJK or Latin."""
    slug = _name(rng, pal).lower().replace(" ", "").replace("&", "")
    digits = "".join(str(int(d)) for d in rng.integers(0, 10, 11))
    cjk = have_cjk_font() and rng.random() < 0.4
    lines = [
        f"{'微信' if cjk else 'WeChat'}: {slug}{digits[:3]}",
        f"WhatsApp +{digits[:2]} {digits[2:5]} {digits[5:9]}",
        f"{'电话' if cjk else 'Tel'}: {digits[:4]}-{digits[4:11]}",
        f"www.{slug}.com",
        f"QQ: {digits[:9]}",
        f"{'店铺' if cjk else 'Shop'}: {_name(rng, pal)}",
    ]
    chosen = [lines[i] for i in sorted(rng.choice(len(lines), int(rng.integers(2, 6)), replace=False))]
    size = long_side * rng.uniform(0.014, 0.035)
    names = pal.cjk_fonts if cjk else pal.latin_fonts
    fnt = font(names[int(rng.integers(len(names)))], max(8, int(size)))
    rows = [_text_masks(line, fnt, 0)[0] for line in chosen]
    lead = int(size * rng.uniform(0.25, 0.7))
    out = np.zeros((sum(r.shape[0] + lead for r in rows), max(r.shape[1] for r in rows)), np.float32)
    y = 0
    for r in rows:
        out[y : y + r.shape[0], : r.shape[1]] = r
        y += r.shape[0] + lead
    return _solid(out, colour)


def fancy_element(rng: np.random.Generator, long_side: int, colour: np.ndarray, pal: Palette) -> Element:
    """Text with a soft glow around it, an emboss (a light and a dark edge, no fill) or a
    gradient fill."""
    cjk = have_cjk_font() and rng.random() < 0.2
    text = _phrase(rng, "cjk" if cjk else "text", pal)
    glyphs = _lettering(rng, text, long_side * rng.uniform(0.03, 0.1), pal, cjk)
    pad = max(3, glyphs.shape[0] // 4)
    glyphs = np.pad(glyphs, pad)
    style = rng.choice(["glow", "emboss", "gradient"])
    if style == "glow":
        halo = cv2.GaussianBlur(cv2.dilate(glyphs, np.ones((3, 3), np.uint8)), (0, 0), pad / 2.5)
        halo = np.clip(halo * rng.uniform(1.2, 2.5), 0, 1) * rng.uniform(0.5, 0.9)
        return _over(_solid(glyphs, colour), _solid(halo, _contrast(rng, colour)))
    if style == "emboss":
        off = max(1, pad // 3)
        light = np.clip(glyphs - np.roll(glyphs, (off, off), (0, 1)), 0, 1)
        dark = np.clip(glyphs - np.roll(glyphs, (-off, -off), (0, 1)), 0, 1)
        return _over(_solid(light, np.ones(3, np.float32)), _solid(dark, np.zeros(3, np.float32)))
    return glyphs, glyphs[..., None] * _fill(rng, glyphs.shape, colour)


def faint_element(rng: np.random.Generator, long_side: int, colour: np.ndarray, pal: Palette) -> Element:
    """A very faint, large word or name, half the photo wide or more."""
    text = _name(rng, pal) if rng.random() < 0.5 else _phrase(rng, "text", pal)
    name = pal.latin_fonts[int(rng.integers(len(pal.latin_fonts)))]
    width = max(1, font(name, 100).getbbox(text)[2])
    size = min(100 * long_side * rng.uniform(0.4, 0.8) / width, long_side * 0.25)
    glyphs, _ = _text_masks(text, font(name, int(size)), 0)
    return _solid(glyphs * rng.uniform(0.12, 0.45), colour)


SELLER_KINDS = {
    "badge": badge_element,
    "sticker": sticker_element,
    "icon": icon_element,
    "contact": contact_element,
    "fancy": fancy_element,
    "faint": faint_element,
}
