"""sRGB <-> linear RGB: the one sRGB curve, for the backend and the add-on alike.

Display (sRGB-encoded) values are what image files and the image priors hold; linear values are what
the wire promises for vertex colours (README.md: `colors` float32 linear; glTF 2.0 section 3.7.2.1:
COLOR_0 is linear) and what Blender keeps in float images.

The curve is the piecewise sRGB transfer function of IEC 61966-2-1:1999, section 5.2 (encode) and
its inverse (decode):
    linear = s / 12.92                     for s <= 0.04045
             ((s + 0.055) / 1.055) ** 2.4   otherwise
    s      = 12.92 * linear                for linear <= 0.0031308
             1.055 * linear ** (1 / 2.4) - 0.055 otherwise
Values are clamped to [0, 1] first (the curve is defined there). Works on numpy arrays (and
anything numpy reads as one) and on torch tensors, whose type, dtype and device it keeps, without
importing torch: the add-on vendors this package into Blender, where there is none.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["LINEAR_KNEE", "SRGB_KNEE", "linear_to_srgb", "srgb_to_linear"]

SRGB_KNEE = 0.04045
"""Encoded value where the linear segment of the curve meets the power segment."""
LINEAR_KNEE = 0.0031308
"""The same point in linear light (0.04045 / 12.92)."""


def srgb_to_linear(srgb: Any) -> Any:
    """Decode display (sRGB) values in [0, 1] to linear light (IEC 61966-2-1)."""
    s = _clamped(srgb)
    return _piecewise(s <= SRGB_KNEE, s / 12.92, ((s + 0.055) / 1.055) ** 2.4, like=s)


def linear_to_srgb(linear: Any) -> Any:
    """Encode linear light in [0, 1] as display (sRGB) values (IEC 61966-2-1)."""
    x = _clamped(linear)
    # The power's base is kept at or above the knee (below it that branch is not chosen), so that a
    # tensor's gradient stays finite at 0.
    return _piecewise(x <= LINEAR_KNEE, 12.92 * x, 1.055 * x.clip(min=LINEAR_KNEE) ** (1.0 / 2.4) - 0.055, like=x)


def _is_tensor(values: Any) -> bool:
    return type(values).__module__.partition(".")[0] == "torch"


def _clamped(values: Any) -> Any:
    """A tensor clamped as it is; anything else as a numpy array."""
    if _is_tensor(values):
        return values.clamp(0.0, 1.0)
    return np.clip(np.asarray(values), 0.0, 1.0)


def _piecewise(condition: Any, chosen: Any, other: Any, like: Any) -> Any:
    """`chosen` where `condition` holds, else `other`: a tensor's own where (torch.Tensor.where), or
    numpy's, whose result keeps a float input's dtype (float32 for any other input)."""
    if _is_tensor(like):
        return chosen.where(condition, other)
    return np.where(condition, chosen, other).astype(like.dtype if like.dtype.kind == "f" else np.float32)
