"""Hostile and odd input files, built in memory (no fixtures on disk).

`bad_files()` maps a case name (a file name) to (bytes, expected BadInput code or None);
None means the pipeline must succeed on it. The pipeline's unit tests and the end-to-end
Celery tests both use it. Everything is small and deterministic; the pixel bombs are
crafted chunk by chunk so no big pixel buffer is ever allocated here.

Pixel limits have two tiers: a header over `settings.max_pixels` is `too_many_pixels`; a
header over Pillow's own bomb limit (2 x Image.MAX_IMAGE_PIXELS, about 179 MP), or a
compressed PNG metadata chunk that inflates past Pillow's safe size, is
`decompression_bomb`. Both are refused from the header, before any pixel is decoded.
"""

from __future__ import annotations

import io
import struct
import zlib
from functools import lru_cache

import numpy as np
from PIL import Image

# Orientation 6 = "rotate 90 degrees clockwise to display".
EXIF_ORIENTATION_6 = 6


def photo(width: int = 128, height: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth, asymmetric 'product photo' (uint8 H x W x 3) with mild texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 60 + 150 * xx / max(width - 1, 1)
    g = 40 + 160 * yy / max(height - 1, 1)
    b = 120 + 80 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    img = np.stack([r, g, b], axis=-1) + rng.normal(0, 4, (height, width, 3))
    # An off-centre dark "product" so orientation mistakes are visible.
    img[height // 5 : height // 2, width // 6 : width // 3] = (30, 60, 40)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def png_bytes(
    width: int, height: int, bit_depth: int, colour_type: int, idat: bytes, extra: bytes = b""
) -> bytes:
    """A PNG from parts: IHDR, optional extra chunks, one IDAT (already compressed), IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + extra
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def huge_header_png(width: int, height: int) -> bytes:
    """RGB header claiming width x height with one tiny row of data behind it."""
    return png_bytes(width, height, 8, 2, zlib.compress(b"\x00" * 64))


def pixel_bomb_png(side: int = 15000) -> bytes:
    """A *complete, valid* 1-bit side x side PNG (all black) that inflates to side^2
    pixels from a few tens of KB. Compressed row by row."""
    row = b"\x00" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(side)]
    parts.append(comp.flush())
    return png_bytes(side, side, 1, 0, b"".join(parts))


def ztxt_bomb_png() -> bytes:
    """A valid 32 x 32 PNG whose zTXt chunk inflates to 8 MB (Pillow's limit is 1 MB)."""
    ztxt = b"Comment\x00\x00" + zlib.compress(b"A" * (8 * 1024 * 1024), 9)
    raw = b"".join(b"\x00" + bytes(32 * 3) for _ in range(32))
    return png_bytes(32, 32, 8, 2, zlib.compress(raw), extra=png_chunk(b"zTXt", ztxt))


def rgb16_png(img8: np.ndarray) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG built by hand from an 8-bit image."""
    h, w, _ = img8.shape
    v16 = img8.astype(">u2") * 257 + 3  # low byte != high byte, so truncation is visible
    raw = b"".join(b"\x00" + v16[y].tobytes() for y in range(h))
    return png_bytes(w, h, 16, 2, zlib.compress(raw))


def gray16_png(img8: np.ndarray) -> bytes:
    grey = np.asarray(Image.fromarray(img8).convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG")


def exif_rotated_jpeg(upright: np.ndarray, quality: int = 92) -> bytes:
    """Stored pixels rotated, EXIF Orientation 6: a viewer shows `upright`."""
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = EXIF_ORIENTATION_6
    exif[0x010F] = "clearmark-test"  # Make: proves other tags survive
    return encode(stored, "JPEG", quality=quality, exif=exif.tobytes())


def palette_alpha_png(img8: np.ndarray) -> bytes:
    pal = Image.fromarray(img8).quantize(colors=64)
    arr = np.asarray(pal).copy()
    arr[:8, :] = 63  # a transparent band along the top
    out = Image.fromarray(arr, "P")
    out.putpalette(pal.getpalette())
    alpha = bytes([255] * 63 + [0])  # index 63 fully transparent
    return encode(out, "PNG", transparency=alpha)


def animated_gif(img8: np.ndarray, frames: int = 3) -> bytes:
    imgs = [
        Image.fromarray(np.roll(img8, 9 * i, axis=1)).convert("P", palette=Image.Palette.ADAPTIVE)
        for i in range(frames)
    ]
    return encode(imgs[0], "GIF", save_all=True, append_images=imgs[1:], duration=100, loop=0)


@lru_cache(maxsize=1)
def bad_files() -> dict[str, tuple[bytes, str | None]]:
    """case name -> (file bytes, expected BadInput code, or None where it must succeed).
    Codes assume the default limits (max_pixels 40 MP, min_side 16)."""
    img = photo(128, 96, seed=1)
    good_jpeg = encode(Image.fromarray(photo(256, 192, seed=2)), "JPEG", quality=90)
    good_png = encode(Image.fromarray(photo(64, 48, seed=3)), "PNG")
    bad_crc = bytearray(good_png)
    bad_crc[29] ^= 0xFF  # IHDR's CRC
    return {
        "zero.jpg": (b"", "empty_file"),
        "text.jpg": (b"this is not a JPEG, just text with a .jpg name\n" * 4, "not_an_image"),
        "postscript.jpg": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n", "not_an_image"),
        "truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], "truncated_image"),
        "truncated.png": (good_png[: len(good_png) * 2 // 3], "truncated_image"),
        "bad_crc.png": (bytes(bad_crc), "corrupt_image"),
        "tiny_1x1.png": (encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "too_small"),
        "big_header.png": (huge_header_png(8000, 6000), "too_many_pixels"),
        "huge_header.png": (huge_header_png(20000, 20000), "decompression_bomb"),
        "bomb.png": (pixel_bomb_png(15000), "decompression_bomb"),
        "ztxt_bomb.png": (ztxt_bomb_png(), "decompression_bomb"),
        "cmyk.jpg": (encode(Image.fromarray(img).convert("CMYK"), "JPEG", quality=92), None),
        "16bit.png": (rgb16_png(img), None),
        "16bit_gray.png": (gray16_png(img), None),
        "palette_alpha.png": (palette_alpha_png(img), None),
        "animated.gif": (animated_gif(img), None),
        "exif_rotated.jpg": (exif_rotated_jpeg(img), None),
    }
