"""Export: the final payload for Blender and the glTF binary in the job folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from dreampolish.backend import bake
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.stages.export import ExportConfig, mesh_payload, run_export, texture_payloads
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.gltf import glb_to_mesh


@pytest.fixture
def textured_box() -> tuple[TriMesh, np.ndarray, np.ndarray]:
    box = trimesh.creation.box((0.6, 0.4, 0.8))
    v = np.asarray(box.vertices, np.float32)
    f = np.asarray(box.faces, np.int64)
    uvs = bake.unwrap_uv(v, f, bake.UnwrapConfig(resolution=64))
    image = bake.bake_color(v, f, uvs, lambda p: np.clip(p + 0.5, 0, 1), 64)
    normal_map = np.zeros((64, 64, 3), np.float32)
    normal_map[..., 2] = 1.0
    mesh = TriMesh(torch.as_tensor(v), torch.as_tensor(f), torch.as_tensor(uvs))
    return mesh, image, normal_map


def test_payload_carries_uvs_textures_and_the_object_transform(textured_box):
    mesh, image, normal_map = textured_box
    transform = np.diag([2.0, 2.0, 2.0, 1.0]).astype(np.float32)
    transform[:3, 3] = (1.0, -3.0, 0.5)
    payload = mesh_payload(mesh, transform, texture_payloads(image, normal_map))
    np.testing.assert_array_equal(payload.transform, transform)
    np.testing.assert_array_equal(payload.vertices, mesh.vertices.numpy())
    assert payload.uvs.shape == (mesh.num_faces, 3, 2)
    base, normal = payload.texture("base_color"), payload.texture("normal")
    np.testing.assert_allclose(bake.decode_png(base.png), image, atol=1 / 255 + 1e-6)
    assert normal.array.dtype == np.float16 and normal.array.shape == (64, 64, 3)


def test_glb_holds_the_world_mesh_in_y_up_with_its_textures(textured_box, tmp_path):
    mesh, image, normal_map = textured_box
    transform = np.eye(4, dtype=np.float32)
    transform[:3, 3] = (0.0, 0.0, 5.0)  # lifted 5 m along Blender's Z
    payload = mesh_payload(mesh, transform, texture_payloads(image, normal_map))
    result = run_export(ExportConfig(), payload, tmp_path)
    assert result.files["glb"] == tmp_path / "result.glb"
    (glb,) = trimesh.load(str(result.files["glb"])).geometry.values()
    lo, hi = glb.vertices.min(0), glb.vertices.max(0)
    np.testing.assert_allclose(hi - lo, [0.6, 0.8, 0.4], atol=1e-5)  # Blender (x, y, z) -> glTF (x, z, -y)
    assert (lo[1] + hi[1]) / 2 == pytest.approx(5.0, abs=1e-5)
    assert glb.visual.material.baseColorTexture is not None
    assert glb.visual.material.normalTexture is not None


def test_export_without_glb_writes_nothing(textured_box, tmp_path):
    mesh, image, _ = textured_box
    payload = mesh_payload(mesh, np.eye(4, dtype=np.float32), texture_payloads(image, None))
    result = run_export(ExportConfig(write_glb=False), payload, tmp_path)
    assert result.files == {} and not any(tmp_path.iterdir())


def test_a_field_colour_leaves_as_its_linear_value_on_the_wire_and_in_the_glb(textured_box, tmp_path):
    # The colour fields output display (sRGB) values; the wire and glTF's COLOR_0 are linear.
    mesh, image, _ = textured_box
    srgb = torch.tensor([0.5, 0.2, 0.8])
    expected = [0.2140411, 0.0331048, 0.6038273]  # ((s + 0.055) / 1.055) ** 2.4, IEC 61966-2-1
    mesh.vertex_colors = srgb.expand(mesh.num_vertices, 3).clone()
    payload = mesh_payload(mesh, np.eye(4, dtype=np.float32), texture_payloads(image, None))
    np.testing.assert_allclose(payload.colors, np.broadcast_to(expected, payload.colors.shape), atol=1e-6)
    result = run_export(ExportConfig(), payload, tmp_path)
    stored = glb_to_mesh(result.files["glb"].read_bytes())
    np.testing.assert_allclose(stored.colors, np.broadcast_to(expected, stored.colors.shape), atol=1e-6)
    # And back into the backend as the display value the field gave.
    torch.testing.assert_close(TriMesh.from_payload(payload).vertex_colors, mesh.vertex_colors, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["../../other-job/state.json", "/tmp/elsewhere.glb", "sub/result.glb", "state.json"])
def test_export_refuses_a_glb_name_that_leaves_the_job_folder(textured_box, tmp_path, name):
    mesh, image, _ = textured_box
    job = tmp_path / "store" / "job" / "work"
    job.mkdir(parents=True)
    payload = mesh_payload(mesh, np.eye(4, dtype=np.float32), texture_payloads(image, None))
    with pytest.raises(ValidationError, match="export.glb_name must be a plain file name"):
        run_export(ExportConfig(glb_name=name), payload, job)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_glb_carries_every_pbr_map_and_passes_the_khronos_validator(textured_box, tmp_path):
    from tests.support.gltf_validator import validate_glb

    mesh, image, normal_map = textured_box
    rm = np.ones((64, 64, 3), np.float32)
    rm[..., 1], rm[..., 2] = 0.35, 0.9  # G roughness, B metallic
    payload = mesh_payload(mesh, np.eye(4, dtype=np.float32), texture_payloads(image, normal_map, "float16", rm))
    assert [t.role for t in payload.textures] == ["base_color", "normal", "roughness_metallic"]
    result = run_export(ExportConfig(), payload, tmp_path)
    glb = result.files["glb"]
    report = validate_glb(glb)
    assert report["info"]["materialCount"] == 1 and report["info"]["animationCount"] == 0
    # The tangent frame the normal map was baked in goes with it: nothing left for a viewer to generate.
    assert report["issues"]["numWarnings"] == 0, report["issues"]["messages"]
    back = glb_to_mesh(glb.read_bytes())
    assert sorted(t.role for t in back.textures) == ["base_color", "normal", "roughness_metallic"]
    packed = bake.decode_png(back.texture("roughness_metallic").png)
    np.testing.assert_allclose(packed[..., 1:].mean((0, 1)), [0.35, 0.9], atol=1 / 255)
