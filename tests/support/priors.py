"""Tiny models as a model set, and orbit cameras, for the diffusion-prior tests (needs torch). The fixtures
that build and load them are in tests/backend/conftest.py."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from dreampolish.backend.models.specs import ModelSet, ModelSpec
from dreampolish.backend.render.cameras import CameraBatch


def tiny_model_set(root: Path) -> ModelSet:
    return ModelSet(
        name="tiny",
        text_to_image=ModelSpec("text_to_image", local=str(root / "text_to_image")),
        zero123=ModelSpec("zero123", local=str(root / "zero123"), image_size=32),  # defaults.json: tiny
        normals=ModelSpec("normals", local=str(root / "normals")),
        intrinsics=ModelSpec("intrinsics", local=str(root / "intrinsics")),
        depth=ModelSpec("depth", local=str(root / "depth")),
    )


def look_at_c2w(position: torch.Tensor) -> torch.Tensor:
    """[4,4] Blender-convention camera-to-world looking at the origin from `position`, world Z up."""
    forward = -position / position.norm()  # the camera looks down its -Z
    up = torch.tensor([0.0, 0.0, 1.0])
    if torch.cross(forward, up, dim=0).norm() < 1e-6:
        up = torch.tensor([0.0, 1.0, 0.0])
    right = torch.linalg.cross(forward, up)
    right = right / right.norm()
    true_up = torch.linalg.cross(right, forward)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, -forward, position
    return c2w


def orbit_camera_batch(
    elevation_deg: list[float],
    azimuth_deg: list[float],
    distance: float = 3.8,
    fovy_deg: float = 20.0,
    size: int = 32,
) -> CameraBatch:
    """Cameras on an orbit (cameras.py's definition of elevation and azimuth), looking at the origin."""
    el = torch.tensor(elevation_deg, dtype=torch.float32)
    az = torch.tensor(azimuth_deg, dtype=torch.float32)
    er, ar = torch.deg2rad(el), torch.deg2rad(az)
    pos = distance * torch.stack([er.cos() * ar.cos(), er.cos() * ar.sin(), er.sin()], dim=-1)
    c2w = torch.stack([look_at_c2w(p) for p in pos])
    f = 1.0 / math.tan(math.radians(fovy_deg) / 2)
    near, far = 0.1, 100.0
    proj = torch.tensor(
        [[f, 0, 0, 0], [0, f, 0, 0], [0, 0, (far + near) / (near - far), 2 * far * near / (near - far)], [0, 0, -1, 0]]
    ).expand(len(el), 4, 4)
    n = len(el)
    return CameraBatch(
        c2w=c2w, proj=proj.clone(), width=size, height=size, elevation_deg=el, azimuth_deg=az,
        distance=torch.full((n,), distance), fovy_deg=torch.full((n,), fovy_deg),
    )
