"""The LoRA variational copy ε_φ of VSD/BSD/DSD: a peft LoRA adapter on the frozen UNet, camera-conditioned.

ε_φ models the distribution of the current renders (ProlificDreamer): it is the
frozen UNet plus a low-rank adapter on its attention projections, plus a small
camera MLP whose output is added to the UNet's timestep embedding (the UNet's
class-embedding slot). It is trained with the ordinary diffusion loss on the
detached render latents, with the camera dropped (zeroed) for a fraction of
samples so that it also learns the camera-free score.

The adapter lives on the shared UNet under its own name, so one copy of the
UNet weights serves the frozen model and every variational copy: frozen passes
run inside `frozen_unet(unet)`, which disables all adapters. The last layer of
the camera MLP and peft's LoRA B matrices start at zero, so ε_φ starts equal to
the frozen model.

A training step reads nothing back from the device (issue 28): its draws come from
a generator on the device, its loss is returned as a 0-dim tensor, and the
optimiser is a fused AdamW, which takes GradScaler's inf check as a device tensor
(`_step_supports_amp_scaling`) instead of reading it on the host before stepping.
The UNet passes go through `unet_prediction` and `adapter_loss`, which the
guidance compiles (guidance/compiled.py).
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DConditionModel
from peft import LoraConfig as PeftLoraConfig
from torch import Tensor

from ..config_fields import ranged
from ..rng import global_rng_seeded
from .base import step_generator
from .compiled import GuidanceCompile
from .noise_schedule import NoiseTable

CAMERA_FEATURES = 16
"""Camera condition: the flattened 4x4 camera-to-world matrix."""

_adapter_ids = itertools.count()


@dataclass
class LoraConfig:
    """The variational copy's adapter and its training."""

    rank: int = ranged(4, 1, 512)
    """LoRA rank of each adapted attention projection."""
    alpha: float | None = ranged(None, 0, 4096)
    """LoRA scaling numerator (scale = alpha / rank); None = rank (scale 1)."""
    learning_rate: float = ranged(1e-4, 0, 1)
    """AdamW learning rate of the adapter and the camera MLP."""
    camera_conditioning: bool = True
    """Condition ε_φ on the camera through a small MLP added to the timestep embedding."""
    camera_dropout: float = ranged(0.1, 0, 1)
    """Fraction of training samples whose camera is zeroed."""
    train_steps: int = ranged(1, 0, 100_000)
    """Optimiser steps of the adapter per guidance call."""
    train_t_range: tuple[float, float] = ranged((0.0, 1.0), 0, 1)
    """Fraction of the training timesteps that the adapter's diffusion loss samples from."""
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    """UNet attention projections that get an adapter."""


def camera_features(c2w: Tensor) -> Tensor:
    """[B,4,4] camera-to-world -> [B,16] condition vector."""
    return c2w.reshape(c2w.shape[0], CAMERA_FEATURES)


def unet_prediction(unet: UNet2DConditionModel, x_t: Tensor, t: Tensor, text: Tensor, labels: Tensor | None) -> Tensor:
    """The UNet's output [B,4,h,w] as its adapters stand, with class labels (the camera MLP's input) or none.
    Compiled by the guidance (compiled.py)."""
    return unet(x_t, t, encoder_hidden_states=text, class_labels=labels, return_dict=False)[0]


def adapter_loss(unet: UNet2DConditionModel, table: NoiseTable, latents: Tensor, noise: Tensor, t: Tensor,
                 text: Tensor, labels: Tensor | None) -> Tensor:
    """The diffusion loss ‖ε_φ(x_t; y, c) − target‖² (mean) of the active adapter at timesteps t [B] for
    injected noise [B,4,h,w]; the target is ε, or v for a v-prediction UNet. Compiled by the guidance."""
    x_t = table.add_noise(latents, noise, t)
    pred = unet(x_t, t, encoder_hidden_states=text, class_labels=labels, return_dict=False)[0]
    target = table.velocity(latents, noise, t) if table.v_prediction else noise
    return F.mse_loss(pred.float(), target.float())


@contextlib.contextmanager
def frozen_unet(unet: UNet2DConditionModel) -> Iterator[UNet2DConditionModel]:
    """Run the pretrained UNet: every LoRA adapter on it is switched off inside this block."""
    has_adapters = bool(getattr(unet, "peft_config", None))
    if has_adapters:
        unet.disable_adapters()
    try:
        yield unet
    finally:
        if has_adapters:
            unet.enable_adapters()


class VariationalCopy:
    """ε_φ(x_t; y, c): one named LoRA adapter on a shared frozen UNet, with its own optimiser."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: DDIMScheduler,
        config: LoraConfig,
        seed: int = 0,
        name: str | None = None,
        compile: GuidanceCompile | None = None,
    ):
        """compile: how the adapter's UNet passes run (default: compiled on CUDA only)."""
        self.unet = unet
        self.scheduler = scheduler
        self.config = config
        self.name = name or f"variational_{next(_adapter_ids)}"
        device = unet.device
        self.table = NoiseTable.of(scheduler, device)
        self.generator = step_generator(device, seed)
        self.compile = compile or GuidanceCompile.choose("auto", device)
        self._prediction = self.compile(unet_prediction)
        self._loss = self.compile(adapter_loss)
        # The adapter's and the camera MLP's initial weights come from `seed` (peft initialises
        # lora_A with the global RNG), whatever other jobs in the process do meanwhile.
        with global_rng_seeded(seed):
            self.lora_parameters = self._add_adapter(unet, config)
            self.camera_mlp = self._camera_mlp(unet, config, device)
        if self.camera_mlp is not None and unet.class_embedding is None:
            # The UNet's class-embedding slot starts as a plain None attribute; `_active` assigns a module to
            # it and restores None into the registered slot, a change Dynamo's guards would see on the next
            # frozen pass (one more compilation of it). Register the empty slot now, before any pass runs.
            unet.class_embedding = torch.nn.Identity()
            unet.class_embedding = None
        params = list(self.lora_parameters) + (list(self.camera_mlp.parameters()) if self.camera_mlp else [])
        # Fused where torch has the kernel (CUDA, CPU; not `meta`): one launch per step, its step counts on
        # the device, and GradScaler's found_inf is read inside the kernel rather than by the host.
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0,
                                           fused=device.type in ("cuda", "cpu"))
        # The adapter's weights are fp32, but in fp16 (cards without bf16) its gradient flows back through the
        # UNet's fp16 activations, where small values flush to zero: dynamic loss scaling, as torch.amp does
        # for mixed precision. bf16 has fp32's exponent range and needs none.
        scaled = unet.dtype == torch.float16 and device.type in ("cuda", "cpu")
        self.scaler = torch.amp.GradScaler(device.type, enabled=scaled)

    def _add_adapter(self, unet: UNet2DConditionModel, config: LoraConfig) -> list[Tensor]:
        with warnings.catch_warnings():
            # Several named adapters on one UNet is the design here (one set of base weights in memory).
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            unet.add_adapter(
                PeftLoraConfig(
                    r=config.rank,
                    lora_alpha=config.alpha if config.alpha is not None else config.rank,
                    init_lora_weights=True,
                    target_modules=list(config.target_modules),
                ),
                adapter_name=self.name,
            )
        # The adapter trains in fp32 even when the UNet runs in bf16/fp16 (peft casts the input).
        params = [p for n, p in unet.named_parameters() if f".{self.name}." in n]
        for p in params:
            p.data = p.data.float()
            p.requires_grad_(True)
        return params

    @staticmethod
    def _camera_mlp(unet: UNet2DConditionModel, config: LoraConfig, device: torch.device) -> torch.nn.Module | None:
        if not config.camera_conditioning:
            return None
        time_dim = unet.time_embedding.linear_2.out_features
        mlp = torch.nn.Sequential(
            torch.nn.Linear(CAMERA_FEATURES, time_dim), torch.nn.SiLU(), torch.nn.Linear(time_dim, time_dim)
        ).to(device)
        torch.nn.init.zeros_(mlp[2].weight)
        torch.nn.init.zeros_(mlp[2].bias)
        return mlp

    def release(self) -> None:
        """Remove this adapter from the shared UNet (its weights and optimiser state go with it)."""
        if self.name in getattr(self.unet, "peft_config", {}):
            self.unet.delete_adapters(self.name)
        self.lora_parameters = []
        self.camera_mlp = None
        self.optimizer = None

    def parameters(self) -> list[Tensor]:
        return list(self.lora_parameters) + (list(self.camera_mlp.parameters()) if self.camera_mlp else [])

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        """Switch the UNet to this adapter (and its camera MLP) for the duration of the block."""
        self.unet.set_adapter(self.name)
        for p in self.lora_parameters:
            p.requires_grad_(True)
        previous = self.unet.class_embedding
        self.unet.class_embedding = self.camera_mlp
        try:
            yield
        finally:
            self.unet.class_embedding = previous

    def _labels(self, camera: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
        """The camera MLP's input [B,16] (zeros for the camera-free score), or None without the MLP."""
        if self.camera_mlp is None:
            return None
        labels = torch.zeros(batch, CAMERA_FEATURES, device=device) if camera is None else camera
        return labels.to(device=device, dtype=torch.float32)

    @torch.no_grad()
    def predict(self, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor | None) -> Tensor:
        """ε_φ(x_t; y, c) [B,4,h,w] (the UNet's output: ε or v); camera [B,16] or None (the camera-free score)."""
        with self._active():
            labels = self._labels(camera, x_t.shape[0], x_t.device)
            return self._prediction(self.unet, x_t, t.to(x_t.device), text, labels)

    def train_step(self, latents: Tensor, text: Tensor, camera: Tensor | None, steps: int | None = None) -> Tensor:
        """`steps` (default config.train_steps) diffusion-loss steps on detached render latents [B,4,h,w];
        returns the mean loss over them as a detached 0-dim tensor (0 without steps)."""
        latents = latents.detach()
        device = latents.device
        n_train = self.scheduler.config.num_train_timesteps
        lo, hi = (int(n_train * f) for f in self.config.train_t_range)
        b = latents.shape[0]
        total = torch.zeros((), device=device)
        n = self.config.train_steps if steps is None else steps
        with self._active():
            for _ in range(n):
                t = torch.randint(lo, max(hi, lo + 1), (b,), generator=self.generator, device=device)
                noise = torch.randn(latents.shape, generator=self.generator, device=device).to(latents)
                cam = camera
                if cam is not None:
                    keep = torch.rand(b, generator=self.generator, device=device) >= self.config.camera_dropout
                    cam = cam * keep.to(cam)[:, None]
                loss = self._loss(self.unet, self.table, latents, noise, t, text.detach(),
                                  self._labels(cam, b, device))
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                # A fused optimiser takes the scale and the inf check as device tensors and skips its own
                # update if anything overflowed; no read-back (GradScaler.step, `_step_supports_amp_scaling`).
                self.scaler.step(self.optimizer)
                self.scaler.update()
                total = total + loss.detach().float()
        return total / max(n, 1)
