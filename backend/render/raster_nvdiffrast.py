"""nvdiffrast back end of MeshRasterizer (CUDA only).

nvdiffrast (NVIDIA Source Code License, non-commercial use only) is optional: install
`diffrp-nvdiffrast` on a CUDA machine. It is imported lazily here, so nothing else in the
backend needs it. Outputs follow rasterize.py's conventions exactly: nvdiffrast's image
row 0 is the bottom (OpenGL), so clip-space y is negated before rasterising, which puts
row 0 at the top (nvdiffrast draws both windings, so the mirrored winding is harmless).

Degenerate triangles (all three corners one vertex: the padding of marching.PaddedSurface) cover no
pixel, and nvdiffrast's antialias skips them when it builds its edge table (AntialiasFwdMeshKernel).
Nothing here reads device data back; nvdiffrast's CUDA rasteriser itself does, though: every
`rasterize` ends in a cudaStreamSynchronize (cudaraster RasterImpl::launchStages, to check its bin and
tile buffers for overflow), which no caller can avoid.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.render.cameras import CameraBatch
from dreampolish.backend.render.raster_output import (
    RasterOutput,
    clip_positions,
    interpolate_at,
    shade_normals,
)
from torch import Tensor

log = logging.getLogger(__name__)


class NvdiffrastRasterizer:
    """Holds one nvdiffrast CUDA context per device."""

    def __init__(self, device: torch.device):
        try:
            import nvdiffrast.torch as dr
        except ImportError as exc:
            raise RuntimeError(
                "the nvdiffrast rasteriser needs the optional package diffrp-nvdiffrast "
                "(pip install diffrp-nvdiffrast, CUDA only); use backend='torch' otherwise"
            ) from exc
        self._dr: Any = dr
        self.device = device
        self._context = dr.RasterizeCudaContext(device=device)
        # on the device once: `.to(device)` of a host tensor in every call would wait for the GPU
        self._flip_y = torch.tensor([1.0, -1.0, 1.0, 1.0], device=device)
        log.info("nvdiffrast rasteriser on %s", device)

    def _clip(self, mesh: TriMesh, cameras: CameraBatch) -> Tensor:
        clip = clip_positions(mesh.vertices, cameras)
        return (clip * self._flip_y.to(clip.dtype)).contiguous()

    def rasterize(self, mesh: TriMesh, cameras: CameraBatch, *, smooth_normals: bool = True) -> RasterOutput:
        dr = self._dr
        clip = self._clip(mesh, cameras)
        tri = mesh.faces.to(torch.int32).contiguous()
        rast, _ = dr.rasterize(self._context, clip, tri, resolution=(cameras.height, cameras.width))
        # rast[..., 3] = face index + 1 (0: background); attribute = u a0 + v a1 + (1 - u - v) a2.
        tri_id = rast[..., 3].round().long() - 1
        fg = (tri_id >= 0).unsqueeze(-1).to(rast.dtype)
        u, v = rast[..., 0], rast[..., 1]
        bary = torch.stack([u, v, 1.0 - u - v], dim=-1) * fg
        return RasterOutput(
            tri_id=tri_id,
            bary=bary,
            depth=interpolate_at(clip[..., 3:4], tri_id, bary, mesh.faces),
            mask=dr.antialias(fg.contiguous(), rast, clip, tri).clamp(0.0, 1.0),
            world_pos=interpolate_at(mesh.vertices, tri_id, bary, mesh.faces),
            normal=shade_normals(mesh, tri_id, bary, smooth_normals),
            native=rast,
        )

    def antialias(self, image: Tensor, out: RasterOutput, mesh: TriMesh, cameras: CameraBatch) -> Tensor:
        clip = self._clip(mesh, cameras)
        tri = mesh.faces.to(torch.int32).contiguous()
        return self._dr.antialias(image.contiguous(), out.native, clip, tri)
