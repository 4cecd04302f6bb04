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
from dreampolish.backend.render.cameras import CameraBatch, orbit_cameras
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


_PROBED: dict[str, NvdiffrastRasterizer | str] = {}
"""Per CUDA device: the nvdiffrast rasteriser that passed the probe, or why it failed."""


def nvdiffrast_problem(device: torch.device) -> str | None:
    """Why nvdiffrast cannot rasterise on `device`, or None when it can.

    That nvdiffrast imports proves little: the wheel we install (diffrp-nvdiffrast) compiles its CUDA code
    on first use and needs nvcc and ninja, so on a machine with only the CUDA runtime the import succeeds
    and the first rasterisation fails (issue 27: about 15 minutes into `standard`, at DMTet's first step).
    So the probe creates a context and rasterises and antialiases a tetrahedron, once per device (the
    answer is cached; its context is reused), as the Triton hash grid compiles and checks itself before
    it is used (geometry/hashgrid.py)."""
    key = str(device)
    if key not in _PROBED:
        try:
            _PROBED[key] = _probe_nvdiffrast(device)
        except Exception as exc:  # a CUDA extension fails in many ways (import, build, context, launch)
            reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
            log.warning("nvdiffrast is not usable on %s (%s): meshes are rasterised with PyTorch (slower)",
                        device, reason)
            _PROBED[key] = reason
    probed = _PROBED[key]
    return probed if isinstance(probed, str) else None


def _probe_nvdiffrast(device: torch.device) -> NvdiffrastRasterizer:
    nv = NvdiffrastRasterizer(device)
    one = torch.ones(1)
    cameras = orbit_cameras(0 * one, 0 * one, 2.0 * one, 40 * one, 16, 16).to(device)
    # a tetrahedron at the origin: seen from any camera direction, it covers pixels
    vertices = torch.tensor([[0.5, 0.5, 0.5], [0.5, -0.5, -0.5], [-0.5, 0.5, -0.5], [-0.5, -0.5, 0.5]], device=device)
    faces = torch.tensor([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]], device=device)
    tetrahedron = TriMesh(vertices, faces)
    out = nv.rasterize(tetrahedron, cameras)
    shaded = nv.antialias(out.mask.contiguous(), out, tetrahedron, cameras)
    covered = float(out.mask.sum())  # waits for the device: once per device, before any job's first step
    if not covered > 0 or not torch.isfinite(shaded).all():
        raise RuntimeError(f"the probe's tetrahedron covered {covered:g} pixels")
    return nv


class MeshRasterizer:
    """Rasterise a TriMesh into a CameraBatch.

    backend: "torch" (any device), "nvdiffrast" (CUDA only; `pip install diffrp-nvdiffrast`,
    NVIDIA's non-commercial licence), or "auto": nvdiffrast for CUDA meshes when it works there
    (nvdiffrast_problem: it rasterised a probe mesh), else torch.
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
        return "nvdiffrast" if device.type == "cuda" and nvdiffrast_problem(device) is None else "torch"

    def fallback(self, device: torch.device | str) -> str | None:
        """Why "auto" rasterises with PyTorch on this CUDA device (nvdiffrast failed its probe), or None."""
        device = torch.device(device)
        if self.backend != "auto" or device.type != "cuda":
            return None
        return nvdiffrast_problem(device)

    def _nv(self, device: torch.device) -> Any:
        if self._nvdiffrast is None:
            probed = _PROBED.get(str(device))
            self._nvdiffrast = probed if isinstance(probed, NvdiffrastRasterizer) else NvdiffrastRasterizer(device)
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
