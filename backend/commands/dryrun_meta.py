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
from typing import Any

import torch
from torch import Tensor

from ..guidance.base import GuidanceInput, GuidanceOutput
from ..guidance.intrinsics import IntrinsicMaps
from ..pipeline.priors import DiffusionPriors
from ..render.cameras import CameraBatch
from ..render.volume import RetainedBytes
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


class MetaNormalsBridge:
    """The production normal targets run on `meta`; normals facing the camera come back.

    With `pool_calls`, the calls that estimate the polish stage's view pool (stages/polish.PoolTargets
    .estimate_all: one call per `estimator_batch` views, before the first step) are shortened as the ray chunks
    are (render/volume.measured_chunks_only): the first and the last are run, the others stand in. On `meta` an
    estimate is shapes only, so calls with the same input shapes do the same work and hold the same memory
    whatever the view. Between calls the pool keeps each call's targets, and the estimator its cache entry
    (guidance/normals.MarigoldNormalTargets), so what is live when a call starts grows call by call, and the
    pool's peak is reached in its last call; the first is run because it is where what a call leaves alive is
    measured (and where a first call's own work would show). A stand-in leaves alive what the first call left
    besides its result (`RetainedBytes`; uninitialised bytes on `meta`, which cost no host memory) for as long
    as the estimator lives, as its cache holds its entries. The renders the estimator is shown are still
    rasterised for every view, by the stage itself: their memory depends on the view. A job never makes this
    object (pipeline/priors.DiffusionPriors.normal_targets hands the stage the estimator itself)."""

    def __init__(self, inner: Any, device: torch.device, pool_calls: int = 0):
        self.inner = inner
        self.device = device
        self.pool_calls = pool_calls
        self.calls = 0
        self.estimated = 0
        """Calls that ran the estimator."""
        self._first_shape: torch.Size | None = None
        self._retained = 0
        self._kept: list[Tensor] = []

    def __call__(self, rgb: Tensor, opacity: Tensor, cameras: CameraBatch) -> Tensor:
        index, self.calls = self.calls, self.calls + 1
        if 0 < index < self.pool_calls - 1 and rgb.shape == self._first_shape:
            self._kept.append(torch.empty(self._retained, dtype=torch.uint8, device=self.device))
        else:
            with RetainedBytes() if index == 0 else contextlib.nullcontext() as made:
                result = self.inner(_on(self.device, rgb), _on(self.device, opacity), cameras)
            if made is not None:
                self._first_shape, self._retained = rgb.shape, made.alive((result,))
                if self.pool_calls > 2:
                    log.info("dry run: %d of the view pool's %d estimates stand in (each keeps %.4f GB)",
                             self.pool_calls - 2, self.pool_calls, self._retained / 1e9)
            del result
            self.estimated += 1
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
        polish = preset.polish  # on `meta`, the view pool's estimates are shortened (MetaNormalsBridge)
        pool_calls = -(-polish.view_pool // polish.estimator_batch) if self.device == META else 0
        return MetaNormalsBridge(super().normal_targets(preset, seed), self.device, pool_calls)

    def intrinsics(self, preset, seed: int) -> MetaIntrinsicsBridge:
        return MetaIntrinsicsBridge(super().intrinsics(preset, seed), self.device)
