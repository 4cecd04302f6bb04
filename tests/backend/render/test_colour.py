"""sRGB <-> linear: the IEC 61966-2-1 curve, for numpy arrays and torch tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dreampolish.backend.render.colour import linear_to_srgb, srgb_to_linear


def test_known_values_of_the_curve():
    # ((0.5 + 0.055) / 1.055) ** 2.4 = 0.21404; the knee 0.04045 / 12.92 = 0.0031308.
    s = np.array([0.0, 0.04045, 0.5, 1.0], np.float32)
    np.testing.assert_allclose(srgb_to_linear(s), [0.0, 0.0031308, 0.2140411, 1.0], atol=1e-6)
    np.testing.assert_allclose(linear_to_srgb(np.array([0.0031308, 0.2140411], np.float32)), [0.04045, 0.5],
                               atol=1e-5)
    assert srgb_to_linear(s).dtype == np.float32


def test_round_trip_and_torch_agrees_with_numpy():
    s = np.linspace(0.0, 1.0, 1001, dtype=np.float32)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(s)), s, atol=1e-5)
    t = torch.as_tensor(s, dtype=torch.float64)
    np.testing.assert_allclose(srgb_to_linear(t).numpy(), srgb_to_linear(s), atol=1e-6)
    np.testing.assert_allclose(linear_to_srgb(t).numpy(), linear_to_srgb(s), atol=1e-6)
    assert isinstance(srgb_to_linear(t), torch.Tensor) and srgb_to_linear(t).dtype == torch.float64


def test_out_of_range_values_are_clamped_and_gradients_are_finite():
    np.testing.assert_allclose(srgb_to_linear(np.array([-0.5, 1.5])), [0.0, 1.0])
    x = torch.tensor([0.0, 0.001, 0.5], requires_grad=True)
    linear_to_srgb(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert float(x.grad[1]) == pytest.approx(12.92)
