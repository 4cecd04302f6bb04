"""The diffusion forward process as the guidance reads it: a scheduler's ᾱ_t table kept on the device.

Indexing diffusers' `scheduler.alphas_cumprod` (a CPU tensor) with timesteps drawn on the device would copy
them to the host every step (issue 28); the table is moved to the device once and read there with device
timesteps, inside or outside a compiled region (guidance/compiled.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import DDIMScheduler
from torch import Tensor

Weighting = Literal["sds", "uniform"]


@dataclass(frozen=True)
class NoiseTable:
    """ᾱ_t of a scheduler on one device, and what its UNet predicts (ε or v)."""

    alphas_cumprod: Tensor
    """[T] ᾱ_t, fp32, on the device of the latents."""
    v_prediction: bool
    """The UNet predicts v = √ᾱ ε − √(1−ᾱ) x (SD 2.1 at 768 px) rather than ε."""

    @classmethod
    def of(cls, scheduler: DDIMScheduler, device: torch.device | str) -> NoiseTable:
        return cls(scheduler.alphas_cumprod.to(device=device, dtype=torch.float32),
                   scheduler.config.prediction_type == "v_prediction")

    def alpha_bar(self, t: Tensor, like: Tensor) -> Tensor:
        """[B,1,1,1] ᾱ_t for timesteps t [B] (on the table's device), in `like`'s dtype."""
        return self.alphas_cumprod[t].to(like.dtype).reshape(-1, 1, 1, 1)

    def add_noise(self, latents: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = √ᾱ_t x + √(1−ᾱ_t) ε (diffusers DDIMScheduler.add_noise)."""
        a = self.alpha_bar(t, latents)
        return a.sqrt() * latents + (1 - a).sqrt() * noise

    def to_epsilon(self, prediction: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The UNet's output as a noise prediction (v-prediction: ε = √ᾱ v + √(1−ᾱ) x_t, diffusers
        DDIMScheduler.step's pred_epsilon)."""
        if not self.v_prediction:
            return prediction
        a = self.alpha_bar(t, x_t)
        return a.sqrt() * prediction + (1 - a).sqrt() * x_t

    def velocity(self, latents: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The v-prediction target v = √ᾱ ε − √(1−ᾱ) x (diffusers DDIMScheduler.get_velocity)."""
        a = self.alpha_bar(t, latents)
        return a.sqrt() * noise - (1 - a).sqrt() * latents

    def weight(self, t: Tensor, weighting: Weighting) -> Tensor:
        """[B,1,1,1] w(t): "sds" = 1 − ᾱ_t (DreamFusion), "uniform" = 1."""
        if weighting == "uniform":
            return torch.ones(t.shape[0], 1, 1, 1, device=self.alphas_cumprod.device)
        return (1.0 - self.alphas_cumprod[t]).reshape(-1, 1, 1, 1)
