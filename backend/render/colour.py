"""sRGB <-> linear RGB, the one conversion between the two colour encodings.

Inside the backend, colours are display (sRGB-encoded) values: that is what the image priors see and
what the colour fields learn, so renders, previews and bakes use them as they are. Linear values are
what the wire and the files promise for vertex colours (protocol/README.md: `colors` float32 linear;
glTF 2.0 section 3.7.2.1: COLOR_0 is linear), so meshes are converted where they leave or enter the
backend, and shading maths (the render command's head light) runs in linear light.

The curve is the piecewise sRGB transfer function of IEC 61966-2-1:1999, section 5.2 (encode) and
its inverse (decode):
    linear = s / 12.92                     for s <= 0.04045
             ((s + 0.055) / 1.055) ** 2.4   otherwise
    s      = 12.92 * linear                for linear <= 0.0031308
             1.055 * linear ** (1 / 2.4) - 0.055 otherwise
Values are clamped to [0, 1] first (the curve is defined there). Works on numpy arrays and torch
tensors alike and keeps their type, dtype and device.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

_SRGB_KNEE = 0.04045
"""Encoded value where the linear segment of the curve meets the power segment."""
_LINEAR_KNEE = 0.0031308
"""The same point in linear light (0.04045 / 12.92)."""


def srgb_to_linear(srgb: ArrayT) -> ArrayT:
    """Decode display (sRGB) values in [0, 1] to linear light (IEC 61966-2-1)."""
    if isinstance(srgb, torch.Tensor):
        s = srgb.clamp(0.0, 1.0)
        return torch.where(s <= _SRGB_KNEE, s / 12.92, ((s + 0.055) / 1.055) ** 2.4)
    s = np.clip(np.asarray(srgb), 0.0, 1.0)
    out = np.where(s <= _SRGB_KNEE, s / 12.92, np.power((s + 0.055) / 1.055, 2.4))
    return out.astype(s.dtype if s.dtype.kind == "f" else np.float32)


def linear_to_srgb(linear: ArrayT) -> ArrayT:
    """Encode linear light in [0, 1] as display (sRGB) values (IEC 61966-2-1)."""
    if isinstance(linear, torch.Tensor):
        x = linear.clamp(0.0, 1.0)
        # clamp_min keeps pow's gradient finite at 0 (that branch is not selected there anyway)
        return torch.where(x <= _LINEAR_KNEE, 12.92 * x, 1.055 * x.clamp_min(_LINEAR_KNEE) ** (1.0 / 2.4) - 0.055)
    x = np.clip(np.asarray(linear), 0.0, 1.0)
    out = np.where(x <= _LINEAR_KNEE, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)
    return out.astype(x.dtype if x.dtype.kind == "f" else np.float32)


# CIE 1976 L*a*b* of sRGB colours (D65 white), for perceptual colour distances (ΔE*ab): IEC 61966-2-1's
# linear-sRGB -> XYZ matrix, then CIE 15:2004's L*a*b* with its cube-root knee at (6/29)^3.
_SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])


def srgb_to_lab(srgb: np.ndarray) -> np.ndarray:
    """Display (sRGB) colours [..., 3] in [0, 1] -> CIELAB [..., 3] (L* 0-100)."""
    xyz = srgb_to_linear(np.asarray(srgb, np.float64)) @ _SRGB_TO_XYZ.T / _D65_WHITE
    delta = 6.0 / 29.0
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4.0 / 29.0)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def delta_e(srgb_a: np.ndarray, srgb_b: np.ndarray) -> np.ndarray:
    """CIE76 colour difference ΔE*ab between display colours (about 2.3: just noticeable)."""
    return np.linalg.norm(srgb_to_lab(srgb_a) - srgb_to_lab(srgb_b), axis=-1)
