"""PNG files written by hand (stdlib and numpy only), so every environment can use them: the backend's
tests and the add-on's, which run in Blender's Python without the `dreampolish` package installed."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bytes(rgba: np.ndarray, ihdr_size: tuple[int, int] | None = None) -> bytes:
    """An 8-bit RGB/RGBA PNG (filter 0 on every row); `ihdr_size` lies about its size."""
    h, w, c = rgba.shape
    raw = b"".join(b"\x00" + rgba[y].astype(np.uint8).tobytes() for y in range(h))
    ww, hh = ihdr_size or (w, h)
    ihdr = struct.pack(">IIBBBBB", ww, hh, 8, 6 if c == 4 else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def png_rgb(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour 8-bit RGB PNG."""
    return png_bytes(np.broadcast_to(np.array(rgb, np.uint8), (height, width, 3)))
