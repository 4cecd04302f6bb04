"""A tangent-space normal map read per pixel, as bake.bake_normal_map writes it (issue 30): the texture stage of
a finished low mesh lights its training views with the polished surface's normals, so that what the guidance
sees is the detailed object.

The frame is the bake's: the interpolated area-weighted vertex normal n, the face's tangent (the surface's +u)
made orthogonal to n, and the bitangent n × t with the sign of the face's +v (OpenGL: +Y along +v). A texel
(x, y, z) of the map is the world normal x·t + y·b + z·n. The map is sampled bilinearly at the pixel's
interpolated UV (texel centres at u = (c + 0.5) / W, v = 1 − (r + 0.5) / H, bake.py's convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import bake
from ..geometry.mesh import TriMesh


@dataclass
class TangentSpaceNormals:
    """A normal map on a mesh's per-corner UVs, with the mesh's tangent frames: world normals per pixel."""

    faces: Tensor
    """[F,3] int64"""
    uvs: Tensor
    """[F,3,2] per-corner UVs"""
    vertex_normals: Tensor
    """[V,3] area-weighted unit vertex normals (bake.vertex_normals)"""
    tangent: Tensor
    """[F,3] the face's +u direction on the surface (bake.face_tangent_frames)"""
    bitangent: Tensor
    """[F,3] the face's +v direction"""
    image: Tensor
    """[1,3,S,S] the map's unit vectors, tangent space"""

    @classmethod
    def of(cls, mesh: TriMesh, normal_map: np.ndarray) -> TangentSpaceNormals:
        """The map [S,S,3] (bake.bake_normal_map's, on `mesh.uvs`) with `mesh`'s frames, on its device."""
        if mesh.uvs is None:
            raise ValueError("a normal map needs the mesh's UVs")
        v = mesh.vertices.detach().cpu().numpy().astype(np.float32)
        f = mesh.faces.detach().cpu().numpy().astype(np.int64)
        uvs = mesh.uvs.detach().cpu().numpy().astype(np.float32)
        tangent, bitangent = bake.face_tangent_frames(v, f, uvs)
        dev = mesh.device

        def put(a: np.ndarray) -> Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=dev)

        image = put(normal_map).permute(2, 0, 1).unsqueeze(0)
        return cls(mesh.faces.detach().to(dev), put(uvs), put(bake.vertex_normals(v, f)), put(tangent),
                   put(bitangent), image)

    def world_normals(self, tri_id: Tensor, bary: Tensor) -> Tensor:
        """[B,H,W,3] the map's unit world normals at the rasterised pixels (tri_id [B,H,W], -1 for background;
        bary [B,H,W,3]), 0 on the background."""
        fg = (tri_id >= 0).unsqueeze(-1)
        tid = tri_id.clamp_min(0)
        w = bary.detach().unsqueeze(-1)
        n = F.normalize((w * self.vertex_normals[self.faces[tid]]).sum(-2), dim=-1)
        uv = (w * self.uvs[tid]).sum(-2)
        t = self.tangent[tid]
        t = F.normalize(t - n * (t * n).sum(-1, keepdim=True), dim=-1)
        c = torch.cross(n, t, dim=-1)
        handed = torch.sign((c * self.bitangent[tid]).sum(-1, keepdim=True))
        b = c * torch.where(handed == 0, torch.ones_like(handed), handed)
        grid = torch.stack([2 * uv[..., 0] - 1, 1 - 2 * uv[..., 1]], -1)  # grid_sample's x right, y down
        m = F.grid_sample(self.image.expand(tid.shape[0], -1, -1, -1), grid, mode="bilinear",
                          padding_mode="border", align_corners=False).permute(0, 2, 3, 1)
        world = F.normalize(t * m[..., :1] + b * m[..., 1:2] + n * m[..., 2:], dim=-1)
        return torch.where(fg, world, torch.zeros_like(world))
