"""PBR bake: renders of the textured mesh decomposed (oracle or Marigold-IID) and fused into the atlas."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh
from dreampolish.backend import bake
from dreampolish.backend.geometry.fields import FieldConfig
from dreampolish.backend.geometry.hashgrid import HashGridConfig
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.guidance.intrinsics import IntrinsicsConfig, MarigoldIntrinsics, OracleDecomposer
from dreampolish.backend.guidance.oracle import OracleGuidance
from dreampolish.backend.render.cameras import orbit_cameras
from dreampolish.backend.render.rasterize import MeshRasterizer
from dreampolish.backend.stages.base import LoggingReporter
from dreampolish.backend.stages.texture import MaterialBakeConfig, SurfaceViews, TextureConfig, run_texture
from dreampolish.backend.stages.texture_bake import bake_texture

from tests.support.materials_target import lit_colour, material_at
from tests.support.stages import ViewMemo

SMALL_FIELD = FieldConfig(grid=HashGridConfig(n_levels=6, log2_hashmap_size=14, base_resolution=8,
                                              per_level_scale=1.6, start_levels=6), hidden_dim=32)

@pytest.fixture(scope="module")
def sphere() -> TriMesh:
    s = trimesh.creation.icosphere(3, radius=0.45)
    return TriMesh(torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces, dtype=torch.int64))


def texel_truth(mesh: TriMesh, uvs: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """([N,5] the target's material at every filled texel, [H,W] filled)."""
    coverage = bake.rasterize_uv(uvs, size, size)
    points = bake.texel_attribute(coverage, mesh.faces.numpy(), mesh.vertices.numpy())
    return material_at(torch.as_tensor(points)).numpy(), coverage.filled


def test_fusion_weights_views_by_cos_squared_and_ignores_hidden_texels(sphere):
    """Two views that report constant values 1 and 0: a texel facing the first (60 degrees from the second)
    fuses to 1 / (1 + cos^2 60) = 0.8; texels on the far side get no weight at all."""
    raster = MeshRasterizer("torch")
    uvs = bake.unwrap_uv(sphere.vertices.numpy(), sphere.faces.numpy(), bake.UnwrapConfig(resolution=128))
    cams = orbit_cameras(torch.zeros(2), torch.tensor([0.0, 60.0]), torch.full((2,), 3.8), torch.full((2,), 20.0),
                         128, 128)
    views = SurfaceViews.rasterize(sphere, cams, raster)
    values = torch.stack([torch.ones(128, 128, 1), torch.zeros(128, 128, 1)])
    samples = bake.ViewSamples(cams.c2w, cams.mvp, cams.proj[:, 1, 1] * 64, views.world_pos, views.foreground, values)
    fused = bake.fuse_views(sphere.vertices.numpy(), sphere.faces.numpy(), uvs, 128, samples, power=2.0)
    points = bake.texel_attribute(fused.coverage, sphere.faces.numpy(), sphere.vertices.numpy())
    direction = points / np.linalg.norm(points, axis=1, keepdims=True)
    value, weight = fused.values[fused.coverage.filled][:, 0], fused.weight[fused.coverage.filled]
    # Expected from the sphere's own normals and the camera positions: cos_a^2 / (cos_a^2 + cos_b^2), about
    # 1 / (1 + cos^2 60) = 0.8 straight in front of the first camera.
    cam_pos = cams.c2w[:, :3, 3].numpy()
    to_cam = cam_pos[None] - points[:, None]
    cos = np.einsum("nc,nbc->nb", direction, to_cam / np.linalg.norm(to_cam, axis=-1, keepdims=True))
    expected = cos[:, 0] ** 2 / (cos[:, 0] ** 2 + cos[:, 1] ** 2)
    facing_first = direction[:, 0] > 0.995
    assert facing_first.sum() > 3
    np.testing.assert_allclose(value[facing_first], expected[facing_first], atol=0.02)
    np.testing.assert_allclose(expected[facing_first], 0.8, atol=0.12)
    dirs = cam_pos / np.linalg.norm(cam_pos, axis=1, keepdims=True)
    far_side = (direction @ dirs.T < -0.1).all(1)
    assert far_side.sum() > 10 and (weight[far_side] == 0).all()


def test_fusion_skips_views_in_which_something_hides_the_texel(sphere):
    """A small blocker between the first camera and the sphere: the texels behind it take the second view's
    value only (0), where ignoring occlusion would give them the blocker's pixels (about 0.8)."""
    raster = MeshRasterizer("torch")
    s = trimesh.creation.icosphere(2, radius=0.12)
    blocker_v = torch.tensor(s.vertices, dtype=torch.float32) + torch.tensor([1.0, 0.0, 0.0])
    scene = TriMesh(torch.cat([sphere.vertices, blocker_v]),
                    torch.cat([sphere.faces, torch.tensor(s.faces, dtype=torch.int64) + sphere.num_vertices]))
    uvs = bake.unwrap_uv(sphere.vertices.numpy(), sphere.faces.numpy(), bake.UnwrapConfig(resolution=128))
    cams = orbit_cameras(torch.zeros(2), torch.tensor([0.0, 60.0]), torch.full((2,), 3.8), torch.full((2,), 20.0),
                         128, 128)
    views = SurfaceViews.rasterize(scene, cams, raster)
    values = torch.stack([torch.ones(128, 128, 1), torch.zeros(128, 128, 1)])
    samples = bake.ViewSamples(cams.c2w, cams.mvp, cams.proj[:, 1, 1] * 64, views.world_pos, views.foreground, values)
    fused = bake.fuse_views(sphere.vertices.numpy(), sphere.faces.numpy(), uvs, 128, samples, power=2.0)
    points = bake.texel_attribute(fused.coverage, sphere.faces.numpy(), sphere.vertices.numpy())
    direction = points / np.linalg.norm(points, axis=1, keepdims=True)
    value, weight = fused.values[fused.coverage.filled][:, 0], fused.weight[fused.coverage.filled]
    behind = direction[:, 0] > 0.998  # in the blocker's shadow as the first camera sees it
    assert behind.sum() > 0
    assert (weight[behind] > 0).all()
    np.testing.assert_allclose(value[behind], 0.0, atol=1e-6)


def test_oracle_materials_are_recovered_and_the_delit_albedo_beats_the_lit_colour(sphere):
    """The texture stage learns the target's lit look (the oracle prior shows it lit); the bake decomposes
    renders of the result with the oracle decomposer and recovers albedo, roughness and metallic per texel."""
    raster = MeshRasterizer("torch")
    lit_target = TriMesh(sphere.vertices, sphere.faces, vertex_colors=lit_colour(sphere.vertices))
    cfg = TextureConfig(steps=40, lr=3e-2, render_size=64, field=SMALL_FIELD, camera_distance=3.2, view_pool=12,
                        atlas_size=128, reference_weight=0.0, elevation_range_deg=(-40.0, 40.0),
                        pbr=MaterialBakeConfig(views=8, render_size=128))
    guidance = OracleGuidance(lit_target, raster)
    ViewMemo(guidance.oracle)
    state = run_texture(cfg, sphere, guidance, None, LoggingReporter("texture"), rasterizer=raster,
                        generator=torch.Generator().manual_seed(0))
    baked = bake_texture(cfg, state, decomposer=OracleDecomposer(sphere, raster, material=material_at),
                         rasterizer=raster)
    truth, filled = texel_truth(sphere, baked.uvs, cfg.atlas_size)
    errors = {
        "albedo": float(np.abs(baked.base_color[filled] - truth[:, :3]).mean()),
        "lit_base_color": float(np.abs(baked.lit_base_color[filled] - truth[:, :3]).mean()),
        "roughness": float(np.abs(baked.roughness_metallic[filled][:, 1] - truth[:, 3]).mean()),
        "metallic": float(np.abs(baked.roughness_metallic[filled][:, 2] - truth[:, 4]).mean()),
    }
    print("material bake mean absolute errors:", errors)
    assert errors["albedo"] < 0.05 and errors["roughness"] < 0.05 and errors["metallic"] < 0.05, errors
    assert errors["albedo"] < 0.5 * errors["lit_base_color"], errors
    np.testing.assert_array_equal(baked.roughness_metallic[filled][:, 0], 1.0)  # glTF: R unused


def test_base_color_only_bakes_the_field_as_it_is(sphere):
    raster = MeshRasterizer("torch")
    cfg = TextureConfig(steps=1, render_size=32, field=SMALL_FIELD, atlas_size=32,
                        pbr=MaterialBakeConfig(views=2, render_size=32))
    state = run_texture(cfg, sphere, OracleGuidance(sphere, raster), None, LoggingReporter("texture"),
                        rasterizer=raster)
    decomposer = OracleDecomposer(sphere, raster, material=material_at)
    full = bake_texture(cfg, state, decomposer=decomposer, rasterizer=raster, detail=sphere)
    only = bake_texture(cfg, state, decomposer=decomposer, rasterizer=raster, detail=sphere, base_color_only=True)
    assert full.roughness_metallic is not None and full.normal_map is not None
    assert only.roughness_metallic is None and only.normal_map is None and only.lit_base_color is None
    np.testing.assert_array_equal(only.base_color, full.lit_base_color)


class SwappedTargets:
    """A MarigoldIntrinsicsPipeline stand-in whose targets come in another order than the appearance
    model's: the decomposer must read the order from target_properties."""

    target_properties = {
        "target_names": ["material", "albedo"],
        "material": {"prediction_space": "stack", "sub_target_names": [None, "metallicity", "roughness"]},
        "albedo": {"prediction_space": "srgb"},
        "roughness": {"prediction_space": "linear"}, "metallicity": {"prediction_space": "linear"},
    }

    def __call__(self, image, **kwargs):
        n, _, h, w = image.shape
        material = torch.tensor([0.0, 0.3, 0.6])[None, :, None, None].expand(n, 3, h, w)
        albedo = torch.tensor([0.1, 0.2, 0.9])[None, :, None, None].expand(n, 3, h, w)
        return SimpleNamespace(prediction=torch.stack([material, albedo], 1).reshape(2 * n, 3, h, w))


def test_marigold_decomposer_reads_the_target_order_from_the_pipeline():
    maps = MarigoldIntrinsics(SwappedTargets())(torch.rand(2, 8, 8, 3), torch.ones(2, 8, 8, 1), None)
    np.testing.assert_allclose(maps.albedo[0, 0, 0].numpy(), [0.1, 0.2, 0.9])
    assert float(maps.roughness[1, 3, 3, 0]) == pytest.approx(0.6)
    assert float(maps.metallic[1, 3, 3, 0]) == pytest.approx(0.3)
    bad = SwappedTargets()
    bad.target_properties = {"target_names": ["albedo", "shading", "residual"], "albedo": {}}
    with pytest.raises(ValueError, match="lacks"):
        MarigoldIntrinsics(bad)


def test_tiny_marigold_iid_model_bakes_through_the_same_fusion(sphere, tiny_priors):
    """The tiny model of the real class, loaded through from_pretrained: its (random) estimates reach the maps."""
    raster = MeshRasterizer("torch")
    pipe = tiny_priors.intrinsics
    assert type(pipe).__name__ == "MarigoldIntrinsicsPipeline"
    cfg = TextureConfig(steps=1, render_size=32, field=SMALL_FIELD, atlas_size=32,
                        pbr=MaterialBakeConfig(views=2, render_size=32, default_roughness=0.8,
                                               intrinsics=IntrinsicsConfig(batch_size=2)))
    state = run_texture(cfg, sphere, OracleGuidance(sphere, raster), None, LoggingReporter("texture"),
                        rasterizer=raster)
    baked = bake_texture(cfg, state, decomposer=MarigoldIntrinsics(pipe, cfg.pbr.intrinsics), rasterizer=raster)
    rm = baked.roughness_metallic
    assert rm.shape == (32, 32, 3) and np.isfinite(rm).all() and (rm >= 0).all() and (rm <= 1).all()
    filled = bake.rasterize_uv(baked.uvs, 32, 32).filled
    # Texels the two views see carry the model's estimates, not the fallback roughness.
    assert np.abs(rm[filled][:, 1] - 0.8).max() > 0.05
    assert not np.allclose(baked.base_color, baked.lit_base_color)
