"""Oracle guidance: losses against a known target, camera-frame normal targets, reference views."""

from __future__ import annotations

import torch
import trimesh
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.guidance.base import GuidanceInput
from dreampolish.backend.guidance.oracle import OracleGuidance, OracleNormals, OracleTarget, oracle_reference
from dreampolish.backend.render.cameras import ViewSampler, orbit_cameras
from dreampolish.backend.render.rasterize import MeshRasterizer


def _sphere(radius=0.5, color=(0.9, 0.1, 0.1)) -> TriMesh:
    s = trimesh.creation.icosphere(3, radius=radius)
    v = torch.tensor(s.vertices, dtype=torch.float32)
    return TriMesh(v, torch.tensor(s.faces), vertex_colors=torch.tensor(color).expand(v.shape[0], 3).clone())


def test_oracle_loss_is_zero_for_the_target_itself_and_grows_with_the_error():
    target = _sphere()
    raster = MeshRasterizer("torch")
    oracle = OracleGuidance(target, raster)
    cams = ViewSampler().sample(2, 32, 32, torch.Generator().manual_seed(0))
    t = OracleTarget(target, raster).render(cams)
    rgb = t.albedo + (1 - t.mask)
    exact = oracle(GuidanceInput(rgb, t.mask, cams, normal=t.normal * t.mask, shading="albedo"))
    assert float(exact.loss) < 1e-6
    assert set(exact.diagnostics) == {"oracle_opacity", "oracle_normal", "oracle_rgb"}

    small = OracleTarget(_sphere(0.35, (0.1, 0.9, 0.1)), raster).render(cams)
    opacity = small.mask.clone().requires_grad_(True)
    wrong = oracle(GuidanceInput(small.albedo + (1 - small.mask), opacity, cams, shading="albedo"))
    assert float(wrong.loss) > 0.01 and "oracle_normal" not in wrong.diagnostics
    wrong.loss.backward()
    # the gradient asks for more coverage where the target covers and the guess does not
    gap = (t.mask > 0.99) & (small.mask < 0.01)
    assert (opacity.grad[gap] < 0).all()


def test_normal_shaded_steps_are_not_compared_as_colours():
    target = _sphere()
    oracle = OracleGuidance(target, MeshRasterizer("torch"))
    cams = ViewSampler().sample(1, 24, 24, torch.Generator().manual_seed(1))
    t = oracle.oracle.render(cams)
    out = oracle(GuidanceInput(torch.zeros(1, 24, 24, 3), t.mask, cams, shading="normal"))
    assert "oracle_rgb" not in out.diagnostics and float(out.loss) < 1e-6


def test_oracle_normals_are_in_the_camera_frame():
    one = torch.ones(1)
    cam = orbit_cameras(30 * one, 70 * one, 3.0 * one, 25 * one, 33, 33)
    normals = OracleNormals(_sphere(), MeshRasterizer("torch"))(torch.zeros(1, 33, 33, 3), torch.ones(1, 33, 33, 1), cam)
    centre = normals[0, 16, 16]
    assert float(centre[2]) > 0.98  # facing the viewer: +Z in camera space
    right, top = normals[0, 16, 26], normals[0, 6, 16]
    assert float(right[0]) > 0.3 and float(top[1]) > 0.3  # +X right, +Y up
    assert float(normals[0, 0, 0].abs().sum()) == 0  # background


def test_oracle_reference_is_the_target_at_the_reference_camera():
    target = _sphere()
    cam = ViewSampler().reference(40, 30)
    ref = oracle_reference(target, cam, MeshRasterizer("torch"))
    assert ref.rgb.shape == (30, 40, 3) and ref.mask.shape == (30, 40, 1) and ref.depth.shape == (30, 40, 1)
    inside = ref.mask[..., 0] > 0.99
    torch.testing.assert_close(ref.rgb[inside], torch.tensor([0.9, 0.1, 0.1]).expand(int(inside.sum()), 3))
    assert torch.allclose(ref.rgb[ref.mask[..., 0] == 0], torch.ones(3))
