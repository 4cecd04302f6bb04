"""Cameras for the renderers: the one place where the protocol's Blender cameras
become the renderer's matrices, and where training views are sampled.

Renderer convention: world = Blender world (right-handed, Z up, metres); camera
space = Blender/OpenGL camera (looks down -Z, +Y up, +X right); clip space =
OpenGL (NDC x right, y up, z in [-1, 1]); image row 0 is the TOP of the image.
Orbit angles: elevation from the XY plane towards +Z, azimuth about +Z from +X
towards +Y; position = distance * (cos el cos az, cos el sin az, sin el), looking
at the origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class CameraBatch:
    c2w: Tensor
    """[B,4,4] camera-to-world (Blender camera convention)."""
    proj: Tensor
    """[B,4,4] OpenGL projection: camera space -> clip space."""
    width: int
    height: int
    elevation_deg: Tensor
    """[B] orbit elevation of the camera position (for view-conditioned priors)."""
    azimuth_deg: Tensor
    """[B] orbit azimuth of the camera position."""
    distance: Tensor
    """[B] distance from the origin."""
    fovy_deg: Tensor
    """[B] vertical field of view."""

    @property
    def batch_size(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def w2c(self) -> Tensor:
        return torch.linalg.inv(self.c2w)

    @property
    def mvp(self) -> Tensor:
        """[B,4,4] world -> clip."""
        return self.proj @ self.w2c

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def to(self, device: torch.device | str) -> CameraBatch:
        return CameraBatch(
            self.c2w.to(device), self.proj.to(device), self.width, self.height,
            self.elevation_deg.to(device), self.azimuth_deg.to(device),
            self.distance.to(device), self.fovy_deg.to(device),
        )

    def __getitem__(self, idx: slice | Tensor | int) -> CameraBatch:
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return CameraBatch(
            self.c2w[idx], self.proj[idx], self.width, self.height,
            self.elevation_deg[idx], self.azimuth_deg[idx], self.distance[idx], self.fovy_deg[idx],
        )
