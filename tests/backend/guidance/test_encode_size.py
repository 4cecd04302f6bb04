"""The text prior's encode size (ScoreDistillationConfig.encode_size, issue 28 item 3): by default every render
is resized to the model's native side before the VAE encoder (threestudio's way); with "render" a smaller
render is encoded at its own side, rounded up to a side whose latents pass the UNet."""

from __future__ import annotations

import pytest
import torch
from dreampolish.backend.guidance.base import GuidanceInput
from dreampolish.backend.guidance.score_distillation import (
    ScoreDistillation,
    ScoreDistillationConfig,
    encode_multiple,
    render_encode_side,
)
from dreampolish.backend.guidance.text_prior import encode_prompts


def encoded_sides(priors, orbit, config: ScoreDistillationConfig, render_side: int) -> tuple[list[int], torch.Tensor]:
    """Image sides the VAE encoder was given in one guidance step on a render of `render_side`, and the render's
    gradient."""
    models = priors.text_to_image
    guidance = ScoreDistillation(models, encode_prompts(models, "a red teapot", ""), config)
    seen: list[int] = []
    encode = models.vae.encode

    def recording_encode(image, *args, **kwargs):
        seen.append(image.shape[-1])
        assert image.shape[-2] == image.shape[-1]
        return encode(image, *args, **kwargs)

    models.vae.encode = recording_encode
    try:
        rgb = torch.rand(2, render_side, render_side, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        out = guidance(GuidanceInput(rgb=rgb, opacity=torch.ones(2, render_side, render_side, 1),
                                     cameras=orbit([10.0, 30.0], [0.0, 120.0], size=render_side), step=0, total_steps=10))
        out.loss.backward()
    finally:
        del models.vae.encode
    return seen, rgb.grad


def test_the_tiny_models_native_side_and_multiple(tiny_priors):
    # The tests below read their expected sides from these: native 32 px, VAE x2 and one UNet halving -> 8.
    assert tiny_priors.text_to_image.native_resolution == 32
    assert encode_multiple(tiny_priors.text_to_image) == 8


def test_by_default_a_small_render_is_encoded_at_the_native_side(tiny_priors, orbit):
    config = ScoreDistillationConfig()
    assert config.encode_size == "native"
    seen, grad = encoded_sides(tiny_priors, orbit, config, 16)
    assert seen == [32]
    assert grad.shape == (2, 16, 16, 3) and grad.abs().sum() > 0


@pytest.mark.parametrize(("render", "encoded"), [(16, 16), (24, 24), (20, 24), (4, 8), (32, 32), (48, 32)])
def test_encode_at_render_size_follows_the_render_below_the_native_side(tiny_priors, orbit, render, encoded):
    seen, grad = encoded_sides(tiny_priors, orbit, ScoreDistillationConfig(encode_size="render"), render)
    assert seen == [encoded]
    assert grad.shape == (2, render, render, 3) and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_encode_at_render_size_stays_under_an_explicit_vae_resolution(tiny_priors, orbit):
    seen, _ = encoded_sides(tiny_priors, orbit, ScoreDistillationConfig(encode_size="render", vae_resolution=40), 48)
    assert seen == [40]


@pytest.mark.parametrize(("render", "largest", "multiple", "side"), [
    (128, 512, 64, 128),   # SD 2.1-base, the standard NeRF's low phase
    (384, 512, 64, 384),   # its high phase
    (100, 512, 64, 128),   # rounded up, so that the 16-px latent halves three times in the UNet
    (10, 512, 64, 64),     # never below one multiple
    (1024, 512, 64, 512),  # DMTet's renders are resized down, as by default
    (32, 64, 16, 32),      # the micro priors (VAE x4, UNet x4), the micro NeRF's low phase
    (40, 64, 16, 48),      # micro NeuS
])
def test_render_encode_side(render, largest, multiple, side):
    assert render_encode_side(render, largest, multiple) == side
    assert side % multiple == 0 or side == largest
