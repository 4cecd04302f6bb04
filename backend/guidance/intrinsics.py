"""Intrinsic decomposition of renders: albedo, roughness and metallic per pixel.

Two decomposers share one interface (`Decomposer`): diffusers' MarigoldIntrinsicsPipeline (the method's,
checkpoint prs-eth/marigold-iid-appearance-v1-1), and an oracle that knows a target's material and stands
in for it in tests and benchmarks, as guidance/oracle.py stands in for the diffusion priors. The texture
stage fuses what either returns into the UV atlas the same way (bake.fuse_views).

Marigold-IID-Appearance's outputs (diffusers' MarigoldIntrinsicsPipeline, `prediction` [N*T,3,H,W] in
[0,1] with output_type="pt", the T targets of each image consecutive, in the order of
`target_properties["target_names"]`). The checkpoint's model_index.json (revision
e7280a0a0fc5a0df0b36050882b3d8b77da22fd9) declares
    target_names ["albedo", "material"]; albedo: prediction_space "srgb";
    material: a "stack" of sub_target_names ["roughness", "metallicity", null];
    roughness, metallicity: prediction_space "linear"
(its UNet takes 12 latent channels, the image latent and 2 x 4 target latents, and gives 8). Albedo in
sRGB is what a base-colour texture holds (glTF 2.0: baseColorTexture is sRGB-encoded); roughness and
metallic are linear data, what glTF's metallicRoughnessTexture holds. The names are read from the
pipeline's own target_properties, not assumed, so a checkpoint that orders them differently still works.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ..config_fields import ranged
from ..geometry.mesh import TriMesh
from ..render.cameras import CameraBatch
from ..render.rasterize import MeshRasterizer
from .oracle import OracleTarget


@dataclass
class IntrinsicMaps:
    """Per-pixel material of a batch of renders."""

    albedo: Tensor
    """[B,H,W,3] de-lit base colour in [0,1], display (sRGB) values."""
    roughness: Tensor
    """[B,H,W,1] perceptual roughness in [0,1] (glTF's roughness)."""
    metallic: Tensor
    """[B,H,W,1] metalness in [0,1]."""


class Decomposer(Protocol):
    """rgb [B,H,W,3] display values in [0,1], opacity [B,H,W,1], the cameras -> IntrinsicMaps."""

    def __call__(self, rgb: Tensor, opacity: Tensor, cameras: CameraBatch) -> IntrinsicMaps: ...

    def close(self) -> None:
        """The bake is done: let go of what the decomposer holds (the model, used once per job)."""
        ...


@dataclass
class IntrinsicsConfig:
    """How the intrinsic decomposer runs."""

    num_inference_steps: int | None = ranged(None, 1, 500)
    """Denoising steps; None = the checkpoint's default_denoising_steps."""
    ensemble_size: int = ranged(1, 1, 64)
    """Predictions averaged per image (Marigold's test-time ensembling, median)."""
    processing_resolution: int | None = ranged(None, 0, 4096)
    """Side the model works at; None = the checkpoint's default_processing_resolution."""
    batch_size: int = ranged(1, 1, 256)
    """Views decomposed per call. One: each view at the 768-pixel processing size costs about 3.5 GB
    of activations (the dry run's Marigold figure), so four at once took the draft texture stage's
    estimated peak from 14 to 24.3 GB; the views are few (8) and the bake runs once per job."""
    seed: int = ranged(0, 0, 2**63 - 1)
    """Seed of the model's initial noise."""


def _target_channels(properties: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """{"albedo" | "roughness" | "metallic": (target index, channel or -1 for all three)} from a
    MarigoldIntrinsicsPipeline's target_properties (module docstring)."""
    names = list(properties.get("target_names") or [])
    found: dict[str, tuple[int, int]] = {}
    aliases = {"albedo": "albedo", "roughness": "roughness", "metallicity": "metallic", "metallic": "metallic"}
    for index, name in enumerate(names):
        entry = properties.get(name) or {}
        if entry.get("prediction_space") == "stack" or "sub_target_names" in entry:
            for channel, sub in enumerate(entry.get("sub_target_names") or []):
                if sub in aliases:
                    found[aliases[sub]] = (index, channel)
        elif name in aliases:
            found[aliases[name]] = (index, -1)
    missing = {"albedo", "roughness", "metallic"} - set(found)
    if missing:
        raise ValueError(f"the intrinsics model predicts {names}; it lacks {sorted(missing)} (an appearance "
                         "model such as prs-eth/marigold-iid-appearance-v1-1 is needed)")
    return found


class MarigoldIntrinsics:
    """Decomposer backed by a MarigoldIntrinsicsPipeline (or any callable with its signature and a
    `target_properties` attribute)."""

    def __init__(self, pipeline: Any, config: IntrinsicsConfig | None = None,
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0), on_close: Any = None):
        """on_close: called by close(), e.g. to unload the model (it would stay resident for the
        later stages and jobs otherwise: 2.6 GB in bf16 on every stage's peak)."""
        self.pipeline = pipeline
        self.on_close = on_close
        self.config = config or IntrinsicsConfig()
        self.background = background
        self.channels = _target_channels(getattr(pipeline, "target_properties", None) or {})
        self.n_targets = len(pipeline.target_properties["target_names"])

    @torch.no_grad()
    def _predict(self, image: Tensor) -> Tensor:
        """image [N,3,H,W] in [0,1] -> [N,T,3,H,W]."""
        cfg = self.config
        device = getattr(self.pipeline, "device", image.device)
        generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
        out = self.pipeline(image.to(device), num_inference_steps=cfg.num_inference_steps,
                            ensemble_size=cfg.ensemble_size, processing_resolution=cfg.processing_resolution,
                            match_input_resolution=True, output_type="pt", generator=generator)
        pred = out.prediction.float()
        return pred.reshape(image.shape[0], self.n_targets, *pred.shape[1:])

    def __call__(self, rgb: Tensor, opacity: Tensor, cameras: CameraBatch) -> IntrinsicMaps:
        bg = torch.tensor(self.background, device=rgb.device, dtype=torch.float32)
        image = rgb.detach().float() * opacity.detach().float() + (1.0 - opacity.detach().float()) * bg
        image = image.permute(0, 3, 1, 2).clamp(0, 1)
        step = self.config.batch_size
        pred = torch.cat([self._predict(image[i:i + step]) for i in range(0, image.shape[0], step)]).to(rgb.device)

        def pick(name: str) -> Tensor:
            target, channel = self.channels[name]
            p = pred[:, target]  # [B,3,H,W]
            p = p if channel < 0 else p[:, channel:channel + 1]
            return p.permute(0, 2, 3, 1).clamp(0, 1)

        return IntrinsicMaps(pick("albedo"), pick("roughness"), pick("metallic"))

    def close(self) -> None:
        self.pipeline = None
        if self.on_close is not None:
            self.on_close()


MaterialFunction = Callable[[Tensor], Tensor]
"""world points [N,3] -> [N,5] material: albedo rgb (display values), roughness, metallic."""


class OracleDecomposer:
    """Decomposer that knows the target's material: it rasterises the target mesh at the cameras and
    returns its material there: `material` evaluated at the surface points, or else the target's albedo
    as the oracle prior renders it (vertex colours or a UV texture) with constant roughness and metallic.
    The renders it is given are not looked at: it is the answer a perfect intrinsic model would give."""

    def __init__(self, target: TriMesh, rasterizer: MeshRasterizer | None = None,
                 material: MaterialFunction | None = None, roughness: float = 0.5, metallic: float = 0.0,
                 texture: Tensor | None = None):
        self.oracle = OracleTarget(target, rasterizer or MeshRasterizer("torch"), texture)
        self.material = material
        self.constants = (float(roughness), float(metallic))

    @torch.no_grad()
    def __call__(self, rgb: Tensor, opacity: Tensor, cameras: CameraBatch) -> IntrinsicMaps:
        if self.material is None:
            tgt = self.oracle.render(cameras)
            fg = (tgt.mask > 0).to(tgt.albedo)
            rough, metal = self.constants
            return IntrinsicMaps(tgt.albedo, fg * rough, fg * metal)
        mesh = self.oracle.target.to(cameras.device)
        out = self.oracle.rasterizer.rasterize(mesh, cameras)
        fg = out.foreground[..., 0]
        values = torch.zeros(*fg.shape, 5, device=cameras.device)
        values[fg] = self.material(out.world_pos[fg]).to(values)
        return IntrinsicMaps(values[..., :3], values[..., 3:4], values[..., 4:5])

    def close(self) -> None:
        """The oracle holds nothing to let go of."""
