"""The dry run's priors: the production DiffusionPriors (pipeline/priors.py) with the full-size models on
`meta` (models/full_size.py). Only the device and the weights differ.

Every guidance, estimator and decomposer is assembled by DiffusionPriors itself, with the settings a job's
would have; this class only bridges devices, because a `meta` tensor has no values to hand back:
- inputs (the stage's renders, the reference view) are moved to `meta`, where the guidance's forward and
  backward run (shapes only); the stage gets a zero loss on its own device, so its CPU work carries on;
- what an estimator returns (the reference image, Marigold's depth and normals, the intrinsic maps) is
  computed on `meta` and a stand-in of the same size comes back (a grey disc; a bowl of depth; normals
  facing the camera; grey albedo of roughness 0.5);
- the reference image's denoising loop runs the text-to-image UNet on `meta` directly (diffusers'
  StableDiffusionPipeline needs a real tokenizer, which is a download); its memory is the same UNet calls;
- offloaded models go to host memory as uninitialised storage (`to_empty`), not counted: a `meta` module
  has no data to copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from ..guidance.base import GuidanceInput, GuidanceOutput
from ..guidance.intrinsics import IntrinsicMaps
from ..pipeline.priors import DiffusionPriors
from ..render.cameras import CameraBatch
from ..stages.base import ReferenceView

META = torch.device("meta")
log = logging.getLogger(__name__)


def _on(device: torch.device, t: Tensor | None, grad: bool = False) -> Tensor | None:
    return None if t is None else t.detach().to(device).requires_grad_(grad and t.requires_grad)


class MetaBridge:
    """A production guidance run on `meta`: returns a zero loss on the render's device."""

    def __init__(self, inner: Any, device: torch.device):
        self.inner = inner
        self.device = device

    def release(self) -> None:
        if hasattr(self.inner, "release"):
            self.inner.release()

    def __call__(self, inp: GuidanceInput) -> GuidanceOutput:
        dev = self.device
        moved = dataclasses.replace(inp, rgb=_on(dev, inp.rgb, grad=True), opacity=_on(dev, inp.opacity),
                                    colour=_on(dev, inp.colour, grad=True), normal=_on(dev, inp.normal))
        loss = self.inner(moved).loss
        if loss.requires_grad:
            loss.backward()  # the VAE encoder's backward into the render, as the stage's backward would run it
        return GuidanceOutput(inp.rgb.sum() * 0.0, {})


class MeasuredEstimates:
    """A Marigold pipeline on `meta` (models/full_size.MarigoldShape) whose calls in a loop of `calls` are shortened
    as the ray chunks are (render/volume.measured_chunks_only): the first and the last run, the others stand in
    and hand back an uninitialised prediction of the first one's shape (no host memory on `meta`). The loops:
    the polish stage's view pool (stages/polish.PoolTargets.estimate_all, one call per `estimator_batch` of its
    32 views) and the PBR bake's decomposition (guidance/intrinsics.MarigoldIntrinsics, one call per
    `batch_size` of its 8 views). Everything around the calls runs as in a job (the renders, the estimator's
    frame conversion and cache, the loop's own list of results).

    Why the loop's peak is kept: on `meta` a call is shapes only, so calls with the same input shape do the same
    work, hold the same memory while they run, and leave nothing alive but their prediction (the pipeline keeps
    no state); the loops keep each call's results, so what is live when a call starts never shrinks from call to
    call, and the most is reached in the last one (or the first, if the loop frees). A call whose input differs
    in shape from the first's (a shorter last batch) is run. A job never makes this object: on a card, or in a
    job, every call runs (MetaDiffusionPriors wraps its pipelines on `meta` only)."""

    def __init__(self, pipeline: Any, calls: int):
        self.pipeline = pipeline
        self.calls = calls
        self.made = 0
        self.ran = 0
        """Calls that ran the pipeline."""
        self._first: tuple[torch.Size, torch.Size, torch.dtype] | None = None
        """The first call's input shape, and its prediction's shape and dtype."""

    def __getattr__(self, name: str) -> Any:  # device, dtype, target_properties: the pipeline's
        return getattr(self.pipeline, name)

    def __call__(self, image: Tensor, **kwargs: Any) -> Any:
        index, self.made = self.made, self.made + 1
        if 0 < index < self.calls - 1 and self._first is not None and image.shape == self._first[0]:
            return SimpleNamespace(prediction=torch.empty(self._first[1], dtype=self._first[2], device=META))
        out = self.pipeline(image, **kwargs)
        self.ran += 1
        if index == 0:
            self._first = (image.shape, out.prediction.shape, out.prediction.dtype)
            if self.calls > 2:
                log.info("dry run: %d of %d estimates stand in for the first one", self.calls - 2, self.calls)
        return out


class MetaNormalsBridge:
    """The production normal targets run on `meta`; normals facing the camera come back."""

    def __init__(self, inner: Any, device: torch.device):
        self.inner = inner
        self.device = device

    def __call__(self, rgb: Tensor, opacity: Tensor, cameras: CameraBatch) -> Tensor:
        self.inner(_on(self.device, rgb), _on(self.device, opacity), cameras)
        normals = torch.zeros_like(rgb)
        normals[..., 2] = 1.0
        return normals * (opacity.detach() >= 0.5).to(normals)


class MetaIntrinsicsBridge:
    """The production decomposer run on `meta`; grey albedo, roughness 0.5 and metallic 0 come back."""

    def __init__(self, inner: Any, device: torch.device):
        self.inner = inner
        self.device = device

    def __call__(self, rgb: Tensor, opacity: Tensor, cameras: CameraBatch) -> IntrinsicMaps:
        self.inner(_on(self.device, rgb), _on(self.device, opacity), cameras)
        fg = (opacity.detach() > 0).to(rgb)
        return IntrinsicMaps(0.5 * fg.expand_as(rgb), 0.5 * fg, 0.0 * fg)

    def close(self) -> None:
        self.inner.close()  # production: the model is unloaded after the bake


def _disc(h: int, w: int) -> tuple[Tensor, Tensor]:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    mask = ((xx * w / max(h, w)) ** 2 + (yy * h / max(h, w)) ** 2 < 0.5**2).float()[..., None]
    rgb = 0.5 * mask + (1 - mask)
    return rgb.expand(h, w, 3).contiguous(), mask


class MetaDiffusionPriors(DiffusionPriors):
    """DiffusionPriors on `meta` with full-size random weights (module docstring)."""

    def __init__(self, dtype: torch.dtype, counter: Any = None, device: torch.device = META):
        """counter: the dry run's LiveBytes (its `uncounted()` hides the host copies of offloaded models);
        device: `meta`, or a card, where the same models and bridges run for real (bench/gpu_run.sh compares
        the allocator's peaks with the `meta` figures)."""
        super().__init__(torch.device(device))
        self.dtype = dtype
        self.counter = counter

    def _to_host(self, module: torch.nn.Module) -> None:
        with self.counter.uncounted() if self.counter is not None else contextlib.nullcontext():
            module.to_empty(device="cpu")

    def _moved(self, nbytes: int, to_host: bool) -> None:
        if self.counter is not None:
            self.counter.host(nbytes if to_host else -nbytes)

    def _load_models(self, name: str) -> Any:
        from ..models.full_size import FullSizePriors
        from ..models.residency import Residency
        from ..models.specs import model_set

        if self.device == META:
            residency = Residency(META, to_host=self._to_host, to_device=lambda m: m.to(META), on_move=self._moved)
        else:  # a card: real copies, timed (models/residency.py)
            residency = Residency(self.device, on_move=self._moved)
        return FullSizePriors(model_set(name), self.device, self.dtype, residency)

    @torch.no_grad()
    def _generated_reference(self, models, spec, preset, frame, seed: int) -> tuple[Tensor, Tensor]:
        from ..guidance.text_prior import encode_text
        from ..stages.reference import generation_size

        t2i, cam = models.text_to_image, frame.reference_camera
        multiple = math.lcm(8, t2i.vae_scale_factor * 2 ** (len(t2i.unet.config.block_out_channels) - 1))
        gen_w, gen_h = generation_size(cam.width, cam.height, t2i.native_resolution, multiple)
        if preset.reference.generation.square:
            gen_w = gen_h = generation_size(1, 1, t2i.native_resolution, multiple)[0]
        context = encode_text(t2i, [spec.negative_prompt, spec.prompt])
        f = t2i.vae_scale_factor
        x = torch.randn(1, 4, gen_h // f, gen_w // f).to(t2i.device, t2i.dtype)
        for step in range(preset.reference.generation.num_inference_steps):
            t = torch.full((2,), 999 - step, dtype=torch.long, device=t2i.device)
            x = t2i.unet(torch.cat([x, x]), t, encoder_hidden_states=context).sample[:1]
        _ = t2i.vae.decode(x / t2i.vae.config.scaling_factor).sample  # its memory is what is measured
        return _disc(cam.height, cam.width)

    def _reference_geometry(self, depth_model, normals_model, rgb, mask, preset, seed: int):
        from ..stages.reference import _marigold

        cfg = preset.reference.generation.estimator
        for model in (depth_model, normals_model):
            if model is not None:
                _marigold(model, _on(self.device, rgb), cfg, seed)
        h, w = rgb.shape[:2]
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        depth = None if depth_model is None else (xx**2 + yy**2)[..., None] * mask  # a bowl
        normals = None
        if normals_model is not None:
            normals = torch.zeros(h, w, 3)
            normals[..., 2] = 1.0
            normals = normals * mask
        return depth, normals

    def _reference_on_meta(self, reference: ReferenceView | None) -> ReferenceView | None:
        if reference is None:
            return None
        dev = self.device
        return dataclasses.replace(reference, rgb=_on(dev, reference.rgb), mask=_on(dev, reference.mask),
                                   depth=_on(dev, reference.depth), normal=_on(dev, reference.normal))

    def geometry_guidance(self, stage, spec, preset, frame, reference, seed: int) -> MetaBridge:
        return MetaBridge(super().geometry_guidance(stage, spec, preset, frame, self._reference_on_meta(reference),
                                                    seed), self.device)

    def texture_guidance(self, spec, preset, frame, seed: int, reference=None) -> MetaBridge:
        return MetaBridge(super().texture_guidance(spec, preset, frame, seed, self._reference_on_meta(reference)),
                          self.device)

    def normal_targets(self, preset, seed: int) -> MetaNormalsBridge:
        targets = super().normal_targets(preset, seed)
        if self.device == META:  # the view pool's estimates, shortened (MeasuredEstimates)
            polish = preset.polish
            targets.pipeline = MeasuredEstimates(targets.pipeline, -(-polish.view_pool // polish.estimator_batch))
        return MetaNormalsBridge(targets, self.device)

    def intrinsics(self, preset, seed: int) -> MetaIntrinsicsBridge:
        decomposer = super().intrinsics(preset, seed)
        if self.device == META:  # the bake's decompositions, shortened (MeasuredEstimates)
            pbr = preset.texture.pbr
            decomposer.pipeline = MeasuredEstimates(decomposer.pipeline, -(-pbr.views // pbr.intrinsics.batch_size))
        return MetaIntrinsicsBridge(decomposer, self.device)
