"""Prompt embeddings for the text-conditioned priors, with view-dependent prompt suffixes.

DreamFusion's trick: a text-to-image model draws the front of an object unless
told otherwise, so each sampled view gets its prompt suffixed with the side it
shows ("front view", "side view", "back view", "overhead view"). "Front" is the
reference camera's azimuth; a view is "back" within `back_half_angle_deg` of
the opposite azimuth, "front" within `front_half_angle_deg` of it, "side"
otherwise, and "overhead" above `overhead_elevation_deg` whatever its azimuth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config_fields import ranged
from ..models.loading import TextToImageModels
from ..render.cameras import CameraBatch

VIEW_DIRECTIONS: tuple[str, ...] = ("front", "side", "back", "overhead")
"""Order of the per-direction embeddings in PromptEmbeddings.conditional."""


@dataclass
class ViewPromptConfig:
    """How a view's direction picks its prompt suffix."""

    view_dependent: bool = True
    """Append the view suffix; False uses the bare prompt for every view."""
    front_azimuth_deg: float = ranged(0.0, -360, 360)
    """Azimuth that counts as the front: the reference camera's azimuth."""
    front_half_angle_deg: float = ranged(45.0, 0, 180)
    """Views within this many degrees of the front azimuth are "front"."""
    back_half_angle_deg: float = ranged(45.0, 0, 180)
    """Views within this many degrees of the opposite azimuth are "back"."""
    overhead_elevation_deg: float = ranged(60.0, -90, 90)
    """Views above this elevation are "overhead"."""


def view_prompt(prompt: str, direction: str) -> str:
    """The prompt with the suffix of a view direction (one of VIEW_DIRECTIONS)."""
    if direction not in VIEW_DIRECTIONS:
        raise ValueError(f"direction must be one of {VIEW_DIRECTIONS}, got {direction!r}")
    return f"{prompt}, {direction} view"


def view_directions(elevation_deg: Tensor, azimuth_deg: Tensor, cfg: ViewPromptConfig) -> Tensor:
    """[B] index into VIEW_DIRECTIONS for each camera, on the cameras' device. Overhead wins over back, back
    over front, front over side; chosen with torch.where (a boolean-mask assignment would read the mask's
    count back to the host)."""
    # Signed azimuth difference to the front, wrapped into [-180, 180).
    rel = (torch.remainder(azimuth_deg - cfg.front_azimuth_deg + 180.0, 360.0) - 180.0).abs()
    index = torch.full_like(rel, VIEW_DIRECTIONS.index("side"), dtype=torch.long)
    index = torch.where(rel < cfg.front_half_angle_deg, VIEW_DIRECTIONS.index("front"), index)
    index = torch.where(rel > 180.0 - cfg.back_half_angle_deg, VIEW_DIRECTIONS.index("back"), index)
    return torch.where(elevation_deg > cfg.overhead_elevation_deg, VIEW_DIRECTIONS.index("overhead"), index)


@torch.no_grad()
def encode_text(models: TextToImageModels, texts: list[str]) -> Tensor:
    """[N,L,D] CLIP text encoder hidden states, tokens padded to the tokenizer's max length."""
    tokens = models.tokenizer(
        texts,
        padding="max_length",
        max_length=models.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    hidden = models.text_encoder(tokens.input_ids.to(models.device))[0]
    return hidden.to(models.dtype)


@dataclass
class PromptEmbeddings:
    """A prompt encoded once per view direction, plus the unconditional (negative) prompt."""

    conditional: Tensor
    """[len(VIEW_DIRECTIONS),L,D] (all rows equal when view_dependent is False)."""
    unconditional: Tensor
    """[1,L,D] the negative prompt ("" is the classifier-free-guidance null prompt)."""
    config: ViewPromptConfig

    def for_cameras(self, cameras: CameraBatch) -> tuple[Tensor, Tensor]:
        """(conditional [B,L,D], unconditional [B,L,D]) for a batch of views, gathered on the device."""
        device = self.conditional.device
        index = view_directions(cameras.elevation_deg.to(device), cameras.azimuth_deg.to(device), self.config)
        cond = self.conditional.index_select(0, index)
        return cond, self.unconditional.expand(cond.shape[0], -1, -1)


def encode_prompts(
    models: TextToImageModels, prompt: str, negative_prompt: str = "", config: ViewPromptConfig | None = None
) -> PromptEmbeddings:
    config = config or ViewPromptConfig()
    if config.view_dependent:
        texts = [view_prompt(prompt, d) for d in VIEW_DIRECTIONS]
    else:
        texts = [prompt] * len(VIEW_DIRECTIONS)
    return PromptEmbeddings(encode_text(models, texts), encode_text(models, [negative_prompt]), config)
