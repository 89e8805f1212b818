"""JPEG results that keep the upload's own DCT coefficients wherever nothing changed.

A JPEG is a grid of 8x8 blocks of quantised DCT coefficients per component. Rather than
decode and re-encode the whole photo (a second generation of loss on every pixel), this
adds the *change* to the upload's coefficients: for each component,
`coef += round(DCT(delta) / Q)` where `delta` is the restored minus the decoded upload, in
the component's YCbCr plane at its own sampling, and Q is the upload's quantisation table.
A block whose delta is zero keeps its coefficients bit for bit, so it decodes to exactly
the upload's pixels; the upload's content inside a changed block is not re-quantised
either, only the change is. Tables, sampling factors, markers (EXIF, ICC, comments) and
progressive or baseline mode are kept; Huffman tables are re-optimised. Pixels next to
a changed block can still move by the chroma upsampling's reach (one pixel beyond a changed
MCU when chroma is subsampled), as in any decoder that interpolates chroma.

`jpeg_exact_unsupported` says why an upload cannot take this path (the caller falls back to
a full re-encode): arithmetic coding, lossless or 12-bit JPEG, CMYK/YCCK, multi-picture
files. The arrays given are in the file's stored orientation (an EXIF-rotated upload keeps
its tag, and its pixels stay as stored).
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass

import jpeglib
import numpy as np
from numpy.typing import NDArray

# Orthonormal 8-point DCT-II matrix: JPEG's 2-D DCT of a block B is D @ B @ D.T.
_K = np.arange(8)
_DCT = np.sqrt(np.where(_K == 0, 1.0, 2.0) / 8.0)[:, None] * np.cos(
    (2 * _K[None, :] + 1) * _K[:, None] * np.pi / 16
)
# BT.601 full-range RGB -> YCbCr as JPEG (JFIF) defines it; the offsets cancel in a delta.
_RGB_TO_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
# libjpeg builds bundled with jpeglib: 6b writes baseline files; mozjpeg writes progressive
# ones (and ignores a request for baseline). Neither touches the coefficients it is given.
_WRITER = {False: "6b", True: "mozjpeg403"}
_LIBJPEG = threading.Lock()  # jpeglib's choice of library is process-wide
# Largest quantised coefficient a baseline file can carry: 11 bits for DC, 10 for AC.
_LIMIT = np.full((8, 8), 1023)
_LIMIT[0, 0] = 2047
# Start-of-frame markers this path handles: baseline (C0), extended Huffman (C1), progressive (C2).
_HUFFMAN_SOF = {0xC0, 0xC1, 0xC2}
_OTHER_SOF = {
    0xC3: "lossless JPEG",
    0xC5: "hierarchical JPEG",
    0xC6: "hierarchical JPEG",
    0xC7: "hierarchical JPEG",
    0xC9: "arithmetic coding",
    0xCA: "arithmetic coding",
    0xCB: "arithmetic coding",
    0xCD: "arithmetic coding",
    0xCE: "arithmetic coding",
    0xCF: "arithmetic coding",
}


@dataclass
class ExactJpeg:
    data: bytes
    blocks_changed: int  # MCUs whose coefficients differ from the upload's
    blocks_total: int  # MCUs in the image


def reach_of_change(changed: np.ndarray, mcu: tuple[int, int]) -> np.ndarray:
    """The pixels (bool H x W) a change at `changed` can move on this path: every MCU
    (`mcu` = (height, width) in px) it touches, grown by one pixel for chroma upsampling.
    Everything else decodes exactly as the upload did."""
    mh, mw = mcu
    h, w = changed.shape
    grid = np.zeros((-(-h // mh), -(-w // mw)), bool)
    ys, xs = np.nonzero(changed)
    grid[ys // mh, xs // mw] = True
    region = np.pad(np.kron(grid, np.ones((mh, mw), bool))[:h, :w], 1)
    grown = np.zeros((h, w), bool)
    for dy in range(3):
        for dx in range(3):
            grown |= region[dy : dy + h, dx : dx + w]
    return grown


def _frame_header(data: bytes) -> tuple[int, int, int] | None:
    """(SOF marker, sample precision, component count) of the first frame, or None."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 10 > len(data):
                return None
            return marker, data[i + 4], data[i + 9]
        if marker == 0xDA:  # scan before any frame header
            return None
        i += 2 + length
    return None


def jpeg_exact_unsupported(data: bytes, fmt: str) -> str | None:
    """Why this upload cannot keep its coefficients, or None when it can."""
    if fmt != "JPEG":
        return "multi-picture JPEG (MPO): its other pictures would be left pointing nowhere"
    header = _frame_header(data)
    if header is None:
        return "no readable frame header"
    marker, precision, components = header
    if marker not in _HUFFMAN_SOF:
        return _OTHER_SOF.get(marker, f"frame type 0x{marker:02X}")
    if precision != 8:
        return f"{precision}-bit samples"
    if components not in (1, 3):
        return f"{components} colour components (CMYK/YCCK)"
    return None


def _ycc_delta(old_rgb: np.ndarray, new_rgb: np.ndarray, components: int) -> list[np.ndarray]:
    delta = new_rgb.astype(np.float32) - old_rgb.astype(np.float32)
    return [delta @ _RGB_TO_YCC[c].astype(np.float32) for c in range(components)]


def _component_plane(delta: np.ndarray, factor_y: int, factor_x: int, blocks: tuple[int, int]) -> np.ndarray:
    """`delta` box-downsampled by the component's factors (as libjpeg does) and edge-padded
    to `blocks` whole blocks (past the image's edge, as an encoder pads)."""
    h, w = delta.shape
    ph, pw = -h % factor_y, -w % factor_x
    if ph or pw:
        delta = np.pad(delta, ((0, ph), (0, pw)), mode="edge")
    small = delta.reshape(delta.shape[0] // factor_y, factor_y, delta.shape[1] // factor_x, factor_x).mean(
        axis=(1, 3)
    )
    bh, bw = blocks[0] * 8, blocks[1] * 8
    return np.pad(small, ((0, bh - small.shape[0]), (0, bw - small.shape[1])), mode="edge")


def _mcu_window(changed: np.ndarray, mcu: tuple[int, int]) -> tuple[int, int, int, int]:
    """(first row, end row, first col, end col) in MCUs of the box around `changed`."""
    rows, cols = np.nonzero(changed.any(axis=1))[0], np.nonzero(changed.any(axis=0))[0]
    return (rows[0] // mcu[0], rows[-1] // mcu[0] + 1, cols[0] // mcu[1], cols[-1] // mcu[1] + 1)


def _add_delta(coef: np.ndarray, plane: np.ndarray, qt: np.ndarray) -> np.ndarray:
    """coef (by x bx x 8 x 8) plus the quantised DCT of `plane`; True where a block changed."""
    by, bx = coef.shape[:2]
    blocks = plane.reshape(by, 8, bx, 8).swapaxes(1, 2)
    touched: NDArray[np.bool_] = np.abs(blocks).max(axis=(2, 3)) > 1e-9
    if touched.any():
        dct = np.einsum("ij,njk,lk->nil", _DCT, blocks[touched], _DCT)
        step = np.rint(dct / qt).astype(np.int32)
        new = np.clip(coef[touched].astype(np.int32) + step, -_LIMIT, _LIMIT).astype(coef.dtype)
        differs = (new != coef[touched]).any(axis=(1, 2))
        coef[touched] = new
        changed = np.zeros_like(touched)
        changed[touched] = differs
        return changed
    return touched


def encode_jpeg_exact(data: bytes, old_rgb: np.ndarray, new_rgb: np.ndarray, progressive: bool) -> ExactJpeg:
    """The upload `data` with the change `new_rgb - old_rgb` (both H x W x 3 uint8, `old_rgb`
    the upload as decoded) added to its coefficients."""
    changed = (new_rgb != old_rgb).any(axis=2)
    with _LIBJPEG, tempfile.TemporaryDirectory(prefix="clearmark-jpeg-") as tmp:
        src, dst = os.path.join(tmp, "in.jpg"), os.path.join(tmp, "out.jpg")
        with open(src, "wb") as fh:
            fh.write(data)
        jpeglib.version.set(_WRITER[False])
        jpeg = jpeglib.read_dct(src)
        if (jpeg.width, jpeg.height) != (old_rgb.shape[1], old_rgb.shape[0]):
            raise ValueError(
                f"libjpeg reads {jpeg.width}x{jpeg.height}, Pillow {old_rgb.shape[1]}x{old_rgb.shape[0]}"
            )
        components = jpeg.num_components
        if components == 3 and jpeg.jpeg_color_space != jpeglib.Colorspace.JCS_YCbCr:
            raise ValueError(f"colour space {jpeg.jpeg_color_space} is not YCbCr")
        factors = np.asarray(jpeg.samp_factor).reshape(-1, 2)[:components]  # (v, h)
        vmax, hmax = int(factors[:, 0].max()), int(factors[:, 1].max())
        mcu = (8 * vmax, 8 * hmax)
        total = -(-old_rgb.shape[0] // mcu[0]) * -(-old_rgb.shape[1] // mcu[1])
        if not changed.any():
            return ExactJpeg(data, 0, total)
        jpeg.load()
        planes = [jpeg.Y] if components == 1 else [jpeg.Y, jpeg.Cb, jpeg.Cr]
        r0, r1, c0, c1 = _mcu_window(changed, mcu)
        window = (slice(r0 * mcu[0], r1 * mcu[0]), slice(c0 * mcu[1], c1 * mcu[1]))
        deltas = _ycc_delta(old_rgb[window], new_rgb[window], components)
        mcu_changed = np.zeros((r1 - r0, c1 - c0), bool)
        for c, ((v, h), delta, coef) in enumerate(zip(factors, deltas, planes)):
            sub = coef[r0 * v : r1 * v, c0 * h : c1 * h]  # a view: edited in place
            plane = _component_plane(delta, vmax // v, hmax // h, sub.shape[:2])
            rows, cols = np.nonzero(_add_delta(sub, plane, jpeg.qt[jpeg.quant_tbl_no[c]]))
            mcu_changed[rows // v, cols // h] = True
        if not mcu_changed.any():
            return ExactJpeg(data, 0, total)
        jpeglib.version.set(_WRITER[progressive])
        jpeg.write_dct(dst, flags=["+OPTIMIZE_CODING"])
        with open(dst, "rb") as fh:
            out = fh.read()
    return ExactJpeg(out, int(mcu_changed.sum()), total)
