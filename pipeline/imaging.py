"""Safe decoding and faithful re-encoding of product photos (Pillow).

`decode_image` refuses unusable files with `BadInput` and a code, *before* any pixel
is loaded where it can (bytes, header size); `encode_image` writes the result in the
input's format with its ICC profile and EXIF (orientation reset to 1, since the pixels
come back upright, except for a JPEG that keeps its coefficients: see below).

What comes back for odd inputs:
- EXIF-rotated: `rgb` is upright. A JPEG that keeps its coefficients keeps its pixels as
  stored and its orientation tag (`to_stored` turns arrays back); any other output is
  written upright with EXIF Orientation 1.
- Animated GIF/WEBP/MPO/TIFF: the first frame only (`DecodedImage.frames` says how many).
- CMYK JPEG/TIFF: the pipeline works on Pillow's RGB view; the output stays CMYK with the
  same ICC profile, and pixels outside the mask keep their exact CMYK values.
- 16-bit grayscale PNG (I;16): works on the top 8 bits; output is 16-bit, exact outside
  the mask, `v * 257` inside. 16-bit RGB(A) PNGs are decoded by Pillow as 8-bit RGB(A),
  so they come back as 8-bit PNGs.
- GIF stays a single-frame palette GIF with the input's palette: pixels outside the mask
  keep their exact palette index, restored pixels take the nearest palette colour, and
  transparent pixels stay transparent.
- Palette (P/PA) PNG, 1-bit and other modes: output is truecolour RGB, or RGBA when the
  input had transparency, so restored pixels are not posterised and every pixel outside
  the mask keeps its exact colour and alpha.
- JPEG keeps the upload's own DCT coefficients in every block the change does not touch
  (`pipeline.jpeg_exact`): those blocks decode to exactly the upload's pixels. Where that
  path cannot be taken (see `jpeg_exact_unsupported`; the reason goes into
  `EncodedImage.details`, recorded with the job) the photo is re-encoded with the input's own
  quantisation tables and chroma subsampling, so untouched areas see requantisation
  noise; `jpeg_quality` is the IJG quality estimated from the luminance table, used when
  the tables cannot be reused.
- Lossless WEBP stays lossless; lossy WEBP is written at quality 90.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import (  # noqa: F401  # noqa: F401  (registers the formats we open)
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

from clearmark.errors import BadInput
from clearmark.pipeline.jpeg_exact import encode_jpeg_exact, jpeg_exact_unsupported
from clearmark.settings import Settings, get_settings

# Formats we open (multi-picture JPEGs open as "MPO" through the JPEG plugin). Everything
# else (EPS/PDF need Ghostscript, PSD, ICO ...) is refused as not_an_image.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Format we write for each input format, and its file extension.
OUTPUT_FORMAT = {
    "JPEG": "JPEG",
    "MPO": "JPEG",
    "PNG": "PNG",
    "WEBP": "WEBP",
    "GIF": "GIF",
    "BMP": "BMP",
    "TIFF": "TIFF",
}
EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
}
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
DEFAULT_JPEG_QUALITY = 90
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")
ORIENTATION = 0x0112

# IJG (libjpeg) standard luminance table, natural order (Annex K of ITU T.81).
_IJG_LUMA = np.array(
    [
        16,
        11,
        10,
        16,
        24,
        40,
        51,
        61,
        12,
        12,
        14,
        19,
        26,
        58,
        60,
        55,
        14,
        13,
        16,
        24,
        40,
        57,
        69,
        56,
        14,
        17,
        22,
        29,
        51,
        87,
        80,
        62,
        18,
        22,
        37,
        56,
        68,
        109,
        103,
        77,
        24,
        35,
        55,
        64,
        81,
        104,
        113,
        92,
        49,
        64,
        78,
        87,
        103,
        121,
        120,
        101,
        72,
        92,
        95,
        98,
        112,
        100,
        103,
        99,
    ],
    dtype=np.int64,
)


@dataclass
class DecodedImage:
    """An input file, upright, as 8-bit RGB for the networks plus what is needed to write
    it back: `base` is the upright first frame in the mode the output is written in."""

    rgb: np.ndarray  # H x W x 3 uint8, upright
    alpha: np.ndarray | None  # H x W uint8, kept aside and put back unchanged
    base: Image.Image  # upright first frame in the output mode
    format: str  # Pillow format name of the input ("JPEG", "PNG", ...)
    mode: str  # Pillow mode of the input as stored
    icc_profile: bytes | None = None
    exif: bytes | None = None  # with Orientation reset to 1
    jpeg_quality: int | None = None
    jpeg_qtables: list[list[int]] | None = None
    jpeg_subsampling: int = -1
    jpeg_progressive: bool = False
    webp_lossless: bool = False
    frames: int = 1
    notes: list[str] = field(default_factory=list)
    source: bytes | None = None  # the uploaded file, kept for JPEG (coefficients reused)
    orientation: int = 1  # the EXIF orientation the pixels were turned upright by

    @property
    def size(self) -> tuple[int, int]:
        return self.base.size

    @property
    def input_extension(self) -> str:
        return EXTENSIONS[self.format]

    @property
    def output_format(self) -> str:
        return OUTPUT_FORMAT[self.format]


# The inverse of each EXIF orientation's transpose (ImageOps.exif_transpose), on arrays.
_TO_STORED = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, 1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, -1),
}


def to_stored(upright: np.ndarray, orientation: int) -> np.ndarray:
    """An upright picture (H x W [x C]) turned back the way a file with this EXIF
    orientation stores it."""
    turn = _TO_STORED.get(orientation)
    return upright if turn is None else np.ascontiguousarray(turn(upright))


def orientation_exif(orientation: int) -> bytes:
    """An EXIF block holding only this orientation (for the mask of a kept-orientation JPEG)."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()


def estimate_jpeg_quality(quantization: dict[int, list[int]] | None) -> int | None:
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


def _classify(exc: Exception, stage: str) -> BadInput:
    """Map what Pillow raised on untrusted bytes to a BadInput code."""
    text = str(exc).lower()
    if isinstance(exc, Image.DecompressionBombError):
        return _refuse(
            f"image header claims too many pixels (decompression bomb): {exc}", "decompression_bomb"
        )
    if "too large" in text:  # a PNG text/ICC chunk inflating past Pillow's safe size
        return _refuse(f"compressed data expands too far: {exc}", "decompression_bomb")
    if isinstance(exc, EOFError) or any(
        w in text for w in ("truncated", "broken data stream", "premature", "out of data")
    ):
        return _refuse(f"image data ends early: {exc}", "truncated_image")
    return _refuse(f"corrupt image {stage}: {type(exc).__name__}: {exc}", "corrupt_image")


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        if any(data.startswith(sig) for sig in _SIGNATURES) or data[8:12] == b"WEBP":
            raise _refuse(
                "the file has an image signature but its header is corrupt", "corrupt_image"
            ) from None
        raise _refuse(
            "not a recognised image (accepted: JPEG, PNG, WEBP, GIF, BMP, TIFF)", "not_an_image"
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything a parser raises on hostile bytes
        raise _classify(exc, "header") from None


@contextmanager
def _pixels_guard() -> Iterator[None]:
    """Errors while reading frames/pixels of an opened file become BadInput."""
    try:
        yield
    except (BadInput, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - anything a decoder raises on hostile bytes
        raise _classify(exc, "data") from None


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


def _split(im: Image.Image, fmt: str) -> tuple[np.ndarray, np.ndarray | None, Image.Image]:
    """Working RGB, alpha and the base image (in the output mode) for an upright frame."""
    mode = im.mode
    if fmt == "GIF" and mode == "P":  # stays a palette GIF: see _palette_rebuild
        return np.asarray(im.convert("RGB")), None, im
    if mode in SIXTEEN_BIT:
        v16 = np.clip(np.asarray(im, dtype=np.int64), 0, 65535).astype(np.uint16)
        v8 = (v16 >> 8).astype(np.uint8)
        return np.repeat(v8[..., None], 3, axis=2), None, Image.fromarray(v16)
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


@dataclass(frozen=True)
class ImageHeader:
    format: str  # Pillow format name ("JPEG", "PNG", ...)
    size: tuple[int, int]

    @property
    def input_extension(self) -> str:
        return EXTENSIONS[self.format]


def _open_checked(data: bytes, s: Settings) -> Image.Image:
    """The opened image after the checks its header allows (no pixel decoded yet)."""
    if not data:
        raise _refuse("the file is empty", "empty_file")
    if len(data) > s.max_bytes:
        raise _refuse(f"file is {len(data)} bytes, over the limit of {s.max_bytes}", "too_large_bytes")
    im = _open(data)
    w, h = im.size
    if w * h > s.max_pixels:
        raise _refuse(f"{w}x{h} = {w * h} pixels, over the limit of {s.max_pixels}", "too_many_pixels")
    if min(w, h) < s.min_side:
        raise _refuse(f"{w}x{h} is smaller than {s.min_side} px on a side", "too_small")
    return im


def probe_image(data: bytes, settings: Settings | None = None) -> ImageHeader:
    """Format and size from the header alone, or BadInput (the checks of decode_image that
    need no pixels: the API's check of an upload; a file whose pixel data is broken fails
    later, in the worker's decode_image)."""
    im = _open_checked(data, settings or get_settings())
    return ImageHeader(im.format or "unknown", im.size)  # always set: opened by its format


def decode_image(data: bytes, settings: Settings | None = None) -> DecodedImage:
    """Decode `data` safely or raise BadInput (codes: empty_file, too_large_bytes,
    not_an_image, corrupt_image, decompression_bomb, too_many_pixels, too_small,
    truncated_image, unsupported_mode)."""
    im = _open_checked(data, settings or get_settings())
    fmt = im.format or "unknown"
    notes: list[str] = []
    with _pixels_guard():
        frames = int(getattr(im, "n_frames", 1) or 1)
        if frames > 1:
            im.seek(0)
            notes.append(f"{frames} frames: only the first is processed")
        ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never padded
        im.load()
        return _finish(data, im, fmt, frames, notes)


def _finish(data: bytes, im: Image.Image, fmt: str, frames: int, notes: list[str]) -> DecodedImage:
    stored_mode = im.mode
    quant = getattr(im, "quantization", None) if fmt in ("JPEG", "MPO") else None
    subsampling = JpegImagePlugin.get_sampling(im) if quant else -1
    icc = im.info.get("icc_profile")
    try:
        orientation = im.getexif().get(ORIENTATION, 1)
        orientation = orientation if orientation in _TO_STORED else 1
        upright = ImageOps.exif_transpose(im) or im
    except Exception as exc:  # noqa: BLE001 - an odd orientation tag is not fatal
        notes.append(f"EXIF orientation ignored: {exc}")
        orientation, upright = 1, im
    exif = _exif_bytes(im, notes)  # after the transpose: this resets Orientation to 1
    rgb, alpha, base = _split(upright, fmt)
    lossless = fmt == "WEBP" and b"VP8L" in data[12:4096] and b"VP8 " not in data[12:4096]
    return DecodedImage(
        rgb=np.ascontiguousarray(rgb),
        alpha=alpha,
        base=base,
        format=fmt,
        mode=stored_mode,
        icc_profile=icc,
        exif=exif,
        jpeg_quality=estimate_jpeg_quality(quant),
        jpeg_qtables=[list(quant[k]) for k in sorted(quant)] if quant else None,
        jpeg_subsampling=subsampling,
        jpeg_progressive=bool(quant and (im.info.get("progressive") or im.info.get("progression"))),
        webp_lossless=lossless,
        frames=frames,
        notes=notes,
        source=data if quant else None,
        orientation=orientation,
    )


def _nearest_palette_index(colours: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Index of the nearest palette entry (squared RGB distance) for each colour (N x 3)."""
    out = np.empty(len(colours), np.uint8)
    pal = palette.astype(np.int32)[None]
    for i in range(0, len(colours), 16384):
        block = colours[i : i + 16384].astype(np.int32)[:, None]
        out[i : i + 16384] = ((block - pal) ** 2).sum(axis=2).argmin(axis=1)
    return out


def _palette_rebuild(base: Image.Image, rgb: np.ndarray, changed: np.ndarray) -> Image.Image:
    """GIF: same palette and indices outside `changed`; inside, the nearest palette colour
    (never the transparent index, and transparent pixels stay transparent)."""
    idx = np.asarray(base).copy()
    palette = np.asarray(base.getpalette("RGB") or [], np.uint8).reshape(-1, 3)
    transparency = base.info.get("transparency")
    choices = np.arange(len(palette))
    if isinstance(transparency, int):
        changed = changed & (idx != transparency)
        choices = choices[choices != transparency]
    if changed.any() and len(choices):
        idx[changed] = choices[_nearest_palette_index(rgb[changed], palette[choices])]
    out = Image.fromarray(idx, "P")
    out.putpalette(palette.reshape(-1).tolist())
    if transparency is not None:
        out.info["transparency"] = transparency
    return out


def _rebuild(dec: DecodedImage, rgb: np.ndarray, changed: np.ndarray) -> Image.Image:
    """The output image in the base's mode: the base everywhere, `rgb` where `changed`."""
    base = dec.base
    if base.mode == "P":
        return _palette_rebuild(base, rgb, changed)
    if base.mode == "RGB":
        return Image.fromarray(rgb, "RGB")
    if base.mode == "RGBA":
        assert dec.alpha is not None  # _split keeps the alpha of every RGBA base
        return Image.fromarray(np.dstack([rgb, dec.alpha]), "RGBA")
    if base.mode == "I;16":
        v16 = np.asarray(base, dtype=np.uint16).copy()
        grey16 = np.asarray(Image.fromarray(rgb, "RGB").convert("L"), dtype=np.uint16)
        v16[changed] = grey16[changed] * 257
        return Image.fromarray(v16)
    out = base.copy()
    if base.mode == "LA":
        grey = Image.fromarray(rgb, "RGB").convert("L")
        new = Image.merge("LA", (grey, base.getchannel("A")))
    else:  # L, CMYK
        new = Image.fromarray(rgb, "RGB").convert(base.mode)
    out.paste(new, (0, 0), Image.fromarray(changed.astype(np.uint8) * 255, "L"))
    return out


@dataclass
class EncodedImage:
    data: bytes
    extension: str
    details: dict[str, Any] = field(default_factory=dict)  # how it was written, for the job's record


def _exact_jpeg(dec: DecodedImage, rgb: np.ndarray) -> EncodedImage | str:
    """The JPEG written by adding the change to the upload's coefficients, or why not. The
    file keeps the upload's EXIF orientation: its pixels stay as the upload stores them."""
    why = jpeg_exact_unsupported(dec.source or b"", dec.format)
    if why is None:
        try:
            exact = encode_jpeg_exact(
                dec.source or b"",
                to_stored(dec.rgb, dec.orientation),
                to_stored(rgb, dec.orientation),
                dec.jpeg_progressive,
            )
        except (OSError, ValueError) as exc:  # libjpeg refused what Pillow read
            return f"coefficients could not be reused: {exc}"
        details: dict[str, Any] = {
            "jpeg_exact": True,
            "jpeg_blocks_changed": exact.blocks_changed,
            "jpeg_blocks_total": exact.blocks_total,
        }
        if dec.orientation != 1:
            details["orientation"] = dec.orientation
        return EncodedImage(exact.data, EXTENSIONS["JPEG"], details)
    return why


def encode_image(
    dec: DecodedImage, rgb: np.ndarray, changed: np.ndarray, settings: Settings | None = None
) -> EncodedImage:
    """Encode the processed `rgb` (pixels outside `changed` must equal `dec.rgb`) in the
    input's format."""
    fmt = dec.output_format
    fallback = None
    if fmt == "JPEG" and dec.source is not None and (settings or get_settings()).jpeg_exact:
        exact = _exact_jpeg(dec, rgb)
        if isinstance(exact, EncodedImage):
            return exact
        fallback = f"JPEG re-encoded in full: {exact}"
    out = _rebuild(dec, rgb, changed)
    kwargs: dict[str, Any] = {}
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
        kwargs["progressive"] = dec.jpeg_progressive
    elif fmt == "PNG":
        kwargs["compress_level"] = 6
    elif fmt == "WEBP":
        kwargs.update(lossless=True, exact=True) if dec.webp_lossless else kwargs.update(quality=90)
    elif fmt == "GIF":
        kwargs.pop("icc_profile", None)
        kwargs["optimize"] = False
        if isinstance(dec.base.info.get("transparency"), int):
            kwargs["transparency"] = dec.base.info["transparency"]
    elif fmt == "TIFF":
        kwargs["compression"] = "tiff_lzw"
    buf = io.BytesIO()
    out.save(buf, fmt, **kwargs)
    details: dict[str, Any] = {"jpeg_exact": False} if fmt == "JPEG" else {}
    if fallback:
        details["jpeg_exact_fallback"] = fallback
    return EncodedImage(buf.getvalue(), EXTENSIONS[fmt], details)
