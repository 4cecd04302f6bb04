"""View-conditioned SDS with a Zero123-style prior (Zero123 / Zero123-XL / Stable-Zero123, diffusers format).

The model denoises a novel view of the reference object given:
  * the reference image's CLIP image embedding, concatenated with the relative
    camera and projected back to the embedding width (CLIPCameraProjection):
    the UNet's single cross-attention token;
  * the reference image's VAE latent (posterior mode, NOT multiplied by the
    scaling factor, as Zero123 was trained) concatenated to the noisy latent,
    giving the UNet's 8 input channels.
Classifier-free guidance drops both (zero token, zero latent), as in training.

Relative camera (Zero123's `get_T`, angles in radians): with polar angle
θ = 90° − elevation measured from +Z and azimuth φ about +Z from +X towards +Y
(the same orbit definition as render/cameras.py, since Zero123's Objaverse
renders are Blender, Z-up),
    [θ_view − θ_ref, sin(φ_view − φ_ref), cos(φ_view − φ_ref), r_view − r_ref]
for Zero123 and Zero123-XL ("delta_radius"). Stable-Zero123 replaces the last
entry with the reference view's polar angle θ_ref ("reference_polar"); the
model spec says which one a checkpoint uses. The reference image is shown on a
white background, which is what Zero123 was trained on.

As the text prior's guidance (score_distillation.py), a step reads nothing back
from the device: draws on the device, ᾱ_t from a NoiseTable, diagnostics as
0-dim tensors; the VAE encoder and the CFG pass run compiled where the preset
asks for it (guidance/compiled.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config_fields import ranged
from ..models.loading import Zero123Models
from ..models.specs import CameraEncoding
from .base import GuidanceInput, GuidanceOutput, step_generator
from .compiled import GuidanceCompile
from .noise_schedule import NoiseTable, Weighting
from .score_distillation import (
    TimestepSchedule,
    autocast,
    clean_gradient,
    encode_render,
    reparameterised_loss,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Zero123GuidanceConfig:
    """View-conditioned SDS settings."""

    guidance_scale: float = ranged(5.0, 0, 100)
    """CFG scale over the image+camera condition."""
    # DreamCraft3D configs/dreamcraft3d-coarse-nerf.yaml guidance_3d: min/max_step_percent [0, 0.7, 0.2, 200],
    # [0, 0.85, 0.5, 200] of max_steps 5000, so the anneal ends at 200 / 5000 = 0.04 of the stage.
    timesteps: TimestepSchedule = field(
        default_factory=lambda: TimestepSchedule(t_range=(0.7, 0.85), t_range_end=(0.2, 0.5), anneal_until=0.04)
    )
    """Sampled timestep range and its annealing."""
    weighting: Weighting = "sds"
    """w(t): "sds" = 1 − ᾱ_t, "uniform" = 1."""
    image_resolution: int | None = ranged(None, 32, 2048)
    """Side of the images the model sees; None = the size its model set states (ModelSpec.image_size: 256
    for Zero123, Zero123-XL, Stable-Zero123)."""
    grad_clip: float | None = ranged(None, 0, 1e6)
    """Clamp each element of the gradient to ±grad_clip; None = only non-finite values are zeroed."""
    seed: int = ranged(0, 0, 2**63 - 1)
    """Seed of the timestep and noise draws."""
    view_distance: float = ranged(3.8, 0.1, 100)
    """Distance of the sampled views the prior judges; the reference image is reframed to it, so that
    Δr = 0 (DreamCraft3D configs/dreamcraft3d-*.yaml: camera_distance_range [3.8, 3.8], and
    stable_zero123_guidance.py get_cond uses the data's distance as cond_camera_distance)."""
    view_fovy_deg: float = ranged(20.0, 1, 170)
    """Vertical field of view of the sampled views (DreamCraft3D configs: fovy_range [20, 20])."""


@dataclass(frozen=True)
class ReferenceView:
    """Where the reference image was taken, on the orbit of render/cameras.py."""

    elevation_deg: float
    azimuth_deg: float
    distance: float
    fovy_deg: float | None = None
    """Vertical field of view of the reference image; None = already framed as the sampled views."""


def frame_like_views(rgb: Tensor, mask: Tensor, view: ReferenceView, distance: float, fovy_deg: float
                     ) -> tuple[Tensor, Tensor]:
    """The reference image [H,W,3] / mask [H,W,1] as a square view at `distance`, `fovy_deg`, by a
    centred crop or a pad (coverage 0, so white once composited), never a squash.

    Both cameras look at the orbit centre; at its plane the reference shows a half height
    d_ref·tan(fovy_ref/2) over H pixels, a view d·tan(fovy/2), so the view's square side is
    H·d·tan(fovy/2) / (d_ref·tan(fovy_ref/2)) reference pixels (exact for the centre plane)."""
    h, w = rgb.shape[0], rgb.shape[1]
    ref_half = view.distance * math.tan(math.radians(view.fovy_deg or fovy_deg) / 2)
    side = max(1, round(h * distance * math.tan(math.radians(fovy_deg) / 2) / ref_half))
    if view.fovy_deg is None and h == w:
        side = h
    both = torch.cat([rgb, mask], dim=-1).permute(2, 0, 1)
    top, left = (h - side) // 2, (w - side) // 2
    if top >= 0 and left >= 0:
        both = both[:, top:top + side, left:left + side]
    else:
        pad_y, pad_x = max(0, -top), max(0, -left)
        both = both[:, max(0, top):max(0, top) + min(h, side), max(0, left):max(0, left) + min(w, side)]
        both = F.pad(both, (pad_x, side - both.shape[2] - pad_x, pad_y, side - both.shape[1] - pad_y))
    both = both.permute(1, 2, 0)
    return both[..., :3], both[..., 3:]


def relative_camera(
    elevation_deg: Tensor,
    azimuth_deg: Tensor,
    distance: Tensor,
    reference: ReferenceView,
    encoding: CameraEncoding = "delta_radius",
) -> Tensor:
    """[B,4] Zero123 camera condition of views relative to the reference view (see the module docstring)."""
    polar = torch.deg2rad(90.0 - elevation_deg.float())
    # The reference's angle as a Python number: a tensor made from it on the host would be a copy to the
    # device every step (and a CPU tensor stacked with CUDA ones fails on the first step).
    polar_ref = math.radians(90.0 - reference.elevation_deg)
    d_az = torch.deg2rad(azimuth_deg.float() - reference.azimuth_deg)
    if encoding == "delta_radius":
        last = distance.float() - reference.distance
    else:
        last = torch.full_like(polar, polar_ref)
    return torch.stack([polar - polar_ref, torch.sin(d_az), torch.cos(d_az), last], dim=-1)


def white_background(rgb: Tensor, mask: Tensor) -> Tensor:
    """[...,3] colour composited over white with coverage mask [...,1]."""
    return rgb * mask + (1.0 - mask)


def zero123_cfg_eps(unet: torch.nn.Module, table: NoiseTable, x_t: Tensor, t: Tensor, context: Tensor,
                    reference_latent: Tensor, guidance_scale: float, dtype: torch.dtype) -> Tensor:
    """ε̂ = ε_uncond + s·(ε_cond − ε_uncond) [B,4,h,w] from one batched pass: the conditional half sees the
    reference latent and `context`, the unconditional half zeros for both (Zero123's CFG). Compiled by the
    guidance (compiled.py)."""
    b = x_t.shape[0]
    concat = reference_latent.expand(b, -1, -1, -1)
    x = x_t.to(dtype)
    x_in = torch.cat([torch.cat([x, torch.zeros_like(concat)], 1), torch.cat([x, concat], 1)])
    ctx = torch.cat([torch.zeros_like(context), context])
    t_in = torch.cat([t, t])
    pred = unet(x_in, t_in, encoder_hidden_states=ctx, return_dict=False)[0]
    eps_uncond, eps_cond = table.to_epsilon(pred.float(), torch.cat([x_t, x_t]), t_in).chunk(2)
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


class Zero123Guidance:
    """SDS from a Zero123-style model conditioned on the reference image and the relative camera."""

    def __init__(
        self,
        models: Zero123Models,
        reference_rgb: Tensor,
        reference_mask: Tensor,
        reference_view: ReferenceView,
        config: Zero123GuidanceConfig | None = None,
        compile: GuidanceCompile | None = None,
    ):
        """reference_rgb [H,W,3] in [0,1] and reference_mask [H,W,1] in [0,1] from the reference stage.
        compile: how the model calls run (default: compiled on CUDA only, GuidanceCompile.choose("auto"))."""
        self.models = models
        self.config = config or Zero123GuidanceConfig()
        # The prior sees the reference framed as its sampled views, and from their distance (Δr = 0).
        reference_rgb, reference_mask = frame_like_views(
            reference_rgb, reference_mask, reference_view, self.config.view_distance, self.config.view_fovy_deg)
        self.reference_view = ReferenceView(reference_view.elevation_deg, reference_view.azimuth_deg,
                                            self.config.view_distance)
        self.scheduler = models.scheduler
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.table = NoiseTable.of(self.scheduler, models.device)
        self.generator = step_generator(models.device, self.config.seed)
        self.compile = compile or GuidanceCompile.choose("auto", models.device)
        self._encode = self.compile(encode_render)
        self._cfg_eps = self.compile(zero123_cfg_eps)
        self.resolution = self.config.image_resolution or models.spec.image_size
        if self.resolution is None:
            raise ValueError(f"the Zero123 model {models.spec.name} states no image_size (the side of the images "
                             "it was trained on: 256 for Zero123, Zero123-XL, Stable-Zero123); add it to its spec")
        self.image_embedding, self.reference_latent = self._encode_reference(reference_rgb, reference_mask)

    @torch.no_grad()
    def _encode_reference(self, rgb: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """([1,1,D] CLIP image embedding, [1,4,h,w] unscaled VAE latent) of the reference on white."""
        m = self.models
        image = white_background(rgb.float(), mask.float()).permute(2, 0, 1)[None].to(m.device)
        clip_side = int(m.image_encoder.config.image_size)
        clip_in = F.interpolate(image, (clip_side, clip_side), mode="bicubic", align_corners=False, antialias=True)
        mean = torch.tensor(CLIP_MEAN, device=m.device).reshape(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=m.device).reshape(1, 3, 1, 1)
        clip_in = ((clip_in.clamp(0, 1) - mean) / std).to(m.dtype)
        embedding = m.image_encoder(clip_in).image_embeds[:, None, :]
        vae_in = F.interpolate(image, (self.resolution, self.resolution), mode="bilinear", align_corners=False, antialias=True)
        latent = m.vae.encode((vae_in * 2 - 1).to(m.dtype)).latent_dist.mode()
        return embedding, latent

    def conditioning(self, cameras_elevation: Tensor, cameras_azimuth: Tensor, cameras_distance: Tensor) -> Tensor:
        """[B,1,D] cross-attention token for views with the given orbit coordinates."""
        camera = relative_camera(
            cameras_elevation, cameras_azimuth, cameras_distance, self.reference_view, self.models.camera_encoding
        ).to(self.models.device, self.models.dtype)
        b = camera.shape[0]
        token = torch.cat([self.image_embedding.expand(b, -1, -1), camera[:, None, :]], dim=-1)
        with torch.no_grad():
            return self.models.camera_projection(token)

    def noise_prediction(self, x_t: Tensor, t: Tensor, context: Tensor) -> Tensor:
        """ε̂ = ε_uncond + s·(ε_cond − ε_uncond) for noisy scaled latents x_t [B,4,h,w] at timesteps t [B],
        conditioned on `context` [B,1,D] (from `conditioning`) and the reference latent."""
        m = self.models
        with torch.no_grad(), autocast(m.device, m.dtype):
            return self._cfg_eps(m.unet, self.table, x_t.float(), t.to(m.device), context, self.reference_latent,
                                 self.config.guidance_scale, m.dtype)

    def latent_gradient(self, latents: Tensor, t: Tensor, noise: Tensor, context: Tensor
                        ) -> tuple[Tensor, dict[str, Tensor | float]]:
        """g = w(t)·(ε̂ − ε) on the scaled render latents [B,4,h,w]."""
        latents = latents.detach().float()
        t = t.to(self.models.device)
        x_t = self.table.add_noise(latents, noise.float(), t)
        eps_hat = self.noise_prediction(x_t, t, context)
        w = self.table.weight(t, self.config.weighting).to(latents)
        grad = clean_gradient(w * (eps_hat - noise), self.config.grad_clip)
        return grad, {"grad_norm": grad.norm(), "t": t.float().mean() / self.num_train_timesteps}

    def __call__(self, inp: GuidanceInput) -> GuidanceOutput:
        m = self.models
        rgb = inp.colour_render()  # Zero123 is trained on colour images, never on shaded normals
        b = rgb.shape[0]
        with autocast(m.device, m.dtype):
            latents = self._encode(m.vae, rgb.to(m.device), self.resolution).float()
        cams = inp.cameras
        context = self.conditioning(cams.elevation_deg, cams.azimuth_deg, cams.distance)
        t = self.config.timesteps.sample(inp.progress(), b, self.num_train_timesteps, self.generator, m.device)
        noise = torch.randn(latents.shape, generator=self.generator, device=m.device).to(latents)
        grad, diagnostics = self.latent_gradient(latents, t, noise, context)
        return GuidanceOutput(loss=reparameterised_loss(latents, grad), diagnostics=diagnostics)


class NearestReference:
    """Zero123 with several reference pictures: each sampled view is conditioned on the reference whose
    camera is nearest to it in viewing direction (largest cosine between the directions from the object's
    centre to the two cameras), one Zero123Guidance per reference. The loss is each part's loss weighted by
    its share of the batch, so it is the batch mean as one guidance's is (score_distillation.py
    reparameterised_loss divides by the batch). The nearest picture is the one the view shares most of its
    surface with, so the one a view-conditioned prior has to invent least from (a blend of every reference's
    prediction would mix in pictures that do not see the view's side)."""

    def __init__(self, parts: list[tuple[Tensor, Zero123Guidance]]):
        """parts: (unit direction [3] from the object's centre to the reference camera, its guidance)."""
        self.directions = torch.stack([d.float() for d, _ in parts])
        self.guidances = [g for _, g in parts]

    def nearest(self, cameras) -> Tensor:
        """[B] index of the nearest reference of each camera."""
        positions = F.normalize(cameras.c2w[:, :3, 3].float(), dim=-1)
        return (positions @ self.directions.to(positions.device).T).argmax(-1)

    def __call__(self, inp: GuidanceInput) -> GuidanceOutput:
        nearest = self.nearest(inp.cameras)
        b = nearest.shape[0]
        total: Tensor | None = None
        diagnostics: dict[str, Tensor | float] = {}
        for k, guidance in enumerate(self.guidances):
            rows = torch.nonzero(nearest == k).flatten()
            if rows.numel() == 0:
                continue
            part = guidance(_rows(inp, rows))
            share = rows.numel() / b
            total = share * part.loss if total is None else total + share * part.loss
            for name, value in part.diagnostics.items():
                diagnostics[name] = diagnostics.get(name, 0.0) + share * value
        assert total is not None  # every view has a nearest reference
        diagnostics["references_used"] = float(len(torch.unique(nearest)))
        return GuidanceOutput(total, diagnostics)


def _rows(inp: GuidanceInput, rows: Tensor) -> GuidanceInput:
    """The guidance input of a subset of its views."""
    def pick(x: Tensor | None) -> Tensor | None:
        return None if x is None else x[rows]

    return GuidanceInput(inp.rgb[rows], inp.opacity[rows], inp.cameras[rows], pick(inp.normal), inp.shading,
                         pick(inp.colour), inp.step, inp.total_steps)
