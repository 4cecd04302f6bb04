"""The artist's reference image: PNG bytes or an RGB(A) array, with or without alpha.

Pure Python + numpy (the add-on imports it inside Blender): a PNG is checked without
decoding its pixels. Its chunks are walked (signature, IHDR first, every CRC, IDAT
present, IEND last) and the image data is inflated in bounded pieces, counted and
dropped, so that a truncated, corrupt or "decompression bomb" file is refused here,
before it reaches a backend, with the size the PNG specification (ISO/IEC 15948,
section 7 and Adam7 in section 8) gives for its header:
    bytes = Σ over passes of rows · (1 + ceil(cols · channels · bit_depth / 8)).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import ValidationError
from .limits import LIMITS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
"""Samples per pixel of each PNG colour type (0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA)."""
PNG_BIT_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
"""Bit depths the PNG specification allows for each colour type."""
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
"""Interlace passes: (x0, y0, dx, dy)."""

ARRAY_DTYPES = ("uint8", "float32")


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlaced: bool
    has_alpha: bool
    """An alpha channel (colour types 4 and 6) or a tRNS transparency chunk."""


def _raw_size(h: PngHeader) -> int:
    bits = PNG_CHANNELS[h.colour_type] * h.bit_depth
    passes = ADAM7 if h.interlaced else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        cols = -(-(h.width - x0) // dx) if h.width > x0 else 0
        rows = -(-(h.height - y0) // dy) if h.height > y0 else 0
        if cols and rows:
            total += rows * (1 + -(-(cols * bits) // 8))
    return total


def _chunks(data: bytes):
    """(type, body) of each chunk, with its CRC checked; ValidationError on a broken structure."""
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValidationError("image png is truncated (a chunk header is cut off)")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise ValidationError(f"image png is truncated (chunk {kind!r} is cut off)")
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:end])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise ValidationError(f"image png is corrupt (chunk {kind!r} fails its CRC)")
        yield kind, body
        pos = end


def _header(body: bytes) -> PngHeader:
    if len(body) != 13:
        raise ValidationError("image png has a malformed IHDR chunk")
    width, height, depth, colour, compression, filt, interlace = struct.unpack(">IIBBBBB", body)
    if colour not in PNG_CHANNELS or depth not in PNG_BIT_DEPTHS[colour]:
        raise ValidationError(f"image png has colour type {colour} with bit depth {depth}, which PNG does not allow")
    if compression != 0 or filt != 0 or interlace not in (0, 1):
        raise ValidationError("image png uses an unknown compression, filter or interlace method")
    return PngHeader(width, height, depth, colour, interlace == 1, colour in (4, 6))


def _check_inflates_to(idat: list[bytes], expected: int) -> None:
    """The zlib stream of the IDAT chunks inflates to exactly `expected` bytes (inflated in 1 MiB pieces
    and dropped, never held whole)."""
    inflater = zlib.decompressobj()
    got = 0
    try:
        for pending in [*idat, b""]:  # the empty piece drains output still held back by the 1 MiB cap
            while True:
                piece = inflater.decompress(pending, 1 << 20)
                got += len(piece)
                if got > expected:
                    raise ValidationError("image png holds more pixel data than its header declares")
                pending = inflater.unconsumed_tail
                if not pending and not piece:
                    break
    except zlib.error as exc:
        raise ValidationError(f"image png pixel data is corrupt ({exc})") from None
    if got != expected or not inflater.eof:
        raise ValidationError(f"image png is truncated or corrupt: {got} bytes of pixel data where its header "
                              f"declares {expected}")


def read_png_header(data: bytes) -> PngHeader:
    """Check a whole PNG file's structure and pixel data size (module docstring); returns its header."""
    if len(data) < len(PNG_SIGNATURE) or data[:8] != PNG_SIGNATURE:
        raise ValidationError("image png is not a PNG file (its first bytes are not the PNG signature)")
    header: PngHeader | None = None
    idat: list[bytes] = []
    ended = transparency = False
    for kind, body in _chunks(data):
        if header is None:
            if kind != b"IHDR":
                raise ValidationError("image png does not start with its IHDR chunk")
            header = _header(body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"tRNS":
            transparency = True
        elif kind == b"IEND":
            ended = True
            break
    if header is None or not idat or not ended:
        raise ValidationError("image png is incomplete (no IHDR, no image data or no IEND chunk)")
    _check_side(header.width, header.height)
    _check_inflates_to(idat, _raw_size(header))
    if transparency:
        header = PngHeader(**{**header.__dict__, "has_alpha": True})
    return header


def _check_side(width: int, height: int) -> None:
    lo, hi = LIMITS.min_reference_image_side, LIMITS.max_reference_image_side
    if min(width, height) < lo:
        raise ValidationError(f"image is {width}x{height} pixels; each side must be at least {lo}")
    if max(width, height) > hi:
        raise ValidationError(f"image is {width}x{height} pixels; the limit is {hi} on each side")


@dataclass
class ReferenceImage:
    """The artist's picture of the object, seen from the reference camera. Exactly one of `png` or `array`.

    Where it has transparent pixels (alpha below one half), its alpha is the foreground mask; otherwise the
    backend finds the foreground itself (the reference stage's background removal)."""

    png: bytes | None = None
    """A PNG file (any colour type and bit depth; sRGB)."""
    array: np.ndarray | None = None
    """uint8 (H,W,3|4), or float32 (H,W,3|4) in [0,1]; sRGB colour, straight alpha, row 0 at the top."""

    def validate(self) -> ReferenceImage:
        if (self.png is None) == (self.array is None):
            raise ValidationError("image needs exactly one of png or array")
        if self.png is not None:
            if not isinstance(self.png, (bytes, bytearray, memoryview)):
                raise ValidationError("image png must be bytes")
            if len(self.png) == 0:
                raise ValidationError("image png is empty")
            if len(self.png) > LIMITS.max_reference_image_bytes:
                raise ValidationError(f"image png has {len(self.png)} bytes; the limit is "
                                      f"{LIMITS.max_reference_image_bytes}")
            read_png_header(bytes(self.png))
            return self
        a = self.array
        if not isinstance(a, np.ndarray) or a.dtype.name not in ARRAY_DTYPES or a.ndim != 3 or a.shape[2] not in (3, 4):
            raise ValidationError("image array must be uint8 or float32 with shape (H, W, 3) or (H, W, 4)")
        _check_side(a.shape[1], a.shape[0])
        if a.dtype.kind == "f" and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise ValidationError("image array (float32) must hold finite values in [0, 1]")
        return self

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        if self.array is not None:
            return int(self.array.shape[1]), int(self.array.shape[0])
        h = read_png_header(bytes(self.png or b""))
        return h.width, h.height
