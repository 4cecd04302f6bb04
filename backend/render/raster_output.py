"""What both rasteriser back ends produce and share: the per-pixel RasterOutput, clip-space positions,
barycentric interpolation and normal shading (conventions: rasterize.py's).

Kept apart from rasterize.py, which picks a back end, so that the back ends import these without
importing the module that imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.render.cameras import CameraBatch
from torch import Tensor


@dataclass
class RasterOutput:
    """Per-pixel results of rasterising one mesh into a batch of cameras."""

    tri_id: Tensor
    """[B,H,W] int64 index of the visible face, -1 for background."""
    bary: Tensor
    """[B,H,W,3] perspective-correct barycentrics of the face's three corners (differentiable
    w.r.t. vertex positions), 0 for background."""
    depth: Tensor
    """[B,H,W,1] positive camera-space depth (distance along the camera's -Z), 0 for background."""
    mask: Tensor
    """[B,H,W,1] coverage in [0, 1], antialiased at silhouettes so that it has gradients w.r.t.
    vertex positions."""
    world_pos: Tensor
    """[B,H,W,3] world-space surface position, 0 for background."""
    normal: Tensor
    """[B,H,W,3] unit world-space normal (smooth vertex normals or face normals), 0 for background."""
    native: Any = None
    """Back-end state needed by `antialias` (nvdiffrast's rast tensor); None for the torch back end."""
    topology: tuple[Tensor, Tensor] | None = None
    """(faces, face neighbours [F,3]) found by the torch back end; its `antialias` reuses the
    neighbours when it is given the very same faces tensor."""

    @property
    def foreground(self) -> Tensor:
        """[B,H,W,1] bool: pixel centres covered by the mesh (the hard mask)."""
        return (self.tri_id >= 0).unsqueeze(-1)


def clip_positions(vertices: Tensor, cameras: CameraBatch) -> Tensor:
    """[B,V,4] clip-space positions of world vertices [V,3] (or [B,V,3]) in every camera."""
    homo = torch.cat([vertices, torch.ones_like(vertices[..., :1])], dim=-1)
    return homo @ cameras.mvp.to(vertices.dtype).transpose(1, 2)


def interpolate(attr: Tensor, out: RasterOutput, faces: Tensor) -> Tensor:
    """Interpolate per-vertex attributes [V,C] or [B,V,C] with the barycentrics -> [B,H,W,C]
    (0 for background); differentiable w.r.t. both the attributes and the barycentrics."""
    return interpolate_at(attr, out.tri_id, out.bary, faces)


def interpolate_at(attr: Tensor, tri_id: Tensor, bary: Tensor, faces: Tensor) -> Tensor:
    """`interpolate` from the visible faces [B,H,W] and barycentrics [B,H,W,3] directly."""
    b, h, w = tri_id.shape
    corner_vertex = faces.index_select(0, tri_id.clamp_min(0).reshape(-1)).reshape(b, h * w * 3)
    if attr.dim() == 2:
        corners = attr.index_select(0, corner_vertex.reshape(-1))
    else:
        # Rows of the flattened [B*V,C] attributes: batch * V + vertex.
        offset = torch.arange(b, device=attr.device).unsqueeze(1) * attr.shape[1]
        corners = attr.reshape(-1, attr.shape[-1]).index_select(0, (corner_vertex + offset).reshape(-1))
    corners = corners.view(b, h, w, 3, attr.shape[-1])
    values = (bary.unsqueeze(-1) * corners).sum(dim=-2)
    return values * (tri_id >= 0).unsqueeze(-1).to(values.dtype)


def shade_normals(mesh: TriMesh, tri_id: Tensor, bary: Tensor, smooth: bool) -> Tensor:
    """[B,H,W,3] unit world normals of the visible faces (0 for background): interpolated vertex
    normals when `smooth`, else face normals."""
    if smooth:
        n = interpolate_at(mesh.vertex_normals(), tri_id, bary, mesh.faces)
    else:
        n = mesh.face_normals().index_select(0, tri_id.clamp_min(0).reshape(-1)).view(*tri_id.shape, 3)
    return torch.nn.functional.normalize(n, dim=-1) * (tri_id >= 0).unsqueeze(-1).to(n.dtype)
