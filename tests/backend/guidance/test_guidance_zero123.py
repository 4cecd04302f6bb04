"""The Zero123-style view-conditioned prior: its relative camera vector, and SDS with the tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from dreampolish.backend.guidance.base import GuidanceInput
from dreampolish.backend.guidance.zero123 import (
    ReferenceView,
    Zero123Guidance,
    Zero123GuidanceConfig,
    relative_camera,
)


@pytest.mark.parametrize(
    ("reference", "view", "expected"),
    [
        # Same view: no change, cos(0) = 1.
        ((0.0, 0.0, 3.8), (0.0, 0.0, 3.8), (0.0, 0.0, 1.0, 0.0)),
        # 30° up and a quarter turn: polar angle shrinks by 30°.
        ((0.0, 0.0, 3.8), (30.0, 90.0, 3.8), (-math.pi / 6, 1.0, 0.0, 0.0)),
        # Behind and below, one unit further away.
        ((0.0, 0.0, 3.8), (-10.0, 180.0, 4.8), (math.pi / 18, 0.0, -1.0, 1.0)),
        # Azimuth wraps: 350° relative to 20° is -30°.
        ((15.0, 20.0, 2.0), (15.0, 350.0, 2.0), (0.0, -0.5, math.sqrt(3) / 2, 0.0)),
    ],
)
def test_relative_camera_for_known_pairs(reference, view, expected):
    el, az, dist = (torch.tensor([v]) for v in view)
    got = relative_camera(el, az, dist, ReferenceView(*reference), "delta_radius")
    torch.testing.assert_close(got[0], torch.tensor(expected), atol=1e-6, rtol=0)


def test_stable_zero123_carries_the_reference_polar_angle():
    got = relative_camera(torch.tensor([20.0]), torch.tensor([45.0]), torch.tensor([5.0]), ReferenceView(30.0, 0.0, 3.8),
                          "reference_polar")
    polar_ref = math.radians(90.0 - 30.0)
    expected = torch.tensor([math.radians(10.0), math.sin(math.radians(45)), math.cos(math.radians(45)), polar_ref])
    torch.testing.assert_close(got[0], expected, atol=1e-6, rtol=0)


def reference_image(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    mask = ((xx**2 + yy**2) < 0.5).float()[..., None]
    rgb = torch.stack([0.8 * torch.ones_like(xx), 0.3 + 0.2 * xx, 0.2 * torch.ones_like(xx)], dim=-1)
    return rgb, mask


def test_zero123_sds_gives_a_finite_loss_whose_gradient_reaches_the_render(tiny_priors, orbit):
    rgb, mask = reference_image()
    guidance = Zero123Guidance(tiny_priors.zero123, rgb, mask, ReferenceView(0.0, 0.0, 3.8))
    render = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    inp = GuidanceInput(rgb=render, opacity=torch.ones(2, 32, 32, 1), cameras=orbit([0.0, 30.0], [60.0, 200.0]))
    out = guidance(inp)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(render.grad).all() and render.grad.abs().sum() > 0
    # The default schedule starts at high noise ([0.7, 0.85]).
    assert 0.7 <= out.diagnostics["t"] <= 0.85


def test_the_camera_changes_the_conditioning(tiny_priors):
    rgb, mask = reference_image()
    guidance = Zero123Guidance(tiny_priors.zero123, rgb, mask, ReferenceView(0.0, 0.0, 3.8), Zero123GuidanceConfig())
    tokens = guidance.conditioning(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 90.0]), torch.tensor([3.8, 3.8]))
    assert tokens.shape == (2, 1, tiny_priors.zero123.unet.config.cross_attention_dim)
    assert not torch.allclose(tokens[0], tokens[1])


@pytest.mark.parametrize("encoding", ["delta_radius", "reference_polar"])
def test_relative_camera_stays_on_the_views_device(encoding):
    # `meta` holds no data but checks devices like CUDA does: a CPU tensor stacked in raises there.
    meta = torch.device("meta")
    el, az, dist = (torch.zeros(3, device=meta) for _ in range(3))
    camera = relative_camera(el, az, dist, ReferenceView(0.0, 0.0, 3.8), encoding)
    assert camera.device == meta and camera.shape == (3, 4)
