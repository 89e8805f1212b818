"""Safe decoding and faithful re-encoding of product photos (Pillow).

`decode_image` refuses unusable files with `BadInput` and a code, *before* any pixel
is loaded where it can (bytes, header size); `encode_image` writes the result in the
input's format with its ICC profile and EXIF (orientation reset to 1, since the pixels
come back upright).

What comes back for odd inputs:
- EXIF-rotated: pixels are transposed upright, EXIF Orientation is written as 1.
- Animated GIF/WEBP/MPO/TIFF: the first frame only (`DecodedImage.frames` says how many).
- CMYK JPEG/TIFF: the pipeline works on Pillow's RGB view; the output stays CMYK with the
  same ICC profile, and pixels outside the mask keep their exact CMYK values.
- 16-bit grayscale PNG (I;16): works on the top 8 bits; output is 16-bit, exact outside
  the mask, `v * 257` inside. 16-bit RGB(A) PNGs are decoded by Pillow as 8-bit RGB(A),
  so they come back as 8-bit PNGs.
- Palette (P/PA) PNG/GIF, 1-bit and other modes: output is truecolour RGB, or RGBA when
  the input had transparency, so restored pixels are not posterised and every pixel
  outside the mask keeps its exact colour and alpha. GIF is written as PNG.
- JPEG is re-encoded with the input's own quantisation tables and chroma subsampling
  (so untouched areas only see requantisation noise); `jpeg_quality` is the IJG quality
  estimated from the luminance table, used when the tables cannot be reused.
- Lossless WEBP stays lossless; lossy WEBP is written at quality 90.
"""
from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, UnidentifiedImageError

from workers.errors import BadInput
from workers.settings import Settings, get_settings

# Formats we open. Everything else (EPS/PDF need Ghostscript, PSD, ICO ...) is refused.
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Format we write for each input format, and its file extension.
OUTPUT_FORMAT = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WEBP", "GIF": "PNG",
                 "BMP": "BMP", "TIFF": "TIFF"}
EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif",
              "BMP": ".bmp", "TIFF": ".tif"}
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
DEFAULT_JPEG_QUALITY = 90
ORIENTATION = 0x0112

# IJG (libjpeg) standard luminance table, natural order (Annex K of ITU T.81).
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64)


@dataclass
class DecodedImage:
    """An input file, upright, as 8-bit RGB for the networks plus what is needed to write
    it back: `base` is the upright first frame in the mode the output is written in."""

    rgb: np.ndarray                 # H x W x 3 uint8, upright
    alpha: np.ndarray | None        # H x W uint8, kept aside and put back unchanged
    base: Image.Image               # upright first frame in the output mode
    format: str                     # Pillow format name of the input ("JPEG", "PNG", ...)
    mode: str                       # Pillow mode of the input as stored
    icc_profile: bytes | None = None
    exif: bytes | None = None       # with Orientation reset to 1
    jpeg_quality: int | None = None
    jpeg_qtables: list | None = None
    jpeg_subsampling: int = -1
    webp_lossless: bool = False
    frames: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.base.size

    @property
    def input_extension(self) -> str:
        return EXTENSIONS[self.format]


def estimate_jpeg_quality(quantization: dict | None) -> int | None:
    """The IJG quality (1..100) whose scaled standard luminance table is closest to the
    file's table 0, or None when there is no table. Exact for libjpeg-encoded files."""
    if not quantization or 0 not in quantization or len(quantization[0]) != 64:
        return None
    table = np.asarray(list(quantization[0]), dtype=np.int64)
    best, best_err = None, None
    for q in range(1, 101):
        scale = 5000 // q if q < 50 else 200 - 2 * q
        ref = np.clip((_IJG_LUMA * scale + 50) // 100, 1, 255)
        err = int(np.abs(ref - table).sum())
        if best_err is None or err < best_err:
            best, best_err = q, err
    return best


def _refuse(message: str, code: str) -> BadInput:
    return BadInput(message, code=code)


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise _refuse(f"image header claims too many pixels (decompression bomb): {exc}",
                      "decompression_bomb") from None
    except UnidentifiedImageError:
        raise _refuse("not a recognised image (accepted: JPEG, PNG, WEBP, GIF, BMP, TIFF)",
                      "not_an_image") from None
    except ValueError as exc:   # e.g. PNG text/ICC chunk that inflates past Pillow's limit
        if "too large" in str(exc).lower():
            raise _refuse(f"compressed metadata expands too far: {exc}", "decompression_bomb") from None
        raise _refuse(f"corrupt image header: {exc}", "corrupt_image") from None
    except (OSError, SyntaxError, EOFError, struct.error) as exc:
        raise _refuse(f"corrupt image header: {exc}", "corrupt_image") from None


def _load(im: Image.Image) -> None:
    ImageFile.LOAD_TRUNCATED_IMAGES = False   # a truncated file is an error, never padded
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
    except Image.DecompressionBombError as exc:
        raise _refuse(str(exc), "decompression_bomb") from None
    except EOFError as exc:
        raise _refuse(f"image data ends early: {exc}", "truncated_image") from None
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        text = str(exc).lower()
        if "truncated" in text or "broken data stream" in text or "premature" in text:
            raise _refuse(f"image data ends early: {exc}", "truncated_image") from None
        if "too large" in text:
            raise _refuse(str(exc), "decompression_bomb") from None
        raise _refuse(f"image data cannot be decoded: {exc}", "corrupt_image") from None


def _exif_bytes(im: Image.Image, notes: list[str]) -> bytes | None:
    try:
        exif = im.getexif()
        if not len(exif):
            return None
        if ORIENTATION in exif:
            exif[ORIENTATION] = 1
        return exif.tobytes()
    except Exception as exc:  # noqa: BLE001 - broken EXIF is dropped, never fatal
        notes.append(f"EXIF dropped: {exc}")
        return None


def _split(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, Image.Image]:
    """Working RGB, alpha and the base image (in the output mode) for an upright frame."""
    mode = im.mode
    if mode in SIXTEEN_BIT:
        v16 = np.clip(np.asarray(im, dtype=np.int64), 0, 65535).astype(np.uint16)
        v8 = (v16 >> 8).astype(np.uint8)
        return np.repeat(v8[..., None], 3, axis=2), None, Image.fromarray(v16, "I;16")
    if mode == "F":
        raise _refuse("32-bit float images are not supported", "unsupported_mode")
    if mode in ("RGB", "L", "CMYK") and "transparency" not in im.info:
        return np.asarray(im.convert("RGB")), None, im
    if mode == "LA":
        arr = np.asarray(im)
        return np.repeat(arr[..., :1], 3, axis=2), arr[..., 1].copy(), im
    has_alpha = mode in ("RGBA", "RGBa", "La", "PA") or "transparency" in im.info
    target = "RGBA" if has_alpha else "RGB"
    try:
        conv = im.convert(target)
    except (ValueError, OSError) as exc:
        raise _refuse(f"cannot convert mode {mode} to RGB: {exc}", "unsupported_mode") from None
    arr = np.asarray(conv)
    if has_alpha:
        return arr[..., :3].copy(), arr[..., 3].copy(), conv
    return arr, None, conv


def decode_image(data: bytes, settings: Settings | None = None) -> DecodedImage:
    """Decode `data` safely or raise BadInput (codes: empty_file, too_large_bytes,
    not_an_image, corrupt_image, decompression_bomb, too_many_pixels, too_small,
    truncated_image, unsupported_mode)."""
    s = settings or get_settings()
    if not data:
        raise _refuse("the file is empty", "empty_file")
    if len(data) > s.max_bytes:
        raise _refuse(f"file is {len(data)} bytes, over the limit of {s.max_bytes}", "too_large_bytes")
    im = _open(data)
    fmt = im.format or "unknown"
    w, h = im.size                     # from the header: nothing decoded yet
    if w * h > s.max_pixels:
        raise _refuse(f"{w}x{h} = {w * h} pixels, over the limit of {s.max_pixels}", "too_many_pixels")
    if min(w, h) < s.min_side:
        raise _refuse(f"{w}x{h} is smaller than {s.min_side} px on a side", "too_small")
    frames = int(getattr(im, "n_frames", 1) or 1)
    notes: list[str] = []
    if frames > 1:
        im.seek(0)
        notes.append(f"{frames} frames: only the first is processed")
    _load(im)
    stored_mode = im.mode
    quant = getattr(im, "quantization", None) if fmt in ("JPEG", "MPO") else None
    subsampling = JpegImagePlugin.get_sampling(im) if quant else -1
    icc = im.info.get("icc_profile")
    exif = _exif_bytes(im, notes)
    try:
        upright = ImageOps.exif_transpose(im) or im
    except Exception as exc:  # noqa: BLE001 - an odd orientation tag is not fatal
        notes.append(f"EXIF orientation ignored: {exc}")
        upright = im
    rgb, alpha, base = _split(upright)
    lossless = fmt == "WEBP" and b"VP8L" in data[12:4096] and b"VP8 " not in data[12:4096]
    return DecodedImage(
        rgb=np.ascontiguousarray(rgb), alpha=alpha, base=base, format=fmt, mode=stored_mode,
        icc_profile=icc, exif=exif, jpeg_quality=estimate_jpeg_quality(quant),
        jpeg_qtables=[list(quant[k]) for k in sorted(quant)] if quant else None,
        jpeg_subsampling=subsampling, webp_lossless=lossless, frames=frames, notes=notes)


def _rebuild(dec: DecodedImage, rgb: np.ndarray, changed: np.ndarray) -> Image.Image:
    """The output image in the base's mode: the base everywhere, `rgb` where `changed`."""
    base = dec.base
    if base.mode == "RGB":
        return Image.fromarray(rgb, "RGB")
    if base.mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, dec.alpha]), "RGBA")
    if base.mode == "I;16":
        v16 = np.asarray(base, dtype=np.uint16).copy()
        grey = np.asarray(Image.fromarray(rgb, "RGB").convert("L"), dtype=np.uint16)
        v16[changed] = grey[changed] * 257
        return Image.fromarray(v16, "I;16")
    out = base.copy()
    if base.mode == "LA":
        grey = Image.fromarray(rgb, "RGB").convert("L")
        new = Image.merge("LA", (grey, base.getchannel("A")))
    else:                               # L, CMYK
        new = Image.fromarray(rgb, "RGB").convert(base.mode)
    out.paste(new, (0, 0), Image.fromarray(changed.astype(np.uint8) * 255, "L"))
    return out


def encode_image(dec: DecodedImage, rgb: np.ndarray, changed: np.ndarray) -> tuple[bytes, str]:
    """Encode the processed `rgb` (pixels outside `changed` must equal `dec.rgb`) in the
    input's format; returns (bytes, extension)."""
    out = _rebuild(dec, rgb, changed)
    fmt = OUTPUT_FORMAT[dec.format]
    kwargs: dict = {}
    if dec.icc_profile:
        kwargs["icc_profile"] = dec.icc_profile
    if dec.exif and fmt in ("JPEG", "PNG", "WEBP"):
        kwargs["exif"] = dec.exif
    if fmt == "JPEG":
        if dec.jpeg_qtables and 1 <= len(dec.jpeg_qtables) <= 4:
            kwargs["qtables"] = dec.jpeg_qtables
        else:
            kwargs["quality"] = dec.jpeg_quality or DEFAULT_JPEG_QUALITY
        if dec.jpeg_subsampling >= 0:
            kwargs["subsampling"] = dec.jpeg_subsampling
        kwargs["optimize"] = True
    elif fmt == "PNG":
        kwargs["compress_level"] = 6
    elif fmt == "WEBP":
        kwargs.update(lossless=True, exact=True) if dec.webp_lossless else kwargs.update(quality=90)
    elif fmt == "TIFF":
        kwargs["compression"] = "tiff_lzw"
    buf = io.BytesIO()
    out.save(buf, fmt, **kwargs)
    return buf.getvalue(), EXTENSIONS[fmt]
