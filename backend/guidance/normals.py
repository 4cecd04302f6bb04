"""Normal-estimator targets for the polish stage: diffusers' Marigold normals pipeline, cached per view.

Marigold's frame (diffusers' MarigoldNormalsPipeline and its
`visualize_normals`): a unit normal per pixel with X pointing right, Y up and Z
towards the observer, channels-first [N,3,H,W] for output_type="pt", row 0 at
the top of the image. That is the renderer's camera frame (render/cameras.py:
+X right, +Y up, camera looks down −Z so +Z points at the viewer), so the
conversion is the identity matrix below plus a layout change; it is written
out so that an estimator with another convention (StableNormal, a different
checkpoint) changes one matrix.

The estimate depends on the image only, so estimates are cached by view
(camera pose, field of view, image size); `clear()` drops them, e.g. when the
renders change enough to warrant fresh estimates. Forming the key reads the
camera back from the device (a host sync per call): the polish stage keeps its
fixed view pool's targets itself (stages/polish.py PoolTargets) and calls in
only for views it has not estimated yet.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..config_fields import ranged
from ..render.cameras import CameraBatch

MARIGOLD_TO_CAMERA = torch.eye(3)
"""Rotation from Marigold's normal frame (X right, Y up, Z to the viewer) to the renderer's camera frame."""


@dataclass
class NormalEstimatorConfig:
    """How the normal estimator is run and cached."""

    num_inference_steps: int | None = ranged(None, 1, 500)
    """Denoising steps; None = the checkpoint's default_denoising_steps."""
    ensemble_size: int = ranged(1, 1, 64)
    """Predictions averaged per image (Marigold's test-time ensembling)."""
    processing_resolution: int | None = ranged(None, 0, 4096)
    """Side the estimator works at; None = the checkpoint's default."""
    background: tuple[float, float, float] = ranged((1.0, 1.0, 1.0), 0, 1)
    """Colour the render is composited over before estimation."""
    mask_threshold: float = ranged(0.5, 0, 1)
    """Pixels with opacity below this get no estimate (zero normal)."""
    cache_size: int = ranged(256, 0, 65_536)
    """Views kept in the cache (least recently used dropped first)."""
    cache_decimals: int = ranged(4, 0, 12)
    """Camera parameters are rounded to this many decimals to form the cache key."""
    seed: int = ranged(0, 0, 2**63 - 1)
    """Seed of the estimator's initial noise."""


class MarigoldNormalTargets:
    """NormalTargets (guidance/base.py) backed by a MarigoldNormalsPipeline (or any callable like it)."""

    def __init__(self, pipeline: Any, config: NormalEstimatorConfig | None = None):
        self.pipeline = pipeline
        self.config = config or NormalEstimatorConfig()
        self._cache: OrderedDict[tuple, Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self._cache.clear()

    def _keys(self, cameras: CameraBatch) -> list[tuple]:
        d = self.config.cache_decimals
        c2w = cameras.c2w.detach().cpu().reshape(-1, 16).tolist()  # one device sync for the batch
        fovy = cameras.fovy_deg.detach().cpu().tolist()
        return [
            (tuple(round(v, d) for v in pose), round(f, d), cameras.width, cameras.height)
            for pose, f in zip(c2w, fovy)
        ]

    @torch.no_grad()
    def _estimate(self, image: Tensor) -> Tensor:
        """image [N,3,H,W] in [0,1] -> [N,3,H,W] normals in Marigold's frame."""
        cfg = self.config
        device = getattr(self.pipeline, "device", image.device)
        generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
        out = self.pipeline(
            image.to(device),
            num_inference_steps=cfg.num_inference_steps,
            ensemble_size=cfg.ensemble_size,
            processing_resolution=cfg.processing_resolution,
            match_input_resolution=True,
            output_type="pt",
            generator=generator,
        )
        return out.prediction.float()

    def __call__(self, rgb: Tensor, opacity: Tensor, cameras: CameraBatch) -> Tensor:
        """rgb [B,H,W,3] in [0,1], opacity [B,H,W,1] -> [B,H,W,3] unit camera-frame normals, zero off the mask."""
        b = rgb.shape[0]
        keys = self._keys(cameras)
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        found = {k: self._cache[k] for k in keys if k in self._cache}
        if missing:
            bg = torch.tensor(self.config.background, device=rgb.device, dtype=torch.float32)
            image = rgb[missing].detach().float() * opacity[missing].detach().float()
            image = image + (1.0 - opacity[missing].detach().float()) * bg
            predicted = self._estimate(image.permute(0, 3, 1, 2).clamp(0, 1))
            frame = MARIGOLD_TO_CAMERA.to(predicted.device)
            normals = torch.einsum("ij,bjhw->bhwi", frame, predicted)
            normals = torch.nn.functional.normalize(normals, dim=-1)
            for j, i in enumerate(missing):
                found[keys[i]] = normals[j].to(rgb.device)
        self.misses += len(missing)
        self.hits += b - len(missing)
        for k in keys:
            self._cache[k] = found[k]
            self._cache.move_to_end(k)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)
        normals = torch.stack([found[k] for k in keys]).to(rgb.device)
        return normals * (opacity.detach() >= self.config.mask_threshold).to(normals)
