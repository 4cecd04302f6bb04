"""The reference stage: a text-to-image picture of the object for the reference camera, and its foreground mask.

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
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from ..config_fields import ranged
from ..guidance.text_prior import view_prompt
from ..models.loading import PriorModels

logger = logging.getLogger(__name__)


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
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background_colour = np.median(border, axis=0)
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
    if (gen_h, gen_w) != (height, width):
        downsample = gen_h > height or gen_w > width
        image = F.interpolate(image, (height, width), mode="bilinear", align_corners=False, antialias=downsample)
    rgb = image[0].permute(1, 2, 0).clamp(0, 1).cpu()
    mask = torch.from_numpy(foreground_mask(rgb.numpy(), config)).float()[..., None]
    logger.info("reference image %dx%d (generated at %dx%d), foreground %.1f%%", width, height, gen_w, gen_h,
                100 * float(mask.mean()))
    return rgb.to(device), mask.to(device)
