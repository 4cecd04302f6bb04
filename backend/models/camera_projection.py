"""The Zero123 camera projection: CLIP image embedding + relative camera -> UNet cross-attention context.

Zero123 concatenates the reference image's CLIP embedding [B,1,D] with the
4-vector relative camera [B,1,4] and maps the result back to D with one linear
layer; the UNet cross-attends to that single token. The class, its config names
(`embedding_dim`, `additional_embeddings`) and its parameter names (`proj`)
follow the diffusers conversions of Zero123-XL / Stable-Zero123 (subfolder
`clip_camera_projection`), so their weights load into it.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor


class CLIPCameraProjection(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, embedding_dim: int = 768, additional_embeddings: int = 4):
        super().__init__()
        self.proj = torch.nn.Linear(embedding_dim + additional_embeddings, embedding_dim)

    def forward(self, embedding: Tensor) -> Tensor:
        """embedding [B,1,D+4] (image embedding, then camera) -> [B,1,D]."""
        return self.proj(embedding)
