"""Score distillation with a text-to-image prior: SDS, CSD, VSD, BSD and DSD behind one Guidance.

Notation (METHOD.md): x the render's latent, x_t = √ᾱ_t x + √(1−ᾱ_t) ε with
injected noise ε, ε(x_t; y) the frozen UNet with the view's prompt y, ε(∅) with
the negative/empty prompt, s the CFG scale, ε̂ = ε(∅) + s·(ε(y) − ε(∅)), ε_φ
the LoRA variational copy (camera-conditioned), w(t) = 1 − ᾱ_t. The gradient
on x for each objective:

    sds  w(t)·(ε̂ − ε)                                   DreamFusion
    csd  w(t)·λ_cfg·(ε(y) − ε(∅))                       Classifier Score Distillation
    vsd  w(t)·(ε̂ − ε_φ(x_t; y, c))                      ProlificDreamer
    bsd  w(t)·(ε̂_T − ε_φ(x_t; y, c))                    DreamCraft3D: ε̂_T is a bootstrapped teacher
    dsd  w(t)·[λ_cfg·(ε(y) − ε(∅)) + λ_var·(ε(y) − ε_φ)] DreamPolish

Since ε̂ − ε_φ = (s−1)(ε(y) − ε(∅)) + (ε(y) − ε_φ), DSD with λ_cfg = s−1,
λ_var = 1 is VSD and DSD with λ_var = 0 is CSD. The gradient is applied by
reparameterisation, loss = ½‖x − sg(x − g)‖² / B, so that ∂loss/∂x = g / B
flows through the VAE encoder into the render; the UNet runs without
gradient, and only the LoRA adapters train, in their own optimiser step on
the detached latents after the gradient has been formed.

BSD here: the teacher is a second LoRA adapter fine-tuned on renders refined
by the teacher itself (img2img: noised to `refine_t`, then denoised with
`refine_steps` DDIM steps with CFG), refreshed every `interval` steps.
DreamCraft3D fine-tunes a DreamBooth copy on such refined renders; a LoRA
adapter on the shared UNet keeps one copy of the weights in memory. In the
toy bench (bench/guidance_toy2d.py) the teacher, refined and trained on its
own CFG-7.5 output, still drifts towards saturated colours (31% of values
pinned, 40% with a one-step x̂₀ refinement); the knobs are the CFG scale,
`interval` and `train_steps`.

A step reads nothing back from the device (issue 28): timesteps and noise are
drawn on the device, ᾱ_t is read from a table on the device (NoiseTable), and
the diagnostics stay 0-dim tensors. The model calls (VAE encoder, UNet passes,
the adapter's diffusion loss) run under torch.compile where the preset asks for
it (guidance/compiled.py).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler
from torch import Tensor

from ..config_fields import ranged
from ..models.loading import TextToImageModels
from ..schedules import Ramp
from .base import GuidanceInput, GuidanceOutput, step_generator
from .compiled import GuidanceCompile
from .lora import LoraConfig, VariationalCopy, camera_features, frozen_unet
from .noise_schedule import NoiseTable, Weighting
from .text_prior import PromptEmbeddings

Objective = Literal["sds", "csd", "vsd", "bsd", "dsd"]
OBJECTIVES: tuple[str, ...] = ("sds", "csd", "vsd", "bsd", "dsd")
EncodeSize = Literal["native", "render"]


def method_dsd_weights(guidance_scale: float = 7.5) -> tuple[Ramp, Ramp]:
    """(λ_cfg, λ_var) of the shipped DSD: the CFG direction starts at the weight it has inside VSD's ε̂
    (s − 1) and falls to a third of it over the stage while the variational direction keeps weight 1, so the
    texture leans on the variational domain rather than on a high CFG scale (METHOD.md, claim 3). These are
    the weights bench/guidance_toy2d.py measured (BENCHMARKS.md: "DSD (λ_cfg 6.5→2.2, λ_var 1)"). The
    paper's own values are not public; a constant (s − 1, 1) would be VSD, λ_var = 0 CSD."""
    return Ramp(guidance_scale - 1.0, (guidance_scale - 1.0) / 3.0), Ramp(1.0)


@dataclass
class TimestepSchedule:
    """Which diffusion timesteps are sampled, as fractions of the training schedule, annealed over a
    fraction of the stage (schedules.stage_progress)."""

    t_range: tuple[float, float] = ranged((0.02, 0.98), 0, 1)
    """[min, max] at the first step."""
    t_range_end: tuple[float, float] | None = ranged(None, 0, 1)
    """[min, max] reached at `anneal_until` (e.g. (0.2, 0.5) from (0.7, 0.85)); None = no annealing."""
    anneal_until: float = ranged(1.0, 0, 1)
    """Fraction of the stage over which t_range moves linearly to t_range_end."""

    def range_at(self, progress: float) -> tuple[float, float]:
        """[min, max] at `progress` in [0, 1]."""
        if self.t_range_end is None:
            return self.t_range
        p = 1.0 if progress >= self.anneal_until else max(progress, 0.0) / self.anneal_until
        return (
            self.t_range[0] + (self.t_range_end[0] - self.t_range[0]) * p,
            self.t_range[1] + (self.t_range_end[1] - self.t_range[1]) * p,
        )

    def final(self) -> tuple[float, float]:
        """The range the stage ends with."""
        return self.t_range if self.t_range_end is None else self.t_range_end

    def sample(self, progress: float, batch: int, num_train_timesteps: int, generator: torch.Generator | None,
               device: torch.device | str | None = None) -> Tensor:
        """[B] integer timesteps drawn uniformly from the range at `progress`, on `device` (default: the
        generator's). The range is the host's arithmetic on `progress`; nothing is read from the device."""
        lo, hi = self.range_at(progress)
        lo_i = int(round(lo * num_train_timesteps))
        hi_i = max(int(round(hi * num_train_timesteps)), lo_i + 1)
        if device is None:
            device = generator.device if generator is not None else "cpu"
        return torch.randint(lo_i, min(hi_i, num_train_timesteps), (batch,), generator=generator, device=device)


@dataclass
class BootstrapConfig:
    """BSD's teacher: a LoRA adapter fine-tuned on renders refined by itself."""

    interval: int = ranged(100, 1, 1_000_000)
    """Steps between teacher refreshes (the first call refreshes too)."""
    refine_t: float = ranged(0.3, 0, 1)
    """Noise level (fraction of the schedule) the renders are noised to before refinement."""
    refine_steps: int = ranged(4, 1, 1000)
    """DDIM steps of the img2img refinement from refine_t down to a clean image."""
    train_steps: int = ranged(4, 0, 100_000)
    """Teacher optimiser steps per refresh."""
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(rank=4, learning_rate=1e-4))
    """The teacher's adapter."""


@dataclass
class ScoreDistillationConfig:
    """One text-conditioned score distillation objective and its settings."""

    objective: Objective = "sds"
    """sds | csd | vsd | bsd | dsd (formulas in the module docstring)."""
    guidance_scale: float = ranged(7.5, 0, 200)
    """CFG scale s of ε̂ (sds, vsd, bsd)."""
    timesteps: TimestepSchedule = field(default_factory=TimestepSchedule)
    """Sampled timestep range and its annealing."""
    weighting: Weighting = "sds"
    """w(t): "sds" = 1 − ᾱ_t, "uniform" = 1."""
    vae_resolution: int | None = ranged(None, 32, 2048)
    """Side the render is resized to before the VAE encoder; None = the model's native resolution."""
    encode_size: EncodeSize = "native"
    """"native": every render is resized to vae_resolution (or the model's native side) before the VAE
    encoder, as threestudio's guidance does (threestudio/models/guidance/stable_diffusion_guidance.py
    `__call__`: F.interpolate(rgb_BCHW, (512, 512)) whatever the render size): the method's behaviour.
    "render": a render smaller than that is encoded at its own side, rounded up to encode_multiple (so that
    the latents pass every UNet downsampling; never below one multiple); larger renders are still resized down
    to it. The trade: the UNet then runs on latents smaller than it was trained at (SD 2.1-base: 64²), for a
    step that costs in proportion to the encoded area (bench/guidance_flops.py, full-size SD 2.1-base, one
    view, VAE encoder forward + backward + the UNet's CFG pair: 3.88 TFLOP at 512, 2.10 at 384, 0.91 at 256,
    0.23 at 128, the VAE 59-60 % of each). It applies to every stage this config guides (with the geometry
    stages' `guidance.text`: the NeRF's 128 px low phase and 384 px high phase, NeuS's 256 px; DMTet renders
    above 512 and is unchanged). Its quality on the micro priors: BENCHMARKS.md, "Cheaper choices"."""
    lambda_cfg: Ramp = field(default_factory=lambda: method_dsd_weights(7.5)[0])
    """Weight of the CFG direction ε(y) − ε(∅) (csd, dsd); the default is method_dsd_weights' for s = 7.5."""
    lambda_var: Ramp = field(default_factory=lambda: method_dsd_weights(7.5)[1])
    """Weight of the variational direction ε(y) − ε_φ (dsd)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """The variational copy ε_φ (vsd, bsd, dsd)."""
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    """The teacher of bsd."""
    grad_clip: float | None = ranged(None, 0, 1e6)
    """Clamp each element of g to ±grad_clip; None = only non-finite values are zeroed."""
    seed: int = ranged(0, 0, 2**63 - 1)
    """Seed of the timestep / noise draws and of the adapters' training draws."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA; nothing on the CPU (fp32 there)."""
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def timestep_weight(scheduler: DDIMScheduler, t: Tensor, weighting: Weighting) -> Tensor:
    """[B,1,1,1] w(t), on t's device. For callers with a scheduler at hand; the guidance reads its NoiseTable."""
    return NoiseTable.of(scheduler, t.device).weight(t, weighting)


def add_noise(scheduler: DDIMScheduler, latents: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t (NoiseTable.add_noise) for callers with a scheduler at hand; the guidance reads its NoiseTable."""
    return NoiseTable.of(scheduler, latents.device).add_noise(latents, noise, t)


def clean_gradient(grad: Tensor, clip: float | None) -> Tensor:
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    return grad.clamp(-clip, clip) if clip is not None else grad


def reparameterised_loss(latents: Tensor, grad: Tensor) -> Tensor:
    """½‖x − sg(x − g)‖² / B: its gradient with respect to x is g / B."""
    target = (latents - grad).detach()
    return 0.5 * F.mse_loss(latents.float(), target.float(), reduction="sum") / latents.shape[0]


FP16_GRAD_SCALE = 2.0**10
"""Loss scale of the VAE encoder's backward in fp16 (cards without bf16). The render gradient g/B is small
per pixel; fp16 flushes values below about 6e-8 to zero and keeps few bits below 6e-5, so the gradient is
multiplied by this on its way into the fp16 encoder and divided out again at its fp32 input, the static
form of torch.amp.GradScaler's loss scaling. Values that overflow are zeroed, as clean_gradient does."""


class _GradScale(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by `scale` (and zeroes non-finite)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return torch.nan_to_num(grad.float() * ctx.scale, nan=0.0, posinf=0.0, neginf=0.0).to(grad.dtype), None


def encode_render(vae: AutoencoderKL, rgb: Tensor, resolution: int) -> Tensor:
    """rgb [B,H,W,3] in [0,1] -> scaled latents [B,4,h,w] (differentiable; the posterior mean).
    An fp16 VAE gets its backward loss-scaled (FP16_GRAD_SCALE). Compiled by the guidance (compiled.py)."""
    image = rgb.permute(0, 3, 1, 2)
    if image.shape[-2:] != (resolution, resolution):
        downsample = image.shape[-1] > resolution or image.shape[-2] > resolution
        image = F.interpolate(image, (resolution, resolution), mode="bilinear", align_corners=False, antialias=downsample)
    scaled = vae.dtype == torch.float16 and image.requires_grad
    if scaled:
        image = _GradScale.apply(image, 1.0 / FP16_GRAD_SCALE)
    image = image.to(vae.dtype) * 2.0 - 1.0
    # return_dict=False: the posterior itself, not diffusers' output dataclass around it
    latents = vae.encode(image, return_dict=False)[0].mean * vae.config.scaling_factor
    return _GradScale.apply(latents, FP16_GRAD_SCALE) if scaled else latents


def encode_multiple(models: TextToImageModels) -> int:
    """Image side the encoder's input must be a multiple of: the VAE's downsampling times the UNet's (it halves
    the latent once per block but the last), and 8 for the diffusers pipelines (stages/reference.py sizes the
    reference image the same way). SD 2.1-base: 8 x 8 = 64."""
    unet_factor = 2 ** (len(models.unet.config.block_out_channels) - 1)
    return math.lcm(8, models.vae_scale_factor * unet_factor)


def render_encode_side(render_side: int, largest: int, multiple: int) -> int:
    """Side a render of `render_side` pixels is encoded at under encode_size="render": rounded up to `multiple`
    (at least one multiple, the smallest input whose latents survive the UNet's downsampling), at most
    `largest` (the side encode_size="native" uses)."""
    return min(largest, max(multiple, -(-render_side // multiple) * multiple))


def frozen_cfg_eps(unet: torch.nn.Module, table: NoiseTable, x_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor,
                   dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(ε(x_t; ∅), ε(x_t; y)) [B,4,h,w] each from one batched pass of `unet` as it is (the caller switches
    its adapters off). Compiled by the guidance (compiled.py)."""
    x_in = torch.cat([x_t, x_t])
    t_in = torch.cat([t, t])
    pred = unet(x_in.to(dtype), t_in, encoder_hidden_states=torch.cat([uncond, cond]), return_dict=False)[0]
    eps_uncond, eps_cond = table.to_epsilon(pred.float(), x_in.float(), t_in).chunk(2)
    return eps_uncond, eps_cond


class ScoreDistillation:
    """Guidance from a text-to-image prior with one of the score distillation objectives."""

    def __init__(self, models: TextToImageModels, prompts: PromptEmbeddings, config: ScoreDistillationConfig,
                 compile: GuidanceCompile | None = None):
        """compile: how the model calls run (default: compiled on CUDA only, GuidanceCompile.choose("auto"))."""
        self.models = models
        self.prompts = prompts
        self.config = config
        self.scheduler = models.scheduler
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.table = NoiseTable.of(self.scheduler, models.device)
        self.generator = step_generator(models.device, config.seed)
        self.resolution = config.vae_resolution or models.native_resolution
        self._multiple = encode_multiple(models)
        self.compile = compile or GuidanceCompile.choose("auto", models.device)
        self._encode = self.compile(encode_render)
        self._cfg_pair = self.compile(frozen_cfg_eps)
        self.variational: VariationalCopy | None = None
        self.teacher: VariationalCopy | None = None
        if config.objective in ("vsd", "bsd", "dsd"):
            self.variational = VariationalCopy(models.unet, self.scheduler, config.lora, seed=config.seed + 1,
                                               compile=self.compile)
        if config.objective == "bsd":
            self.teacher = VariationalCopy(
                models.unet, self.scheduler, config.bootstrap.lora, seed=config.seed + 2, name=f"bootstrap_{id(self)}",
                compile=self.compile,
            )
        self._teacher_refreshed_at: int | None = None

    def encode_side(self, rgb: Tensor) -> int:
        """Side the render rgb [B,H,W,3] is encoded at (config.encode_size); read from its shape, no host sync.
        Compiled encodes specialise on it: one graph per render size a stage uses."""
        if self.config.encode_size == "render":
            return render_encode_side(max(rgb.shape[1], rgb.shape[2]), self.resolution, self._multiple)
        return self.resolution

    def release(self) -> None:
        """Remove this objective's LoRA adapters from the shared UNet. Call it when the stage ends: the UNet
        outlives jobs in the backend process, and every adapter left on it costs memory and time."""
        for copy in (self.variational, self.teacher):
            if copy is not None:
                copy.release()
        self.variational = self.teacher = None

    # -- noise predictions -------------------------------------------------------------------------

    def _frozen_cfg_pair(self, x_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor) -> tuple[Tensor, Tensor]:
        """(ε(x_t; ∅), ε(x_t; y)) from one batched pass of the pretrained UNet."""
        m = self.models
        with torch.no_grad(), frozen_unet(m.unet), autocast(m.device, m.dtype):
            return self._cfg_pair(m.unet, self.table, x_t, t, cond, uncond, m.dtype)

    def _adapter_eps(self, copy: VariationalCopy, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor | None) -> Tensor:
        with autocast(self.models.device, self.models.dtype):
            pred = copy.predict(x_t.to(self.models.dtype), t, text, camera)
        return self.table.to_epsilon(pred.float(), x_t.float(), t)

    # -- the objective -----------------------------------------------------------------------------

    def latent_gradient(
        self,
        latents: Tensor,
        t: Tensor,
        noise: Tensor,
        cond: Tensor,
        uncond: Tensor,
        camera: Tensor | None,
        progress: float = 0.0,
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        """g [B,4,h,w] on the latents x for timesteps t [B] (on the models' device) and injected noise
        ε [B,4,h,w]."""
        cfg = self.config
        latents = latents.detach().float()
        t = t.to(self.models.device)
        x_t = self.table.add_noise(latents, noise.float(), t)
        eps_uncond, eps_cond = self._frozen_cfg_pair(x_t, t, cond, uncond)
        w = self.table.weight(t, cfg.weighting).to(latents)
        s = cfg.guidance_scale
        diagnostics: dict[str, Tensor | float] = {}
        if cfg.objective == "sds":
            eps_hat = eps_uncond + s * (eps_cond - eps_uncond)
            grad = w * (eps_hat - noise)
        elif cfg.objective == "csd":
            lam_cfg = cfg.lambda_cfg.at(progress)
            grad = w * lam_cfg * (eps_cond - eps_uncond)
            diagnostics["lambda_cfg"] = lam_cfg
        elif cfg.objective == "vsd":
            eps_phi = self._adapter_eps(self.variational, x_t, t, cond, camera)
            grad = w * (eps_uncond + s * (eps_cond - eps_uncond) - eps_phi)
        elif cfg.objective == "bsd":
            eps_t_uncond = self._adapter_eps(self.teacher, x_t, t, uncond, camera)
            eps_t_cond = self._adapter_eps(self.teacher, x_t, t, cond, camera)
            eps_phi = self._adapter_eps(self.variational, x_t, t, cond, camera)
            grad = w * (eps_t_uncond + s * (eps_t_cond - eps_t_uncond) - eps_phi)
        else:  # dsd
            eps_phi = self._adapter_eps(self.variational, x_t, t, cond, camera)
            lam_cfg, lam_var = cfg.lambda_cfg.at(progress), cfg.lambda_var.at(progress)
            grad = w * (lam_cfg * (eps_cond - eps_uncond) + lam_var * (eps_cond - eps_phi))
            diagnostics.update(lambda_cfg=lam_cfg, lambda_var=lam_var)
        grad = clean_gradient(grad, cfg.grad_clip)
        diagnostics["grad_norm"] = grad.norm()
        diagnostics["t"] = t.float().mean() / self.num_train_timesteps
        return grad, diagnostics

    def _refresh_teacher(self, latents: Tensor, cond: Tensor, uncond: Tensor, camera: Tensor | None) -> Tensor:
        """Refine the current renders with the teacher (img2img from refine_t with CFG) and fine-tune it on them.
        A refresh step, every `interval` steps: the host reads the DDIM schedule here, a table on the CPU."""
        boot = self.config.bootstrap
        # The steps below are fed ε̂ (adapter outputs go through to_epsilon), so this DDIM must read its input
        # as ε whatever the checkpoint predicts: with a v-prediction config it would take ε̂ for v.
        ddim = DDIMScheduler.from_config(self.scheduler.config, prediction_type="epsilon")
        ddim.set_timesteps(max(int(round(boot.refine_steps / max(boot.refine_t, 1e-3))), boot.refine_steps))
        start = boot.refine_t * self.num_train_timesteps
        timesteps = [int(t) for t in ddim.timesteps if int(t) <= start][: boot.refine_steps]
        if not timesteps:
            timesteps = [int(ddim.timesteps[-1])]
        b, device = latents.shape[0], latents.device
        noise = torch.randn(latents.shape, generator=self.generator, device=device).to(latents)
        x = self.table.add_noise(latents.float(), noise.float(), torch.full((b,), timesteps[0], device=device))
        for t_int in timesteps:
            t = torch.full((b,), t_int, dtype=torch.long, device=device)
            eps_u = self._adapter_eps(self.teacher, x, t, uncond, camera)
            eps_c = self._adapter_eps(self.teacher, x, t, cond, camera)
            eps_hat = eps_u + self.config.guidance_scale * (eps_c - eps_u)
            x = ddim.step(eps_hat, t_int, x).prev_sample
        # DDIM's last step lands on timestep 0's noise level, close enough to a clean latent for fine-tuning.
        return self.teacher.train_step(x.detach().to(self.models.dtype), cond, camera, steps=boot.train_steps)

    def __call__(self, inp: GuidanceInput) -> GuidanceOutput:
        m = self.models
        b = inp.rgb.shape[0]
        progress = inp.progress()
        with autocast(m.device, m.dtype):
            latents = self._encode(m.vae, inp.rgb.to(m.device), self.encode_side(inp.rgb)).float()
        cond, uncond = self.prompts.for_cameras(inp.cameras)
        camera = camera_features(inp.cameras.c2w.to(m.device).float())
        t = self.config.timesteps.sample(progress, b, self.num_train_timesteps, self.generator, m.device)
        noise = torch.randn(latents.shape, generator=self.generator, device=m.device).to(latents)
        diagnostics: dict[str, Tensor | float] = {}
        if self.teacher is not None:
            interval = self.config.bootstrap.interval
            if self._teacher_refreshed_at is None or inp.step - self._teacher_refreshed_at >= interval:
                diagnostics["teacher_loss"] = self._refresh_teacher(latents.detach(), cond, uncond, camera)
                self._teacher_refreshed_at = inp.step
        grad, grad_diag = self.latent_gradient(latents, t, noise, cond, uncond, camera, progress)
        diagnostics.update(grad_diag)
        loss = reparameterised_loss(latents, grad)
        if self.variational is not None:
            diagnostics["lora_loss"] = self.variational.train_step(latents.detach().to(self.models.dtype), cond, camera)
        return GuidanceOutput(loss=loss, diagnostics=diagnostics)

