"""Colour in the backend: the sRGB curve (protocol/colour.py, shared with the add-on) and perceptual
colour distances.

Inside the backend, colours are display (sRGB-encoded) values: that is what the image priors see and
what the colour fields learn, so renders, previews and bakes use them as they are. Linear values are
what the wire and the files promise for vertex colours (protocol/README.md: `colors` float32 linear;
glTF 2.0 section 3.7.2.1: COLOR_0 is linear), so meshes are converted where they leave or enter the
backend, and shading maths (the render command's head light) runs in linear light.
"""

from __future__ import annotations

import numpy as np
from dreampolish.protocol.colour import linear_to_srgb, srgb_to_linear

__all__ = ["delta_e", "linear_to_srgb", "srgb_to_lab", "srgb_to_linear"]


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
