"""Reference images for tests: PNGs written by hand (stdlib and numpy only), and a catalogue of bad images
with the words the protocol's check answers each with."""

from __future__ import annotations

import numpy as np
from dreampolish.protocol.image import ReferenceImage
from dreampolish.protocol.limits import LIMITS

from tests.support.png import png_bytes


def rgba(h: int = 20, w: int = 30) -> np.ndarray:
    a = np.zeros((h, w, 4), np.uint8)
    a[..., :3] = np.arange(h * w * 3).reshape(h, w, 3) % 251
    a[4:16, 5:25, 3] = 255
    return a


def _bomb() -> bytes:
    """A 32x32 header over the pixel data of a 2048x2048 image (16 MB once inflated, 16 kB on the wire)."""
    return png_bytes(np.zeros((2048, 2048, 4), np.uint8), ihdr_size=(32, 32))


def _crc_broken() -> bytes:
    data = bytearray(png_bytes(rgba()))
    data[40] ^= 0xFF  # inside the IDAT body
    return bytes(data)


BAD_IMAGES = {
    "not a png": (ReferenceImage(png=b"GIF89a" + b"\0" * 40), "not a PNG file"),
    "jpeg": (ReferenceImage(png=b"\xff\xd8\xff\xe0" + b"\0" * 40), "not a PNG file"),
    "empty": (ReferenceImage(png=b""), "empty"),
    "one pixel": (ReferenceImage(png=png_bytes(rgba(1, 1))), "at least 16"),
    "one pixel array": (ReferenceImage(array=np.zeros((1, 1, 4), np.uint8)), "at least 16"),
    "too wide": (ReferenceImage(png=png_bytes(rgba(16, LIMITS.max_reference_image_side + 1))), "limit is 4096"),
    "too tall array": (ReferenceImage(array=np.zeros((5000, 16, 3), np.uint8)), "limit is 4096"),
    "truncated": (ReferenceImage(png=png_bytes(rgba())[:-30]), "truncated"),
    "crc": (ReferenceImage(png=_crc_broken()), "CRC"),
    "bomb": (ReferenceImage(png=_bomb()), "more pixel data than its header declares"),
    "short data": (ReferenceImage(png=png_bytes(rgba(20, 30), ihdr_size=(30, 40))), "truncated or corrupt"),
    "both": (ReferenceImage(png=png_bytes(rgba()), array=rgba()), "exactly one"),
    "float out of range": (ReferenceImage(array=np.full((16, 16, 3), 2.0, np.float32)), r"\[0, 1\]"),
    "int16": (ReferenceImage(array=np.zeros((16, 16, 3), np.uint16)), "uint8 or float32"),
    "two channels": (ReferenceImage(array=np.zeros((16, 16, 2), np.uint8)), r"\(H, W, 3\)"),
}
