"""backend/png_samples.py reads a PNG's samples bit for bit, 8 and 16 bits, every filter type, interlaced or not:
against PNGs written here with each filter (PNG specification 9.2, computed from the known samples), against
Pillow on the files Pillow reads exactly (8-bit colour, 16-bit grey, which it writes with its own filter choice),
and against Pillow's loss on 16-bit colour (what the masked refine read before)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from dreampolish.backend.png_samples import png_samples
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.gltf import png_file
from dreampolish.protocol.image import ADAM7
from PIL import Image

COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}


def _filtered_row(row: np.ndarray, above: np.ndarray, kind: int, bpp: int) -> np.ndarray:
    """One scanline filtered with `kind` (bytes as int, 0 outside the image)."""
    x, b = row.astype(np.int32), above.astype(np.int32)
    a = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])
    c = np.concatenate([np.zeros(bpp, np.int32), b[:-bpp]])
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    predictor = [np.zeros_like(x), a, b, (a + b) // 2, paeth][kind]
    return ((x - predictor) % 256).astype(np.uint8)


def _scanlines(samples: np.ndarray, first_kind: int) -> bytes:
    """The filtered scanlines of samples [H,W,C], row r with filter (first_kind + r) % 5."""
    h, w, ch = samples.shape
    big = samples.astype(">u2" if samples.dtype == np.uint16 else np.uint8)
    rows = np.ascontiguousarray(big).reshape(h, -1).view(np.uint8)
    bpp = ch * samples.dtype.itemsize
    out, above = bytearray(), np.zeros(rows.shape[1], np.uint8)
    for r in range(h):
        kind = (first_kind + r) % 5
        out += bytes([kind]) + _filtered_row(rows[r], above, kind, bpp).tobytes()
        above = rows[r]
    return bytes(out)


def _png(samples: np.ndarray, interlaced: bool = False) -> bytes:
    """A PNG of samples [H,W,C] (uint8 or uint16) whose rows use every filter type in turn."""
    h, w, ch = samples.shape
    if interlaced:
        raw = b"".join(_scanlines(samples[y0::dy, x0::dx], i) for i, (x0, y0, dx, dy) in enumerate(ADAM7)
                       if w > x0 and h > y0)
    else:
        raw = _scanlines(samples, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    depth = 16 if samples.dtype == np.uint16 else 8
    header = struct.pack(">IIBBBBB", w, h, depth, COLOUR_TYPES[ch], 0, 0, int(interlaced))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def _samples(dtype, channels: int, h: int = 13, w: int = 11, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, (h, w, channels)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("interlaced", [False, True])
def test_every_filter_type_reads_back_bit_for_bit(dtype, channels, interlaced):
    samples = _samples(dtype, channels)
    got = png_samples(_png(samples, interlaced))
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, samples)


def test_the_up_filtered_files_png_file_writes_read_back():
    samples = _samples(np.uint16, 3, 64, 48, seed=3)
    np.testing.assert_array_equal(png_samples(png_file(samples)), samples)


def test_pillows_own_files_read_as_pillow_reads_them():
    colour = _samples(np.uint8, 4, 40, 37, seed=1)
    buf = io.BytesIO()
    Image.fromarray(colour).save(buf, format="PNG")  # Pillow's adaptive filter choice
    np.testing.assert_array_equal(png_samples(buf.getvalue()), colour)
    # a smooth 16-bit grey ramp with noise, which Pillow reads exactly (mode I;16)
    grey = (np.add.outer(np.arange(50) * 1000, np.arange(60) * 7) + _samples(np.uint16, 1, 50, 60)[..., 0] % 97)
    buf = io.BytesIO()
    Image.fromarray(grey.astype(np.uint16)).save(buf, format="PNG")
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        expected = np.array(im).astype(np.uint16)
    np.testing.assert_array_equal(png_samples(buf.getvalue())[..., 0], expected)


def test_pillow_drops_the_low_byte_of_16_bit_colour_this_reader_keeps_it():
    samples = _samples(np.uint16, 3, seed=2)
    data = png_file(samples)
    with Image.open(io.BytesIO(data)) as im:
        assert np.array(im).dtype == np.uint8  # what backend/refine_mask.py read before
    np.testing.assert_array_equal(png_samples(data), samples)


def test_broken_and_unsupported_files_are_refused_by_name():
    with pytest.raises(ValidationError, match="not a PNG"):
        png_samples(b"GIF89a...")
    data = bytearray(png_file(_samples(np.uint8, 3)))
    with pytest.raises(ValidationError, match="fails its CRC"):
        png_samples(bytes(data[:45]) + bytes([data[45] ^ 1]) + bytes(data[46:]))
    buf = io.BytesIO()
    Image.fromarray(_samples(np.uint8, 3)).convert("P").save(buf, format="PNG")
    with pytest.raises(ValidationError, match="read it with Pillow"):
        png_samples(buf.getvalue())
    short = _png(_samples(np.uint8, 3))
    idat = short.index(b"IDAT")
    (length,) = struct.unpack(">I", short[idat - 4:idat])
    body = zlib.compress(zlib.decompress(short[idat + 4:idat + 4 + length])[:-5])
    cut = (short[:idat - 4] + struct.pack(">I", len(body)) + b"IDAT" + body
           + struct.pack(">I", zlib.crc32(b"IDAT" + body) & 0xFFFFFFFF) + short[idat + 8 + length:])
    with pytest.raises(ValidationError, match="truncated"):
        png_samples(cut)
