"""The texture stage of a finished low mesh (issue 30): its normal map, baked from the polished surface before
texturing, lights the views the guidance sees, so the guidance sees the polished detail; the views without a
normal map (every other mesh) stay the albedo, and the views drawn are the same either way."""

from __future__ import annotations

import numpy as np
import torch
from dreampolish.backend import bake
from dreampolish.backend.geometry.fields import FieldConfig
from dreampolish.backend.geometry.hashgrid import HashGridConfig
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.guidance.base import GuidanceInput, GuidanceOutput
from dreampolish.backend.render.normal_map import TangentSpaceNormals
from dreampolish.backend.render.rasterize import MeshRasterizer
from dreampolish.backend.stages.base import LoggingReporter
from dreampolish.backend.stages.texture import TextureConfig, run_texture

RIPPLES = 4
"""Ripples of the bumped surface across the plane's width (0.8)."""
WAVE = 2 * np.pi * RIPPLES / 0.8
SMALL_FIELD = FieldConfig(grid=HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, start_levels=4),
                          hidden_dim=16)


def plane(n: int, height=None) -> tuple[np.ndarray, np.ndarray]:
    """A square [-0.4, 0.4]² of n x n quads (two triangles each) at z = height(x, y) (0 without)."""
    t = np.linspace(-0.4, 0.4, n + 1)
    x, y = np.meshgrid(t, t, indexing="ij")
    z = np.zeros_like(x) if height is None else height(x, y)
    v = np.stack([x.ravel(), y.ravel(), z.ravel()], 1).astype(np.float32)
    i = (np.arange(n)[:, None] * (n + 1) + np.arange(n)[None]).ravel()
    # counter-clockwise seen from +z: the normals face up
    f = np.concatenate([np.stack([i, i + n + 1, i + n + 2], 1), np.stack([i, i + n + 2, i + 1], 1)])
    return v, f.astype(np.int64)


def ripple_height(x, y):
    """The rippled high surface: ripples along x, twice as deep at +y as at the middle (so that a map read
    upside down in v shows the wrong depth)."""
    return 0.01 * np.sin(WAVE * x) * (0.6 + y)


def ripple_normal(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The rippled surface's unit normal [N,3] at (x, y)."""
    dx = 0.01 * WAVE * torch.cos(WAVE * x) * (0.6 + y)
    dy = 0.01 * torch.sin(WAVE * x)
    return torch.nn.functional.normalize(torch.stack([-dx, -dy, torch.ones_like(dx)], -1), dim=-1)


def flat_low_mesh_and_bumped_map(size: int = 128) -> tuple[TriMesh, np.ndarray]:
    """A flat low mesh with planar UVs, and the normal map of the rippled high surface baked on them through
    the cage, as the finish stage's low mesh gets it."""
    v, f = plane(8)
    uvs = ((v[f][..., :2] + 0.4) / 0.8 * 0.9 + 0.05).astype(np.float32)
    hv, hf = plane(160, ripple_height)
    normal_map = bake.bake_normal_map(v, f, uvs, hv, hf, size, ray_distance=0.05)
    return TriMesh(torch.as_tensor(v), torch.as_tensor(f), torch.as_tensor(uvs)), normal_map


class Recording:
    """Guidance that keeps what it is given and pulls on nothing."""

    def __init__(self) -> None:
        self.inputs: list[GuidanceInput] = []

    def __call__(self, inp: GuidanceInput) -> GuidanceOutput:
        self.inputs.append(GuidanceInput(inp.rgb.detach().clone(), inp.opacity.detach().clone(), inp.cameras,
                                         shading=inp.shading))
        return GuidanceOutput(inp.rgb.sum() * 0)


def guidance_inputs(mesh: TriMesh, normal_map: np.ndarray | None, lit_share: float) -> list[GuidanceInput]:
    # views from above the plane, a diffuse share fixed at 0.8 (so every lit view shows the ripples strongly)
    cfg = TextureConfig(steps=6, render_size=48, batch_size=2, field=SMALL_FIELD, view_pool=6, reference_weight=0.0,
                        elevation_range_deg=(55.0, 80.0), camera_distance=2.5, fovy_deg=25.0, lit_share=lit_share,
                        light_strength=(0.8, 0.8))
    guidance = Recording()
    run_texture(cfg, mesh, guidance, None, LoggingReporter("texture"), rasterizer=MeshRasterizer("torch"),
                generator=torch.Generator().manual_seed(3), normal_map=normal_map)
    return guidance.inputs


def interior(mesh: TriMesh, inp: GuidanceInput) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of fully covered pixels away from the plane's edge [B,H,W], the surface point there [B,H,W,3])."""
    raster = MeshRasterizer("torch").rasterize(mesh, inp.cameras)
    pos = raster.world_pos
    inside = (inp.opacity[..., 0] > 0.999) & (pos[..., :2].abs().amax(-1) < 0.36)
    return inside, pos


def test_the_guidance_sees_the_polished_ripples_through_the_low_mesh_s_normal_map():
    mesh, normal_map = flat_low_mesh_and_bumped_map()
    flat_map = np.zeros_like(normal_map)
    flat_map[..., 2] = 1.0
    albedo = guidance_inputs(mesh, None, lit_share=1.0)  # no normal map: the albedo, as every other mesh
    bumped = guidance_inputs(mesh, normal_map, lit_share=1.0)
    flat = guidance_inputs(mesh, flat_map, lit_share=1.0)
    assert [i.shading for i in albedo] == ["albedo"] * 6 and [i.shading for i in bumped] == ["lit"] * 6
    correlations = []
    for a, b, f in zip(albedo, bumped, flat):
        # the same views (the lights come from a generator of their own)
        torch.testing.assert_close(a.cameras.c2w, b.cameras.c2w)
        inside, pos = interior(mesh, a)
        for view in range(inside.shape[0]):  # each view has its own light
            keep = inside[view]
            lit_bumped = (b.rgb[view] / a.rgb[view].clamp_min(1e-3)).mean(-1)[keep]  # the light: the albedo divided out
            lit_flat = (f.rgb[view] / a.rgb[view].clamp_min(1e-3)).mean(-1)[keep]
            # a flat map lights the flat plane alike everywhere: no ripples without the polished surface's normals
            assert float(lit_flat.std()) < 1e-3, float(lit_flat.std())
            assert float(lit_bumped.std()) > 0.01
            # with it, the light follows the ripples' slope (the normal tilts along x as -cos(WAVE x)(0.6 + y))
            p = pos[view][keep]
            ripple = torch.cos(WAVE * p[:, 0]) * (0.6 + p[:, 1])
            correlations.append(abs(float(torch.corrcoef(torch.stack([lit_bumped, ripple]))[0, 1])))
    assert np.mean(correlations) > 0.8, correlations


def test_lit_and_albedo_views_mix_at_the_lit_share():
    mesh, normal_map = flat_low_mesh_and_bumped_map(64)
    shadings = [i.shading for i in guidance_inputs(mesh, normal_map, lit_share=0.5)]
    assert 1 <= shadings.count("lit") <= 5, shadings
    assert [i.shading for i in guidance_inputs(mesh, normal_map, lit_share=0.0)] == ["albedo"] * 6


def test_the_map_is_read_back_as_the_bake_wrote_it():
    # every pixel's normal read through the map is the rippled surface's normal there (a few degrees off at most:
    # bilinear texels over ripples 29 texels long)
    mesh, normal_map = flat_low_mesh_and_bumped_map(128)
    inp = guidance_inputs(mesh, None, lit_share=1.0)[0]
    raster = MeshRasterizer("torch").rasterize(mesh, inp.cameras)
    normals = TangentSpaceNormals.of(mesh, normal_map).world_normals(raster.tri_id, raster.bary)
    inside, pos = interior(mesh, inp)
    truth = ripple_normal(pos[inside][:, 0], pos[inside][:, 1])
    angle = torch.rad2deg(torch.acos((normals[inside] * truth).sum(-1).clamp(-1, 1)))
    assert float(angle.mean()) < 2.0 and float(angle.max()) < 8.0, (float(angle.mean()), float(angle.max()))
    tilt = torch.rad2deg(torch.acos(truth[:, 2]))
    assert float(tilt.max()) > 15 and float(tilt.mean()) > 5  # the ripples tilt the normal that much
