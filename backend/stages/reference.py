"""The reference stage: the picture of the object at the reference camera, its foreground mask, and the
estimated depth and normals of that view.

The picture is the artist's (a ReferenceImage in the request) or made from the prompt.

The image comes from the text-to-image prior (StableDiffusionPipeline on the
loaded modules) with the prompt's "front view" suffix, since the reference
camera defines the front, and a plain-background cue so that the mask can be
found offline. It is generated at the model's native resolution with the
reference camera's aspect ratio, then resized to the camera's resolution.

Foreground mask (offline, no segmentation model):
  1. the background colour is the median colour of the image border;
  2. pixels within `background_tolerance` (RGB distance) of it are background
     candidates; those connected to the border (4-connectivity) are background;
  3. the rest is foreground; its largest connected component is kept and its
     holes are filled.
If that leaves almost nothing (or almost everything), the image has no clear
background and the whole image is taken as foreground, with a warning.

The artist's image (`prepare_image`): its alpha is the mask where it has
transparent pixels; otherwise the `background_removal` method finds it: the flood
fill above, or `rembg` (PyPI `rembg`, a U²-Net family segmenter run by
onnxruntime; optional, offline once its weights are in $U2NET_HOME). The
foreground is then centred and scaled so that its bounding box's longer side is
the shorter image side over `fill_margin`, as DreamCraft3D's preprocess_image.py
recentres its input (its desired_size = size · (1 − border_ratio)), and composited
over white.

Depth and normals (`estimate_geometry`): Marigold (diffusers' MarigoldDepthPipeline,
prs-eth/marigold-depth-v1-1, and the normals pipeline the polish stage uses) on the
reference image, as DreamCraft3D estimates them for its input (preprocess_image.py,
with Omnidata DPT there): depth normalised to [0, 1] inside the mask (near 0, far 1;
Marigold's affine-invariant depth has that order), 0 outside, for the stages'
relative-depth loss (1 − Pearson, `lambda_depth_rel`); unit camera-frame normals,
zero outside, for the reference normal loss. Each is only estimated when a stage
weighs its loss (DreamCraft3D: `requires_depth` / `requires_normal` follow the
lambdas).
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from dreampolish.protocol.errors import (
    BACKGROUND_REMOVAL_FAILED,
    EMPTY_REFERENCE,
    MISSING_PACKAGE,
    ValidationError,
)
from dreampolish.protocol.image import ReferenceImage
from PIL import Image
from scipy import ndimage
from torch import Tensor

from ..config_fields import ranged
from ..errors import JobFailed
from ..guidance.normals import MARIGOLD_TO_CAMERA
from ..guidance.text_prior import view_prompt
from ..models.loading import PriorModels

logger = logging.getLogger(__name__)


@dataclass
class ReferenceEstimatorConfig:
    """How Marigold estimates the reference view's depth and normals."""

    num_inference_steps: int | None = ranged(None, 1, 500)
    """Denoising steps; None = the checkpoint's default_denoising_steps (4 for the v1-1 models)."""
    ensemble_size: int = ranged(1, 1, 64)
    """Predictions averaged (Marigold's test-time ensembling)."""
    processing_resolution: int | None = ranged(None, 0, 4096)
    """Side the estimator works at; None = the checkpoint's default (768 for v1-1)."""


@dataclass
class ReferenceConfig:
    """Settings of the reference image and its mask."""

    num_inference_steps: int = ranged(30, 1, 500)
    """Denoising steps of the text-to-image pipeline."""
    guidance_scale: float = ranged(7.5, 0, 100)
    """CFG scale of the text-to-image pipeline."""
    background_prompt: str = "isolated on a plain white background"
    """Appended to the prompt so that the object stands on a plain background the mask can find."""
    background_tolerance: float = ranged(0.12, 0, 1)
    """RGB distance (colours in [0,1]) within which a pixel counts as background colour."""
    min_foreground_fraction: float = ranged(0.005, 0, 1)
    """Below this share of the image the mask is considered failed (whole image used)."""
    max_foreground_fraction: float = ranged(0.98, 0, 1)
    """Above this share the mask is considered failed (whole image used)."""
    background_removal: Literal["flood_fill", "rembg"] = "flood_fill"
    """How the artist's image gets its mask when its alpha has none: the border flood fill (module
    docstring), or the optional `rembg` package (its `rembg_model`)."""
    rembg_model: str = "u2net"
    """rembg's model name (e.g. "u2net", "isnet-general-use", "birefnet-general")."""
    estimator: ReferenceEstimatorConfig = field(default_factory=ReferenceEstimatorConfig)
    """Marigold settings for the reference depth and normals."""
    square: bool = False
    """Generate a square image at the model's native size and fit it into the camera's frame by its shorter
    side, the rest filled with the image's background colour, instead of generating at the camera's aspect:
    for priors trained on square images only (the micro priors make noise at 64 x 32)."""


def border_colour(rgb: np.ndarray) -> np.ndarray:
    """[3] the median colour of an (H,W,3) image's border: what the mask takes for its background."""
    return np.median(np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]), axis=0)


def generation_size(width: int, height: int, native: int, multiple: int) -> tuple[int, int]:
    """(w, h) with the aspect of width:height, the longer side = native, each a multiple of `multiple`."""
    scale = native / max(width, height)
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    return w, h


def foreground_mask(rgb: np.ndarray, config: ReferenceConfig | None = None) -> np.ndarray:
    """rgb float (H,W,3) in [0,1] -> bool (H,W) foreground, by background flood fill (module docstring)."""
    config = config or ReferenceConfig()
    h, w, _ = rgb.shape
    background_colour = border_colour(rgb)
    near = np.linalg.norm(rgb - background_colour, axis=-1) < config.background_tolerance
    labels, _ = ndimage.label(near)  # 4-connectivity: background must not leak through diagonal edges
    border_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, border_labels[border_labels > 0])
    foreground = ~background
    parts, count = ndimage.label(foreground, structure=np.ones((3, 3)))
    if count > 1:
        sizes = ndimage.sum(foreground, parts, index=np.arange(1, count + 1))
        foreground = parts == (1 + int(np.argmax(sizes)))
    foreground = ndimage.binary_fill_holes(foreground)
    fraction = float(foreground.mean())
    if not (config.min_foreground_fraction <= fraction <= config.max_foreground_fraction):
        logger.warning("reference mask found no clear background (foreground %.1f%%); using the whole image", 100 * fraction)
        return np.ones((h, w), dtype=bool)
    return foreground


@torch.no_grad()
def generate_reference(
    models: PriorModels,
    prompt: str,
    negative_prompt: str,
    width: int,
    height: int,
    seed: int,
    device: torch.device | str,
    config: ReferenceConfig | None = None,
) -> tuple[Tensor, Tensor]:
    """The reference image for a camera of width x height pixels: (rgb [H,W,3] in [0,1], mask [H,W,1] in {0,1}),
    both float32 on `device`. The same arguments on the same device give the same image."""
    config = config or ReferenceConfig()
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    t2i = models.text_to_image
    # Latent sides must survive the VAE and every UNet downsampling; the pipeline also wants multiples of 8.
    multiple = math.lcm(8, t2i.vae_scale_factor * 2 ** (len(t2i.unet.config.block_out_channels) - 1))
    if config.square:
        gen_w = gen_h = generation_size(1, 1, t2i.native_resolution, multiple)[0]
    else:
        gen_w, gen_h = generation_size(width, height, t2i.native_resolution, multiple)
    text = view_prompt(prompt, "front")
    if config.background_prompt:
        text = f"{text}, {config.background_prompt}"
    pipe = t2i.pipeline()
    image = pipe(
        prompt=text,
        negative_prompt=negative_prompt or None,
        width=gen_w,
        height=gen_h,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        generator=torch.Generator(device="cpu").manual_seed(seed),
        output_type="pt",
    ).images  # [1,3,gen_h,gen_w] in [0,1]
    image = image.float()
    if config.square and width != height:
        image = _fit_square(image, width, height)
    elif (gen_h, gen_w) != (height, width):
        downsample = gen_h > height or gen_w > width
        image = F.interpolate(image, (height, width), mode="bilinear", align_corners=False, antialias=downsample)
    rgb = image[0].permute(1, 2, 0).clamp(0, 1).cpu()
    mask = torch.from_numpy(foreground_mask(rgb.numpy(), config)).float()[..., None]
    logger.info("reference image %dx%d (generated at %dx%d), foreground %.1f%%", width, height, gen_w, gen_h,
                100 * float(mask.mean()))
    return rgb.to(device), mask.to(device)


def _fit_square(image: Tensor, width: int, height: int) -> Tensor:
    """[1,3,S,S] -> [1,3,height,width]: the square scaled to the shorter side and centred, the rest filled
    with the square's border colour, the colour the mask then takes for the background."""
    side = min(width, height)
    small = F.interpolate(image, (side, side), mode="bilinear", align_corners=False, antialias=True)
    fill = torch.from_numpy(border_colour(image[0].permute(1, 2, 0).cpu().numpy())).to(image)
    out = fill.reshape(1, 3, 1, 1).expand(1, 3, height, width).clone()
    top, left = (height - side) // 2, (width - side) // 2
    out[:, :, top:top + side, left:left + side] = small
    return out


# --- the artist's image ---------------------------------------------------------------------------


def decode_image(image: ReferenceImage) -> np.ndarray:
    """A validated ReferenceImage -> float32 (H,W,4) straight RGBA in [0,1] (alpha 1 where it has none)."""
    if image.array is not None:
        a = np.asarray(image.array)
        a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
        if a.shape[2] == 3:
            a = np.concatenate([a, np.ones_like(a[..., :1])], axis=-1)
        return a
    try:
        with Image.open(io.BytesIO(bytes(image.png or b""))) as im:
            im.load()
            # 16-bit greys ("I;16", "I") would clip in a straight RGBA conversion: scale them to 8 bits first.
            if im.mode in ("I;16", "I;16B", "I"):
                im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8))
            rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ValidationError(f"image png cannot be decoded: {exc}") from None
    return rgba


def image_mask(rgba: np.ndarray, config: ReferenceConfig) -> np.ndarray:
    """float (H,W) foreground in [0,1]: the alpha where it has transparent pixels, else background removal."""
    alpha = rgba[..., 3]
    if float(alpha.max()) < 0.5:
        raise JobFailed(EMPTY_REFERENCE, "the reference image is fully transparent: there is no object in it")
    if float(alpha.min()) < 0.5:
        return alpha
    rgb = rgba[..., :3]
    if config.background_removal == "rembg":
        return rembg_mask(rgb, config.rembg_model)
    return foreground_mask(rgb, config).astype(np.float32)


def rembg_mask(rgb: np.ndarray, model: str) -> np.ndarray:
    """float (H,W) foreground from the optional `rembg` package (JobFailed when it is missing or cannot run)."""
    try:
        from rembg import new_session, remove
    except ImportError:
        raise JobFailed(MISSING_PACKAGE, "reference.generation.background_removal is 'rembg', but the rembg "
                                           "package is not installed (pip install rembg)") from None
    try:
        session = new_session(model)
        mask = remove(Image.fromarray((rgb * 255).round().astype(np.uint8)), session=session, only_mask=True)
    except Exception as exc:  # rembg raises what onnxruntime or its downloader raise
        raise JobFailed(BACKGROUND_REMOVAL_FAILED, f"rembg ({model}) could not segment the image: {exc}; its "
                                                     "weights must be in $U2NET_HOME when offline") from None
    return np.asarray(mask, dtype=np.float32) / 255.0


def recentre(rgb: Tensor, mask: Tensor, width: int, height: int, fill_margin: float) -> tuple[Tensor, Tensor]:
    """rgb [H,W,3] straight colour, mask [H,W,1] -> the same, width x height, the mask's bounding box centred
    and scaled so that its longer side is min(width, height) / fill_margin (module docstring)."""
    ys, xs = torch.nonzero(mask[..., 0] > 0.5, as_tuple=True)
    if len(ys) == 0:
        raise JobFailed(EMPTY_REFERENCE, "the reference image has no foreground (its mask is empty)")
    top, bottom, left, right = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    both = torch.cat([rgb * mask, mask], -1)[top:bottom, left:right].permute(2, 0, 1)[None]
    scale = min(width, height) / fill_margin / max(bottom - top, right - left)
    new_h, new_w = max(1, round((bottom - top) * scale)), max(1, round((right - left) * scale))
    both = F.interpolate(both, (new_h, new_w), mode="bilinear", align_corners=False, antialias=scale < 1)[0]
    canvas = torch.zeros(4, height, width)
    y0, x0 = (height - new_h) // 2, (width - new_w) // 2
    # A fill_margin below 1 makes the object larger than the frame: keep the part inside it.
    sy, sx = max(0, -y0), max(0, -x0)
    h, w = min(new_h - sy, height), min(new_w - sx, width)
    canvas[:, max(0, y0):max(0, y0) + h, max(0, x0):max(0, x0) + w] = both[:, sy:sy + h, sx:sx + w]
    premultiplied, alpha = canvas[:3].permute(1, 2, 0), canvas[3:].permute(1, 2, 0).clamp(0, 1)
    straight = premultiplied / alpha.clamp(min=1e-6)
    return straight.clamp(0, 1) * (alpha > 0), alpha


def prepare_image(image: ReferenceImage, width: int, height: int, fill_margin: float,
                  config: ReferenceConfig | None = None, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """The artist's image as the reference view of width x height: (rgb [H,W,3] over white, mask [H,W,1]),
    float32 on `device` (module docstring: mask, centring and scale)."""
    config = config or ReferenceConfig()
    rgba = decode_image(image)
    mask = torch.from_numpy(np.ascontiguousarray(image_mask(rgba, config)))[..., None].float()
    rgb = torch.from_numpy(np.ascontiguousarray(rgba[..., :3])).float()
    rgb, mask = recentre(rgb, mask, width, height, fill_margin)
    rgb = rgb * mask + (1 - mask)
    logger.info("reference image from the request: %dx%d -> %dx%d, foreground %.1f%%", rgba.shape[1],
                rgba.shape[0], width, height, 100 * float(mask.mean()))
    return rgb.to(device), mask.to(device)


def prepare_exact(image: ReferenceImage, width: int, height: int, config: ReferenceConfig | None = None,
                  device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """A picture of a multi-view request as its camera took it, resized to width x height (its camera's
    aspect: pipeline/views.py checks it), not recentred: (rgb [H,W,3] over white, mask [H,W,1])."""
    config = config or ReferenceConfig()
    rgba = decode_image(image)
    mask = torch.from_numpy(np.ascontiguousarray(image_mask(rgba, config)))[None, None].float()
    rgb = torch.from_numpy(np.ascontiguousarray(rgba[..., :3])).permute(2, 0, 1)[None].float()
    both = F.interpolate(torch.cat([rgb * mask, mask], 1), (height, width), mode="area")[0].permute(1, 2, 0)
    alpha = both[..., 3:].clamp(0, 1)
    straight = (both[..., :3] / alpha.clamp(min=1e-6)).clamp(0, 1)
    return (straight * alpha + (1 - alpha)).to(device), alpha.to(device)


# --- depth and normals of the reference view ------------------------------------------------------


@torch.no_grad()
def _marigold(pipeline: Any, rgb: Tensor, config: ReferenceEstimatorConfig, seed: int) -> Tensor:
    """rgb [H,W,3] in [0,1] -> the pipeline's prediction [C,H,W] at the image's resolution."""
    device = getattr(pipeline, "device", rgb.device)
    out = pipeline(
        rgb.permute(2, 0, 1)[None].float().clamp(0, 1).to(device),
        num_inference_steps=config.num_inference_steps,
        ensemble_size=config.ensemble_size,
        processing_resolution=config.processing_resolution,
        match_input_resolution=True,
        output_type="pt",
        generator=torch.Generator(device="cpu").manual_seed(seed),
    )
    return out.prediction[0].float().to(rgb.device)


def estimate_geometry(depth_pipeline: Any | None, normals_pipeline: Any | None, rgb: Tensor, mask: Tensor,
                      config: ReferenceEstimatorConfig | None = None, seed: int = 0
                      ) -> tuple[Tensor | None, Tensor | None]:
    """(depth [H,W,1] in [0,1] inside the mask, 0 outside; normals [H,W,3] unit camera frame, 0 outside) of the
    reference image; either is None when its pipeline is (module docstring)."""
    config = config or ReferenceEstimatorConfig()
    inside = mask[..., 0] > 0.5
    depth = normals = None
    if depth_pipeline is not None:
        raw = _marigold(depth_pipeline, rgb, config, seed)[0]
        depth = torch.zeros_like(raw)
        if bool(inside.any()):
            d = raw[inside]
            depth[inside] = (d - d.min()) / (d.max() - d.min()).clamp(min=1e-9)
        depth = depth[..., None]
    if normals_pipeline is not None:
        raw = _marigold(normals_pipeline, rgb, config, seed)
        frame = MARIGOLD_TO_CAMERA.to(raw.device, raw.dtype)
        normals = F.normalize(torch.einsum("ij,jhw->hwi", frame, raw), dim=-1) * inside[..., None]
    return depth, normals
