"""The reference stage: text-to-image for the reference camera and the offline foreground mask."""

from __future__ import annotations

import numpy as np
import torch
from dreampolish.backend.stages.reference import (
    ReferenceConfig,
    foreground_mask,
    generate_reference,
    generation_size,
)


def disk_image(h: int = 64, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    disk = (yy - 30) ** 2 + (xx - 42) ** 2 < 18**2
    rgb = np.ones((h, w, 3)) * np.array([0.97, 0.97, 0.96])
    rgb[disk] = [0.8, 0.2, 0.1]
    return rgb, disk


def test_mask_finds_an_object_on_a_plain_background():
    rgb, disk = disk_image()
    mask = foreground_mask(rgb)
    assert (mask & disk).sum() / (mask | disk).sum() > 0.98


def test_mask_fills_holes_and_drops_specks():
    rgb, disk = disk_image()
    yy, xx = np.mgrid[0:64, 0:80]
    rgb[(yy - 30) ** 2 + (xx - 42) ** 2 < 5**2] = 0.97  # a background-coloured spot inside the object
    rgb[2:5, 2:5] = [0.1, 0.1, 0.1]  # a speck of dirt near the corner
    mask = foreground_mask(rgb)
    assert mask[30, 42] and not mask[3, 3]
    assert (mask & disk).sum() / (mask | disk).sum() > 0.98


def test_mask_without_a_clear_background_keeps_the_whole_image():
    rgb = np.random.default_rng(0).random((32, 32, 3))
    assert foreground_mask(rgb).all()


def test_generation_keeps_the_camera_aspect_at_native_size():
    assert generation_size(1920, 1080, 512, 8) == (512, 288)
    assert generation_size(600, 800, 512, 64) == (384, 512)


def test_reference_image_for_a_camera_is_reproducible(tiny_priors):
    config = ReferenceConfig(num_inference_steps=2)
    rgb, mask = generate_reference(tiny_priors, "a red teapot", "blurry", 48, 40, seed=5, device="cpu", config=config)
    assert rgb.shape == (40, 48, 3) and mask.shape == (40, 48, 1)
    assert rgb.dtype == mask.dtype == torch.float32
    assert 0 <= float(rgb.min()) and float(rgb.max()) <= 1
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0} and mask.sum() > 0
    again, _ = generate_reference(tiny_priors, "a red teapot", "blurry", 48, 40, seed=5, device="cpu", config=config)
    other, _ = generate_reference(tiny_priors, "a red teapot", "blurry", 48, 40, seed=6, device="cpu", config=config)
    assert torch.equal(rgb, again)
    assert not torch.equal(rgb, other)
