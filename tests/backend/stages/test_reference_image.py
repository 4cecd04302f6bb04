"""The artist's image as the reference view: its mask (alpha, or background removal), centring and scale."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from dreampolish.backend.errors import JobFailed
from dreampolish.backend.stages.reference import ReferenceConfig, decode_image, prepare_image
from dreampolish.protocol.image import ReferenceImage
from PIL import Image


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def _rgba_rectangle(h=90, w=120, box=(10, 30, 60, 80)) -> np.ndarray:
    """A red rectangle on a transparent ground, box = (top, bottom, left, right)."""
    top, bottom, left, right = box
    a = np.zeros((h, w, 4), np.uint8)
    a[top:bottom, left:right] = [200, 30, 20, 255]
    return a


def _bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = torch.nonzero(mask[..., 0] > 0.5, as_tuple=True)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def test_alpha_is_the_mask_and_the_object_is_centred_at_the_reference_framing():
    image = ReferenceImage(png=_png(_rgba_rectangle(box=(10, 30, 60, 110))))  # 20 rows x 50 columns, off-centre
    rgb, mask = prepare_image(image, 64, 48, fill_margin=1.2)
    assert rgb.shape == (48, 64, 3) and mask.shape == (48, 64, 1)
    top, bottom, left, right = _bbox(mask)
    # the longer side (the width, 50 px) becomes min(64, 48) / 1.2 = 40 px; the height follows: 16 px
    assert right - left == pytest.approx(40, abs=1) and bottom - top == pytest.approx(16, abs=1)
    assert (top + bottom) / 2 == pytest.approx(24, abs=1) and (left + right) / 2 == pytest.approx(32, abs=1)
    inside = mask[..., 0] > 0.99
    assert torch.allclose(rgb[inside], torch.tensor([200, 30, 20]) / 255.0, atol=0.02)
    assert torch.allclose(rgb[mask[..., 0] == 0], torch.ones(3))  # white where there is no object


def test_an_opaque_image_gets_its_mask_from_the_background():
    a = np.full((60, 80, 3), 245, np.uint8)
    yy, xx = np.mgrid[0:60, 0:80]
    a[(yy - 20) ** 2 + (xx - 50) ** 2 < 12**2] = [20, 90, 200]  # a blue disc on an off-white ground
    rgb, mask = prepare_image(ReferenceImage(array=a), 64, 64, fill_margin=1.0)
    top, bottom, left, right = _bbox(mask)
    assert bottom - top == pytest.approx(64, abs=1) and right - left == pytest.approx(64, abs=1)
    assert float(mask.mean()) == pytest.approx(np.pi / 4, abs=0.05)  # a disc filling the frame


def test_a_float_array_and_a_16_bit_grey_png_decode():
    floats = np.zeros((20, 20, 4), np.float32)
    floats[5:15, 5:15] = [0.25, 0.5, 0.75, 1.0]
    np.testing.assert_allclose(decode_image(ReferenceImage(array=floats)), floats)
    grey16 = (np.arange(400, dtype=np.uint16).reshape(20, 20) * 150)
    decoded = decode_image(ReferenceImage(png=_png(grey16)))
    assert decoded.shape == (20, 20, 4)
    np.testing.assert_allclose(decoded[..., 0], np.round(grey16 / 257.0) / 255.0, atol=1 / 255)


def test_rembg_as_the_background_removal_needs_its_package(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_rembg(name, *args, **kwargs):
        if name == "rembg":
            raise ImportError("No module named 'rembg'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rembg)
    opaque = ReferenceImage(array=np.full((32, 32, 3), 128, np.uint8))
    with pytest.raises(JobFailed, match="pip install rembg"):
        prepare_image(opaque, 32, 32, 1.2, ReferenceConfig(background_removal="rembg"))


def test_a_fully_transparent_image_fails_clearly():
    with pytest.raises(JobFailed, match="fully transparent"):
        prepare_image(ReferenceImage(array=np.zeros((32, 32, 4), np.uint8)), 32, 32, 1.2)
