"""The reference image field of a submit: round trip, limits, and a clear error for every bad image."""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib

import numpy as np
import pytest
from dreampolish.protocol import codec
from dreampolish.protocol import image as image_module
from dreampolish.protocol import messages as m
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.image import ReferenceImage, read_png_header
from dreampolish.protocol.job import JobSpec, validate_spec
from dreampolish.protocol.limits import LIMITS


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bytes(rgba: np.ndarray, ihdr_size: tuple[int, int] | None = None) -> bytes:
    """An 8-bit RGB/RGBA PNG written by hand (filter 0 on every row); `ihdr_size` lies about its size."""
    h, w, c = rgba.shape
    raw = b"".join(b"\x00" + rgba[y].astype(np.uint8).tobytes() for y in range(h))
    ww, hh = ihdr_size or (w, h)
    ihdr = struct.pack(">IIBBBBB", ww, hh, 8, 6 if c == 4 else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def rgba(h: int = 20, w: int = 30) -> np.ndarray:
    a = np.zeros((h, w, 4), np.uint8)
    a[..., :3] = np.arange(h * w * 3).reshape(h, w, 3) % 251
    a[4:16, 5:25, 3] = 255
    return a


def roundtrip(spec: JobSpec) -> JobSpec:
    msg = m.Submit(spec=spec)
    return codec.decode(codec.encode(msg)).spec


def test_png_and_array_images_travel_unchanged():
    png = png_bytes(rgba())
    back = roundtrip(JobSpec("", image=ReferenceImage(png=png)))
    assert back.image.png == png and back.image.array is None and back.prompt == ""
    arr = rgba()
    back = roundtrip(JobSpec("a chair", image=ReferenceImage(array=arr)))
    np.testing.assert_array_equal(back.image.array, arr)
    floats = (arr[..., :3] / 255.0).astype(np.float32)
    np.testing.assert_array_equal(roundtrip(JobSpec("x", image=ReferenceImage(array=floats))).image.array, floats)
    assert roundtrip(JobSpec("x")).image is None


def test_png_header_reads_size_and_alpha():
    h = read_png_header(png_bytes(rgba(20, 30)))
    assert (h.width, h.height, h.has_alpha) == (30, 20, True)
    assert not read_png_header(png_bytes(rgba(20, 30)[..., :3])).has_alpha
    assert ReferenceImage(png=png_bytes(rgba(20, 30))).size == (30, 20)


def test_prompt_is_optional_with_an_image_only():
    validate_spec(JobSpec("", image=ReferenceImage(png=png_bytes(rgba()))))
    with pytest.raises(ValidationError, match="prompt is empty"):
        validate_spec(JobSpec(""))


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


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_a_bad_image_is_refused_with_a_message_that_says_why(name):
    image, message = BAD_IMAGES[name]
    with pytest.raises(ValidationError, match=message):
        validate_spec(JobSpec("a chair", image=image))


@pytest.mark.parametrize("name", ["not a png", "empty", "one pixel", "bomb", "crc"])
def test_a_bad_image_is_refused_on_decode_too(name):
    image, message = BAD_IMAGES[name]
    frames = codec.encode(m.Submit(spec=JobSpec("a chair", image=image)))
    with pytest.raises(ValidationError, match=message):
        codec.decode(frames)


def test_png_size_limit(monkeypatch):
    png = png_bytes(rgba())
    monkeypatch.setattr(image_module, "LIMITS", dataclasses.replace(LIMITS, max_reference_image_bytes=len(png) - 1))
    with pytest.raises(ValidationError, match="the limit is"):
        ReferenceImage(png=png).validate()


def test_an_image_is_for_generate_jobs_that_run_the_reference_stage():
    image = ReferenceImage(png=png_bytes(rgba()))
    with pytest.raises(ValidationError, match="runs the reference stage"):
        validate_spec(JobSpec("x", image=image, stages=["nerf"]))
    with pytest.raises(ValidationError, match="generate jobs"):
        validate_spec(JobSpec("x", image=image, mode="texture"))


def test_pillow_reads_what_the_check_accepts():
    Image = pytest.importorskip("PIL.Image")
    with Image.open(io.BytesIO(png_bytes(rgba()))) as im:
        assert np.array_equal(np.asarray(im), rgba())
