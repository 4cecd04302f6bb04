"""The artist's reference image, read from Blender: an image data-block (opened from a file or already in the
.blend), or the active camera's background image. The active camera is its view (the rig's reference camera).

Blender keeps pixels bottom row first, as floats in [0,1]: for 8-bit images the stored (sRGB) values, for
float images scene-linear values, which go through the sRGB curve (protocol/colour.py), as the
wire wants sRGB. An image larger than the backend's limit is reduced by whole-pixel box averaging, so the
artist's data-block is never changed.
"""

from __future__ import annotations

import math

import bpy
import numpy as np

from .protocol.colour import linear_to_srgb
from .protocol.errors import ValidationError
from .protocol.image import ReferenceImage
from .protocol.limits import Limits

SOURCES = (
    ("NONE", "Prompt Only", "Make the reference view from the prompt"),
    ("IMAGE", "Image", "An image opened from a file or already in Blender is the reference view"),
    ("CAMERA_BACKGROUND", "Camera Background", "The active camera's background image is the reference view"),
    ("CAMERAS", "Cameras", "Every camera of the Rig Cameras collection that has a background image: each picture "
     "seen from its camera"),
)


def camera_background_image(scene: bpy.types.Scene) -> bpy.types.Image | None:
    """The first image among the active camera's background images, or None."""
    cam = scene.camera
    if cam is None or cam.type != "CAMERA":
        return None
    for bg in cam.data.background_images:
        if bg.source == "IMAGE" and bg.image is not None:
            return bg.image
    return None


def chosen_image(scene: bpy.types.Scene) -> bpy.types.Image | None:
    """The image the panel's reference source names (None for a prompt-only job or when it has none)."""
    s = scene.dreampolish
    if s.reference_source == "IMAGE":
        return s.reference_image
    if s.reference_source == "CAMERA_BACKGROUND":
        return camera_background_image(scene)
    return None


def box_reduce(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """(H,W,C) averaged over k×k blocks, k the smallest integer that brings both sides within max_side."""
    h, w = pixels.shape[:2]
    k = max(1, math.ceil(max(h, w) / max_side))
    if k == 1:
        return pixels
    h2, w2 = h // k, w // k
    return pixels[:h2 * k, :w2 * k].reshape(h2, k, w2, k, -1).mean(axis=(1, 3))


def image_pixels(image: bpy.types.Image) -> np.ndarray:
    """The image's pixels as float32 (H,W,4) straight RGBA in sRGB, row 0 at the top."""
    w, h = image.size
    if w == 0 or h == 0:
        raise ValidationError(f"image {image.name!r} has no pixels (is its file missing?)")
    channels = image.channels
    flat = np.empty(w * h * channels, np.float32)
    image.pixels.foreach_get(flat)
    px = flat.reshape(h, w, channels)[::-1]
    if channels < 4:  # grey or RGB without alpha: make RGBA, opaque
        rgb = np.repeat(px[..., :1], 3, axis=-1) if channels < 3 else px[..., :3]
        px = np.concatenate([rgb, np.ones((h, w, 1), np.float32)], axis=-1)
    if image.is_float and image.colorspace_settings.name != "sRGB":
        px = np.concatenate([linear_to_srgb(px[..., :3]), px[..., 3:]], axis=-1)
    return np.ascontiguousarray(np.clip(px, 0.0, 1.0), dtype=np.float32)


def reference_payload(image: bpy.types.Image, limits: Limits) -> ReferenceImage:
    """The image as the request's reference image: uint8 RGBA within the backend's limits, checked by the
    protocol's own validation (ValidationError says what is wrong)."""
    px = box_reduce(image_pixels(image), limits.max_reference_image_side)
    if min(px.shape[:2]) < limits.min_reference_image_side:
        raise ValidationError(f"image {image.name!r} is {image.size[0]}x{image.size[1]} pixels; each side must be "
                              f"at least {limits.min_reference_image_side}")
    rgba = np.round(px * 255.0).astype(np.uint8)
    return ReferenceImage(array=rgba).validate()
