"""A PNG file's samples exactly as stored, 8 or 16 bits per sample.

Pillow (13.0 here) opens a 16-bit RGB or RGBA PNG as 8-bit "RGB"/"RGBA", dropping each sample's low byte, so a
map read through it and written back is not the map that came. This reads the file itself (PNG specification,
ISO/IEC 15948): the chunks and header as protocol/image.py checks them, the IDAT stream inflated to the size the
header declares, then each scanline's filter undone (section 9.2):
    Raw(x) = Filt(x) + predictor(a, b, c) mod 256
with a the byte bpp to the left, b the byte above, c the byte above-left (0 outside the image), bpp the bytes
of one whole pixel, and the predictor 0 (None), a (Sub), b (Up), floor((a + b) / 2) (Average) or Paeth's.
A byte needs its left, upper and upper-left neighbours undone first, so the image is undone one anti-diagonal of
pixels at a time (pixel (r, c) on diagonal r + c): H + W - 1 numpy steps, each over a whole diagonal.

Bit depths 8 and 16 of grey, grey + alpha, RGB and RGBA, interlaced (Adam7) or not; a tRNS chunk is not applied
(its colour key stays a colour, as Pillow leaves it on an RGB image). Palettes and 1, 2 or 4-bit grey are for
Pillow, which reads them exactly.
"""

from __future__ import annotations

import zlib

import numpy as np
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.image import (
    ADAM7,
    PNG_CHANNELS,
    PNG_SIGNATURE,
    PngHeader,
    _chunks,
    _header,
    _raw_size,
)


def png_header(data: bytes) -> PngHeader:
    """The file's IHDR (ValidationError for a file that is not a PNG)."""
    if bytes(data[:8]) != PNG_SIGNATURE:
        raise ValidationError("not a PNG file (its first bytes are not the PNG signature)")
    kind, body = next(_chunks(bytes(data)), (b"", b""))
    if kind != b"IHDR":
        raise ValidationError("the PNG does not start with its IHDR chunk")
    return _header(body)


def png_samples(data: bytes) -> np.ndarray:
    """uint8 or uint16 [H, W, C] (C 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA), row 0 at the top: the samples the
    file stores, bit for bit. ValidationError for a broken file or one this reader leaves to Pillow (module
    docstring)."""
    data = bytes(data)
    header = png_header(data)
    if header.bit_depth not in (8, 16) or header.colour_type == 3:
        raise ValidationError(f"PNG of bit depth {header.bit_depth}, colour type {header.colour_type}: read it "
                              "with Pillow (this reader takes 8 and 16-bit grey, grey + alpha, RGB and RGBA)")
    channels = PNG_CHANNELS[header.colour_type]
    bpp = channels * header.bit_depth // 8
    raw = _inflate([body for kind, body in _chunks(data) if kind == b"IDAT"], _raw_size(header))
    out = np.zeros((header.height, header.width, bpp), np.uint8)
    passes = ADAM7 if header.interlaced else ((0, 0, 1, 1),)
    pos = 0
    for x0, y0, dx, dy in passes:
        cols = -(-(header.width - x0) // dx) if header.width > x0 else 0
        rows = -(-(header.height - y0) // dy) if header.height > y0 else 0
        if not cols or not rows:
            continue
        size = rows * (1 + cols * bpp)
        scanlines = np.frombuffer(raw, np.uint8, size, pos).reshape(rows, 1 + cols * bpp)
        out[y0::dy, x0::dx] = _unfilter(scanlines, bpp)
        pos += size
    if header.bit_depth == 16:
        return out.reshape(header.height, -1).view(">u2").astype(np.uint16).reshape(header.height, header.width,
                                                                                     channels)
    return out


def _inflate(idat: list[bytes], expected: int) -> bytes:
    """The IDAT chunks' zlib stream inflated, exactly `expected` bytes (the header's size: no more is inflated)."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(idat), expected)
    except zlib.error as exc:
        raise ValidationError(f"the PNG's pixel data is corrupt ({exc})") from None
    if len(raw) != expected:
        raise ValidationError(f"the PNG is truncated: {len(raw)} bytes of pixel data where its header declares "
                              f"{expected}")
    return raw


def _unfilter(scanlines: np.ndarray, bpp: int) -> np.ndarray:
    """uint8 [rows, cols, bpp] of the filtered scanlines [rows, 1 + cols * bpp] (module docstring)."""
    rows = scanlines.shape[0]
    kinds = scanlines[:, 0].astype(np.int16)
    if kinds.max(initial=0) > 4:
        raise ValidationError(f"the PNG has a scanline of unknown filter type {int(kinds.max())}")
    filtered = scanlines[:, 1:].reshape(rows, -1, bpp).astype(np.int16)
    cols = filtered.shape[1]
    if np.isin(kinds, (0, 2)).all():  # None and Up only (protocol/gltf.py's png_file): a sum down each column
        undone = np.where((kinds == 0)[:, None, None], 0, 1)
        out = filtered.copy()
        for r in range(1, rows):
            out[r] = (out[r] + undone[r] * out[r - 1]) & 0xFF
        return out.astype(np.uint8)
    done = np.zeros((rows + 1, cols + 1, bpp), np.int16)  # a zero row above and a zero column to the left
    for k in range(rows + cols - 1):
        r = np.arange(max(0, k - cols + 1), min(rows - 1, k) + 1)
        c = k - r
        a, b, ul = done[r + 1, c], done[r, c + 1], done[r, c]
        p = a + b - ul
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - ul)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, ul))
        kind = kinds[r][:, None]
        predictor = np.select([kind == 1, kind == 2, kind == 3, kind == 4], [a, b, (a + b) // 2, paeth], 0)
        done[r + 1, c + 1] = (filtered[r, c] + predictor) & 0xFF
    return done[1:, 1:].astype(np.uint8)
