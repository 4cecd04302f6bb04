"""The mesh rasteriser: one interface, two back ends (nvdiffrast on CUDA, pure PyTorch anywhere).

Conventions are the cameras module's: world Z up, OpenGL clip space, image row 0 at the
TOP, pixel (i, j)'s centre at (i + 0.5, j + 0.5) in pixel units. A pixel is covered by a
triangle when its centre is inside; the nearest covered triangle wins; both windings are
drawn (no culling). Triangles with a vertex closer than about the camera's near plane are
not drawn (objects sit well beyond it).

Everything that reaches a loss is differentiable w.r.t. the vertex positions: barycentrics,
depth, positions and normals inside the silhouette, and the antialiased coverage mask (and
any image passed through `antialias`) across it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.render.cameras import CameraBatch
from torch import Tensor

log = logging.getLogger(__name__)

RasterBackend = Literal["auto", "torch", "nvdiffrast"]


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


def _nvdiffrast_available() -> bool:
    try:
        import nvdiffrast.torch  # noqa: F401
    except Exception:  # an import of a CUDA extension can fail in many ways; all mean "not usable"
        return False
    return True


class MeshRasterizer:
    """Rasterise a TriMesh into a CameraBatch.

    backend: "torch" (any device), "nvdiffrast" (CUDA only; `pip install diffrp-nvdiffrast`,
    NVIDIA's non-commercial licence), or "auto": nvdiffrast for CUDA meshes when it imports,
    else torch.
    """

    def __init__(self, backend: RasterBackend = "auto"):
        if backend not in ("auto", "torch", "nvdiffrast"):
            raise ValueError(f"unknown rasteriser backend {backend!r}; use 'auto', 'torch' or 'nvdiffrast'")
        self.backend = backend
        self._nvdiffrast: Any = None  # the NvdiffrastRasterizer, made on first CUDA use

    def resolve_backend(self, device: torch.device) -> Literal["torch", "nvdiffrast"]:
        """The back end used for meshes on `device`."""
        if self.backend == "torch":
            return "torch"
        if self.backend == "nvdiffrast":
            if device.type != "cuda":
                raise ValueError("the nvdiffrast rasteriser needs CUDA tensors; use backend='torch' on the CPU")
            return "nvdiffrast"
        return "nvdiffrast" if device.type == "cuda" and _nvdiffrast_available() else "torch"

    def _nv(self, device: torch.device) -> Any:
        if self._nvdiffrast is None:
            from dreampolish.backend.render.raster_nvdiffrast import NvdiffrastRasterizer

            self._nvdiffrast = NvdiffrastRasterizer(device)
        return self._nvdiffrast

    def rasterize(self, mesh: TriMesh, cameras: CameraBatch, *, smooth_normals: bool = True) -> RasterOutput:
        """Visible face, barycentrics, depth, antialiased mask, position and normal per pixel."""
        if cameras.device != mesh.device:
            cameras = cameras.to(mesh.device)
        if self.resolve_backend(mesh.device) == "nvdiffrast":
            return self._nv(mesh.device).rasterize(mesh, cameras, smooth_normals=smooth_normals)
        from dreampolish.backend.render import raster_torch

        return raster_torch.rasterize(mesh, cameras, smooth_normals=smooth_normals)

    def interpolate(self, attr: Tensor, out: RasterOutput, faces: Tensor) -> Tensor:
        """Per-vertex attributes [V,C] or [B,V,C] -> [B,H,W,C] at the visible surface."""
        return interpolate(attr, out, faces)

    def antialias(self, image: Tensor, out: RasterOutput, mesh: TriMesh, cameras: CameraBatch) -> Tensor:
        """Antialias a shaded image [B,H,W,C] at silhouette and occlusion edges; the result has
        gradients w.r.t. vertex positions through the edges' screen positions."""
        if cameras.device != mesh.device:
            cameras = cameras.to(mesh.device)
        if out.native is not None:
            return self._nv(mesh.device).antialias(image, out, mesh, cameras)
        from dreampolish.backend.render import raster_torch

        return raster_torch.antialias(image, out, mesh, cameras)
