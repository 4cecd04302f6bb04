"""Baking the texture stage's colour field into the mesh's maps.

After optimisation `bake_texture` makes UVs (xatlas, unless the mesh has its own and the stage is
told to keep them), evaluates the field at every texel's surface point, dilates the charts so no
seam shows, and optionally bakes a normal map from a more detailed mesh.

Materials (`bake_materials`): the field's colours carry the 2D prior's lighting. The textured mesh is
rendered from a ring of views at the stage's own camera distance, field of view and elevation range,
each render is decomposed into albedo, roughness and metallic (guidance/intrinsics.py: Marigold-IID, or
the oracle), and the per-view estimates are fused per texel (bake.fuse_views: weights cos^p of how
squarely each view sees the texel, zero where it is hidden). Texels no view sees keep the field's colour
and the configured roughness and metallic. The maps are dilated exactly as the base colour.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .. import bake
from ..geometry.mesh import TriMesh
from ..guidance.intrinsics import Decomposer
from ..render.cameras import CameraBatch, orbit_cameras
from ..render.rasterize import MeshRasterizer
from .texture import SurfaceViews, TextureConfig, TextureState, shade_albedo

logger = logging.getLogger(__name__)


@dataclass
class BakedTexture:
    """The texture stage's output mesh: per-corner UVs and the maps baked onto them."""

    uvs: np.ndarray
    """[F,3,2] float32 per-corner UVs of the mesh's faces."""
    base_color: np.ndarray
    """[S,S,3] float32 in [0,1] (display/sRGB values): the de-lit albedo when materials were baked."""
    normal_map: np.ndarray | None = None
    """[S,S,3] float32 tangent-space unit normals (OpenGL, +Y along +v), or None."""
    roughness_metallic: np.ndarray | None = None
    """[S,S,3] float32 in [0,1], glTF's packing: R unused (1), G roughness, B metallic; or None."""
    lit_base_color: np.ndarray | None = None
    """[S,S,3] the colour field baked as it is (lighting included), kept when base_color is de-lit."""


def decomposition_cameras(cfg: TextureConfig, device: torch.device | str = "cpu") -> CameraBatch:
    """The views the materials are decomposed from: cfg.pbr.views orbit cameras at the stage's distance and
    field of view, azimuths evenly spaced, elevations alternating between the ends of its elevation range."""
    n = cfg.pbr.views
    lo, hi = cfg.elevation_range_deg
    azimuth = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    elevation = torch.tensor([lo if i % 2 == 0 else hi for i in range(n)], dtype=torch.float32)
    size = cfg.pbr.render_size
    return orbit_cameras(elevation, azimuth, torch.full((n,), cfg.camera_distance),
                         torch.full((n,), cfg.fovy_deg), size, size).to(device)


@torch.no_grad()
def bake_materials(cfg: TextureConfig, state: TextureState, uvs: np.ndarray, decomposer: Decomposer,
                   rasterizer: MeshRasterizer, lit_base_color: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(albedo [S,S,3] display values, roughness_metallic [S,S,3] glTF-packed), both dilated as the base
    colour: render the textured mesh, decompose every render, fuse the estimates per texel (module
    docstring). Texels no view sees keep the lit colour and the configured roughness and metallic."""
    mesh = state.mesh
    cameras = decomposition_cameras(cfg, mesh.device)
    views = SurfaceViews.rasterize(mesh, cameras, rasterizer)
    background = torch.tensor(cfg.background, dtype=torch.float32, device=mesh.device)
    rgb = shade_albedo(state.color_field, views, background)
    maps = decomposer(rgb, views.opacity, cameras)
    values = torch.cat([maps.albedo, maps.roughness, maps.metallic], -1).float()
    focal = cameras.proj[:, 1, 1] * cameras.height * 0.5
    samples = bake.ViewSamples(cameras.c2w, cameras.mvp, focal, views.world_pos, views.foreground, values)
    vertices = mesh.vertices.detach().cpu().numpy().astype(np.float32)
    faces = mesh.faces.detach().cpu().numpy().astype(np.int64)
    fused = bake.fuse_views(vertices, faces, uvs, cfg.atlas_size, samples, power=cfg.pbr.view_weight_power)
    filled, seen = fused.coverage.filled, fused.seen
    unseen = filled & ~seen
    albedo = fused.values[..., :3].copy()
    albedo[unseen] = lit_base_color[unseen]
    rm = np.ones(albedo.shape, np.float32)
    rm[..., 1], rm[..., 2] = fused.values[..., 3], fused.values[..., 4]
    rm[unseen, 1], rm[unseen, 2] = cfg.pbr.default_roughness, cfg.pbr.default_metallic
    logger.info("materials: %d of %d texels seen by %d views", int(seen.sum()), int(filled.sum()),
                cameras.batch_size)
    return (bake.dilate(np.clip(albedo, 0, 1), filled, cfg.dilation),
            bake.dilate(np.clip(rm, 0, 1), filled, cfg.dilation))


def bake_detail_normals(cfg: TextureConfig, mesh: TriMesh, uvs: np.ndarray, detail: TriMesh,
                        ray_distance: float | None) -> np.ndarray:
    """The tangent-space normal map [S,S,3] of `detail` on `mesh`'s per-corner `uvs` (bake.bake_normal_map);
    `ray_distance`: the cage of a low mesh far from its detail (None: nearest detail vertices)."""
    return bake.bake_normal_map(
        mesh.vertices.detach().cpu().numpy().astype(np.float32), mesh.faces.detach().cpu().numpy().astype(np.int64),
        uvs, detail.vertices.detach().cpu().numpy(), detail.faces.detach().cpu().numpy(), cfg.atlas_size, cfg.dilation,
        ray_distance=ray_distance)


def bake_texture(cfg: TextureConfig, state: TextureState, *, uvs: np.ndarray | None = None,
                 detail: TriMesh | None = None, decomposer: Decomposer | None = None,
                 rasterizer: MeshRasterizer | None = None, base_color_only: bool = False,
                 normal_map: bool | None = None, normals: np.ndarray | None = None) -> BakedTexture:
    """Bake the colour field into an atlas on `uvs` (the mesh's own per-corner UVs [F,3,2]) or, when
    None, on new xatlas charts; with cfg.normal_map and a `detail` mesh, also a normal map; with a
    `decomposer` and cfg.pbr, the de-lit base colour and the metallic-roughness map. `base_color_only`
    bakes the field's colours alone; `normal_map` True or False overrides cfg.normal_map (and base_color_only
    for the normal map: a finished low mesh always carries the polished detail). `normals`: that normal map
    already baked on `uvs` (a finished low mesh's, baked before texturing), kept as it is."""
    vertices = state.mesh.vertices.detach().cpu().numpy().astype(np.float32)
    faces = state.mesh.faces.detach().cpu().numpy().astype(np.int64)
    if uvs is None:
        uvs = bake.unwrap_uv(vertices, faces, bake.UnwrapConfig(resolution=cfg.atlas_size, padding=cfg.chart_padding))
    base_color = bake.bake_color(vertices, faces, uvs, state.colors_at, cfg.atlas_size, cfg.dilation)
    baked = BakedTexture(np.ascontiguousarray(uvs, dtype=np.float32), base_color)
    wants_normals = (cfg.normal_map and not base_color_only) if normal_map is None else normal_map
    if normals is not None:
        baked.normal_map = normals
    elif wants_normals and detail is not None:
        baked.normal_map = bake_detail_normals(cfg, state.mesh, uvs, detail,
                                               cfg.normal_ray_distance if normal_map else None)
    if base_color_only:
        return baked
    if decomposer is not None and cfg.pbr.decomposes:
        albedo, rm = bake_materials(cfg, state, baked.uvs, decomposer, rasterizer or MeshRasterizer(), base_color)
        if cfg.pbr.delit_base_color:
            baked.lit_base_color, baked.base_color = base_color, albedo
        if cfg.pbr.roughness_metallic:
            baked.roughness_metallic = rm
    return baked
