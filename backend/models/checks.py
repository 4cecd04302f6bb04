"""Is a checkpoint folder the architecture its role expects? Read from its configs only (no weights loaded).

A folder can be complete and still the wrong model: SD 2.1 (768 px, v-prediction) where 2.1-base (512 px,
ε-prediction) is configured, a Zero123 folder given as the text-to-image model, an SD 1.x UNet (768-wide
text tokens) beside SD 2's 1024-wide text encoder. Loading would succeed and the run would quietly go wrong.

Role-level expectations are what the guidance code relies on (the UNet's input channels: 4 for text-to-image,
8 for Zero123 and Marigold, which concatenate a conditioning latent); a spec's `expect` adds the
checkpoint-specific values (sample size, cross-attention width, prediction type).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .specs import ModelRole, ModelSpec

ROLE_ARCHITECTURE: dict[ModelRole, dict[str, dict[str, Any]]] = {
    "text_to_image": {
        "unet/config.json": {"_class_name": "UNet2DConditionModel", "in_channels": 4, "out_channels": 4},
        "vae/config.json": {"_class_name": "AutoencoderKL", "latent_channels": 4},
        "text_encoder/config.json": {"architectures": ["CLIPTextModel"]},
    },
    "zero123": {
        "unet/config.json": {"_class_name": "UNet2DConditionModel", "in_channels": 8, "out_channels": 4},
        "vae/config.json": {"_class_name": "AutoencoderKL", "latent_channels": 4},
        "image_encoder/config.json": {"architectures": ["CLIPVisionModelWithProjection"]},
        "clip_camera_projection/config.json": {"_class_name": "CLIPCameraProjection"},
    },
    "normals": {
        "model_index.json": {"_class_name": "MarigoldNormalsPipeline"},
        "unet/config.json": {"_class_name": "UNet2DConditionModel", "in_channels": 8, "out_channels": 4},
        "vae/config.json": {"_class_name": "AutoencoderKL", "latent_channels": 4},
    },
    "depth": {
        "model_index.json": {"_class_name": "MarigoldDepthPipeline"},
        "unet/config.json": {"_class_name": "UNet2DConditionModel", "in_channels": 8, "out_channels": 4},
        "vae/config.json": {"_class_name": "AutoencoderKL", "latent_channels": 4},
    },
    # Marigold-IID-Appearance: the image latent and two target latents (albedo, material) in, two out.
    "intrinsics": {
        "model_index.json": {"_class_name": "MarigoldIntrinsicsPipeline"},
        "unet/config.json": {"_class_name": "UNet2DConditionModel", "in_channels": 12, "out_channels": 8},
        "vae/config.json": {"_class_name": "AutoencoderKL", "latent_channels": 4},
    },
}
"""Config file -> key -> value that each role's loader and guidance need."""

EXPECT_FILES = {
    "sample_size": "unet/config.json",
    "cross_attention_dim": "unet/config.json",
    "prediction_type": "scheduler/scheduler_config.json",
}
"""Where each key of a spec's `expect` is read."""


def _read(folder: Path, rel: str) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / rel).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def architecture_problems(spec: ModelSpec, folder: Path) -> list[str]:
    """Every way the folder's configs differ from what the role and the spec expect ([] when it fits)."""
    wanted: dict[str, dict[str, Any]] = {rel: dict(keys) for rel, keys in ROLE_ARCHITECTURE[spec.role].items()}
    for key, value in spec.expect:
        wanted.setdefault(EXPECT_FILES[key], {})[key] = value
    problems = []
    for rel, keys in wanted.items():
        config = _read(folder, rel)
        if config is None:
            problems.append(f"{rel} missing or unreadable")
            continue
        component = rel.split("/")[0] if "/" in rel else "pipeline"
        for key, value in keys.items():
            got = config.get(key)
            if got != value:
                label = "class" if key == "_class_name" else key
                problems.append(f"{component} {label} {got!r}, expected {value!r}")
    return problems


def describe_problems(spec: ModelSpec, problems: list[str]) -> str:
    """The one line `models check` prints for a folder of the wrong architecture."""
    return f"  {spec.role:<14} WRONG ARCHITECTURE for {spec.role}: " + "; ".join(problems)
