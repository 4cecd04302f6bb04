"""The dry run's priors: the pipeline's PriorSource with the full-size models on `meta`.

Each guidance is the production one (Zero123Guidance, ScoreDistillation with its LoRA adapters, the same
settings the diffusion priors use), fed the stage's render moved to `meta`; its forward and backward run
there (shapes only) and the stage gets a zero loss on its own device, so the CPU geometry carries on. The
reference image and the Marigold estimates run their denoising loops on `meta` and hand back stand-ins of
the right size (a grey disc; normals facing the camera; grey albedo of roughness 0.5).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..guidance.base import GuidanceInput, GuidanceOutput
from ..guidance.intrinsics import IntrinsicMaps
from ..models.full_size import FullSizePriors, MarigoldShape
from ..models.specs import ModelSet
from ..pipeline.priors import reference_needs
from ..render.cameras import CameraBatch
from ..stages.base import ReferenceView


def _seeded(cfg: Any, seed: int) -> Any:
    return dataclasses.replace(cfg, seed=seed % (2**31))


class MetaGuidance:
    """Weighted production guidances evaluated on `meta`; returns a zero loss on the render's device."""

    def __init__(self, parts: list[tuple[str, float, Any]], device: torch.device):
        self.parts = [(n, w, g) for n, w, g in parts if w != 0]
        self.device = device

    def release(self) -> None:
        for _, _, guidance in self.parts:
            if hasattr(guidance, "release"):
                guidance.release()

    def __call__(self, inp: GuidanceInput) -> GuidanceOutput:
        rgb = inp.rgb.detach().to(self.device).requires_grad_(inp.rgb.requires_grad)
        colour = None if inp.colour is None else inp.colour.detach().to(self.device).requires_grad_(
            inp.colour.requires_grad)
        moved = dataclasses.replace(
            inp, rgb=rgb, opacity=inp.opacity.detach().to(self.device), colour=colour,
            normal=None if inp.normal is None else inp.normal.detach().to(self.device))
        total: Tensor | None = None
        for _, weight, guidance in self.parts:
            loss = guidance(moved).loss
            total = weight * loss if total is None else total + weight * loss
        if total is not None and total.requires_grad:
            total.backward()  # the VAE encoder's backward into the render, as the stage's backward would run it
        return GuidanceOutput(inp.rgb.sum() * 0.0, {})


def _meta_marigold(m: MarigoldShape, rgb: Tensor, steps: int) -> None:
    """Marigold's encode -> denoise -> decode on `meta` for a batch of renders [B,H,W,3] (every target decoded)."""
    b, h, w, _ = rgb.shape
    side = m.processing_resolution
    scale = side / max(h, w)
    size = (max(8, round(h * scale / 8) * 8), max(8, round(w * scale / 8) * 8))
    image = F.interpolate(rgb.detach().permute(0, 3, 1, 2).to(m.device), size, mode="bilinear")
    latent = m.vae.encode(image.to(m.dtype) * 2 - 1).latent_dist.mode()
    text = m.text_encoder(torch.full((1, 77), 49406, dtype=torch.long, device=m.device))[0].expand(b, -1, -1)
    x = torch.randn(b, 4 * m.n_targets, *latent.shape[2:], dtype=latent.dtype).to(latent)
    for t in range(steps):
        t_in = torch.full((b,), 999 - t * (1000 // steps), dtype=torch.long, device=m.device)
        x = m.unet(torch.cat([latent, x], 1), t_in, encoder_hidden_states=text).sample
    x = x.reshape(b * m.n_targets, 4, *x.shape[2:])
    _ = m.vae.decode(x / m.vae.config.scaling_factor).sample  # its memory is what is measured


class MetaNormals:
    """NormalTargets: Marigold's encode → denoise → decode on `meta`; normals facing the camera back."""

    def __init__(self, models: MarigoldShape, num_inference_steps: int | None):
        self.models = models
        self.steps = num_inference_steps or models.denoising_steps

    @torch.no_grad()
    def __call__(self, rgb: Tensor, opacity: Tensor, cameras: CameraBatch) -> Tensor:
        _meta_marigold(self.models, rgb, self.steps)
        normals = torch.zeros_like(rgb)
        normals[..., 2] = 1.0
        return normals * (opacity.detach() >= 0.5).to(normals)


class MetaIntrinsics:
    """Decomposer: Marigold-IID's encode → denoise → decode on `meta`, in the configured batches; grey
    albedo, roughness 0.5 and metallic 0 back."""

    def __init__(self, models: MarigoldShape, num_inference_steps: int | None, batch_size: int):
        self.models = models
        self.steps = num_inference_steps or models.denoising_steps
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, rgb: Tensor, opacity: Tensor, cameras: CameraBatch) -> IntrinsicMaps:
        for i in range(0, rgb.shape[0], self.batch_size):
            _meta_marigold(self.models, rgb[i:i + self.batch_size], self.steps)
        fg = (opacity.detach() > 0).to(rgb)
        return IntrinsicMaps(0.5 * fg.expand_as(rgb), 0.5 * fg, 0.0 * fg)

    def close(self) -> None:
        """The full-size model stays resident: the dry run counts every model as the backend loaded it."""


def _disc_reference(camera: CameraBatch) -> ReferenceView:
    h, w = camera.height, camera.width
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    mask = ((xx * w / max(h, w)) ** 2 + (yy * h / max(h, w)) ** 2 < 0.5**2).float()[..., None]
    rgb = 0.5 * mask + (1 - mask)
    return ReferenceView(rgb=rgb.expand(h, w, 3).contiguous(), mask=mask, camera=camera)


class DryRunPriors:
    """pipeline.PriorSource for the dry run (see the module docstring)."""

    def __init__(self, model_set: ModelSet, device: torch.device, dtype: torch.dtype):
        self.models = FullSizePriors(model_set, device, dtype)
        self.device = torch.device(device)

    @torch.no_grad()
    def reference(self, spec, preset, frame, seed: int) -> ReferenceView:
        from ..guidance.text_prior import encode_text
        from ..stages.reference import generation_size

        t2i = self.models.text_to_image
        cam = frame.reference_camera
        multiple = math.lcm(8, t2i.vae_scale_factor * 2 ** (len(t2i.unet.config.block_out_channels) - 1))
        gen_w, gen_h = generation_size(cam.width, cam.height, t2i.native_resolution, multiple)
        context = encode_text(t2i, [spec.negative_prompt, spec.prompt])
        f = t2i.vae_scale_factor
        x = torch.randn(1, 4, gen_h // f, gen_w // f).to(t2i.device, t2i.dtype)
        for step in range(preset.reference.generation.num_inference_steps):
            t = torch.full((2,), 999 - step, dtype=torch.long, device=t2i.device)
            x = t2i.unet(torch.cat([x, x]), t, encoder_hidden_states=context).sample[:1]
        _ = t2i.vae.decode(x / t2i.vae.config.scaling_factor).sample  # its memory is what is measured
        view = _disc_reference(cam)
        # The reference depth and normals, estimated where a stage weighs them (as DiffusionPriors.reference).
        wants_depth, wants_normals = reference_needs(preset)
        if wants_depth:  # a stand-in depth (a bowl), so that the stages run their depth loss
            yy, xx = torch.meshgrid(torch.linspace(-1, 1, cam.height), torch.linspace(-1, 1, cam.width), indexing="ij")
            view.depth = (xx**2 + yy**2)[..., None] * view.mask
        steps = preset.reference.generation.estimator.num_inference_steps
        for role in [r for r, wanted in (("depth", wants_depth), ("normals", wants_normals)) if wanted]:
            models = getattr(self.models, role)  # built only when wanted
            if models is not None:
                _meta_marigold(models, view.rgb[None], steps or models.denoising_steps)
        self.models.unload("depth")  # as DiffusionPriors.reference: not resident after this stage
        return view

    def geometry_guidance(self, stage, spec, preset, frame, reference, seed: int) -> MetaGuidance:
        from ..guidance.score_distillation import ScoreDistillation
        from ..guidance.text_prior import encode_prompts
        from ..guidance.zero123 import ReferenceView as OrbitView
        from ..guidance.zero123 import Zero123Guidance

        g = preset.guidance.for_stage(stage)  # as DiffusionPriors: the stage's own timestep schedules
        parts: list[tuple[str, float, Any]] = []
        if reference is not None and g.zero123_weight:
            cam = reference.camera
            orbit = OrbitView(float(cam.elevation_deg[0]), float(cam.azimuth_deg[0]), float(cam.distance[0]))
            parts.append(("zero123", g.zero123_weight, Zero123Guidance(
                self.models.zero123, reference.rgb.to(self.device), reference.mask.to(self.device), orbit,
                _seeded(g.zero123, seed))))
        if g.text_weight:
            t2i = self.models.text_to_image
            prompts = encode_prompts(t2i, spec.prompt, spec.negative_prompt, self._view_prompts(preset, frame))
            parts.append(("text", g.text_weight, ScoreDistillation(t2i, prompts, _seeded(g.text, seed + 1))))
        return MetaGuidance(parts, self.device)

    def normal_targets(self, preset, seed: int) -> MetaNormals:
        return MetaNormals(self.models.normals, preset.polish.estimator.num_inference_steps)

    def intrinsics(self, preset, seed: int) -> MetaIntrinsics:
        cfg = preset.texture.pbr.intrinsics
        return MetaIntrinsics(self.models.intrinsics, cfg.num_inference_steps, cfg.batch_size)

    def texture_guidance(self, spec, preset, frame, seed: int, reference=None) -> MetaGuidance:
        from ..guidance.score_distillation import ScoreDistillation
        from ..guidance.text_prior import encode_prompts
        from ..guidance.zero123 import ReferenceView as OrbitView
        from ..guidance.zero123 import Zero123Guidance

        if reference is not None and spec.image is not None and not spec.prompt.strip():  # as DiffusionPriors
            cam = reference.camera
            orbit = OrbitView(float(cam.elevation_deg[0]), float(cam.azimuth_deg[0]), float(cam.distance[0]))
            return MetaGuidance([("texture", 1.0, Zero123Guidance(
                self.models.zero123, reference.rgb.to(self.device), reference.mask.to(self.device), orbit,
                _seeded(preset.texture.picture_guidance, seed)))], self.device)
        t2i = self.models.text_to_image
        prompts = encode_prompts(t2i, spec.prompt, spec.negative_prompt, self._view_prompts(preset, frame))
        return MetaGuidance([("texture", 1.0, ScoreDistillation(t2i, prompts, _seeded(preset.texture.guidance, seed)))],
                            self.device)

    @staticmethod
    def _view_prompts(preset, frame) -> Any:
        # "front" is the reference camera's side of the object, as the diffusion priors set it
        return dataclasses.replace(preset.guidance.view_prompts,
                                   front_azimuth_deg=float(frame.reference_camera.azimuth_deg[0]))
