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
from typing import Any, Literal

import torch
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.render import raster_torch
from dreampolish.backend.render.cameras import CameraBatch
from dreampolish.backend.render.raster_nvdiffrast import NvdiffrastRasterizer
from dreampolish.backend.render.raster_output import (
    RasterOutput,
    clip_positions,
    interpolate,
    interpolate_at,
    shade_normals,
)
from torch import Tensor

__all__ = [
    "MeshRasterizer", "RasterBackend", "RasterOutput", "clip_positions", "interpolate", "interpolate_at",
    "shade_normals",
]

log = logging.getLogger(__name__)

RasterBackend = Literal["auto", "torch", "nvdiffrast"]


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
            self._nvdiffrast = NvdiffrastRasterizer(device)
        return self._nvdiffrast

    def rasterize(self, mesh: TriMesh, cameras: CameraBatch, *, smooth_normals: bool = True) -> RasterOutput:
        """Visible face, barycentrics, depth, antialiased mask, position and normal per pixel."""
        if cameras.device != mesh.device:
            cameras = cameras.to(mesh.device)
        if self.resolve_backend(mesh.device) == "nvdiffrast":
            return self._nv(mesh.device).rasterize(mesh, cameras, smooth_normals=smooth_normals)
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
        return raster_torch.antialias(image, out, mesh, cameras)
