"""TriMesh: normals, payloads, file round trips in the Z-up frame, normalisation and clean-up."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from dreampolish.backend.geometry.mesh import (
    TriMesh,
    clean_mesh,
    keep_largest_components,
    load_mesh,
    merge_close_vertices,
    normalize_to_unit,
    remove_degenerate_faces,
    save_mesh,
)
from dreampolish.protocol.scene import TexturePayload


def tall_box() -> TriMesh:
    """A box 0.2 x 0.4 x 1.0 standing on the XY plane: clearly taller along Z than anything else."""
    b = trimesh.creation.box(extents=(0.2, 0.4, 1.0))
    b.apply_translation((0.0, 0.0, 0.5))
    return TriMesh(torch.tensor(b.vertices, dtype=torch.float32), torch.tensor(b.faces))


def icosphere(subdivisions=2, radius=1.0) -> TriMesh:
    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return TriMesh(torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces))


def test_normals_point_outward_and_are_area_weighted():
    sphere = icosphere()
    vn = sphere.vertex_normals()
    torch.testing.assert_close(vn.norm(dim=-1), torch.ones(sphere.num_vertices))
    assert float((vn * sphere.vertices).sum(-1).min()) > 0.99
    fn = sphere.face_normals()
    centres = sphere.vertices[sphere.faces].mean(1)
    assert float((fn * torch.nn.functional.normalize(centres, dim=-1)).sum(-1).min()) > 0.98

    # One vertex shared by a large face with normal +Z and a small one with normal +X:
    # the area-weighted normal is the sum of the faces' doubled-area normals, (0, 0, 16) + (1, 0, 0).
    v = torch.tensor([[0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, -1], [0, 1, 0]], dtype=torch.float32)
    f = torch.tensor([[0, 1, 2], [0, 3, 4]])
    n = TriMesh(v, f).vertex_normals()[0]
    expected = torch.nn.functional.normalize(torch.tensor([1.0, 0.0, 16.0]), dim=0)
    torch.testing.assert_close(n, expected)


def test_payload_round_trip_and_object_transform():
    box = tall_box()
    box.uvs = torch.rand(box.num_faces, 3, 2)
    box.vertex_colors = torch.rand(box.num_vertices, 3)
    tex = TexturePayload("normal", array=np.zeros((4, 4, 3), np.float32))
    payload = box.to_payload(textures=[tex])
    assert payload.vertices.dtype == np.float32 and payload.faces.dtype == np.uint32
    assert payload.normals is not None and payload.texture("normal") is tex
    back = TriMesh.from_payload(payload)
    torch.testing.assert_close(back.vertices, box.vertices)
    assert torch.equal(back.faces, box.faces)
    torch.testing.assert_close(back.uvs, box.uvs)
    torch.testing.assert_close(back.vertex_colors, box.vertex_colors)

    # The object transform is applied: a 2x scale and a lift of 3 along Z.
    payload.transform = np.diag([2.0, 2.0, 2.0, 1.0]).astype(np.float32)
    payload.transform[2, 3] = 3.0
    moved = TriMesh.from_payload(payload)
    torch.testing.assert_close(moved.vertices, box.vertices * 2 + torch.tensor([0.0, 0.0, 3.0]))
    torch.testing.assert_close(TriMesh.from_payload(payload, apply_transform=False).vertices, box.vertices)
    # A mirroring transform keeps normals outward by flipping the winding.
    payload.transform = np.diag([-1.0, 1.0, 1.0, 1.0]).astype(np.float32)
    mirrored = TriMesh.from_payload(payload)
    centre = mirrored.vertices.mean(0)
    outward = (mirrored.face_normals() * (mirrored.vertices[mirrored.faces].mean(1) - centre)).sum(-1)
    assert float(outward.min()) > 0


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".glb", ".stl"])
def test_file_round_trip_keeps_z_up(tmp_path, suffix):
    box = tall_box()
    path = save_mesh(box, tmp_path / f"box{suffix}")
    back = load_mesh(path)
    assert back.num_faces == box.num_faces
    lo, hi = back.bounds()
    torch.testing.assert_close(hi - lo, torch.tensor([0.2, 0.4, 1.0]), atol=1e-5, rtol=0)
    assert float(lo[2]) == pytest.approx(0.0, abs=1e-5)
    # Winding survives: normals still point out of the box.
    centre = back.vertices.mean(0)
    outward = (back.face_normals() * (back.vertices[back.faces].mean(1) - centre)).sum(-1)
    assert float(outward.min()) > 0


def test_glb_is_y_up_on_disk(tmp_path):
    path = save_mesh(tall_box(), tmp_path / "box.glb")
    raw = trimesh.load(str(path), force="mesh", process=False)
    extents = raw.bounds[1] - raw.bounds[0]
    np.testing.assert_allclose(extents, [0.2, 1.0, 0.4], atol=1e-5)  # glTF: height along +Y
    assert raw.bounds[0][1] == pytest.approx(0.0, abs=1e-5)
    # Blender's mapping: glTF -Z is Blender +Y (the box spans y in [-0.2, 0.2], so z in [-0.2, 0.2]).
    np.testing.assert_allclose(raw.bounds[:, 2], [-0.2, 0.2], atol=1e-5)


def test_colours_and_uvs_survive_files(tmp_path):
    sphere = icosphere(subdivisions=1)
    sphere.vertex_colors = torch.rand(sphere.num_vertices, 3)
    back = load_mesh(save_mesh(sphere, tmp_path / "c.ply"))
    torch.testing.assert_close(back.vertex_colors, sphere.vertex_colors, atol=1 / 255, rtol=0)
    box = tall_box()
    box.uvs = torch.rand(box.num_faces, 3, 2)
    for suffix in (".obj", ".glb"):
        back = load_mesh(save_mesh(box, tmp_path / f"uv{suffix}"))
        assert back.uvs is not None
        # Corners keep their UVs (compare per face through the corner positions).
        order_src = torch.argsort(box.vertices[box.faces].sum(-1).sum(-1) * 1000 + box.uvs.sum((1, 2)))
        order_back = torch.argsort(back.vertices[back.faces].sum(-1).sum(-1) * 1000 + back.uvs.sum((1, 2)))
        torch.testing.assert_close(back.uvs[order_back], box.uvs[order_src], atol=1e-5, rtol=0)


def test_unsupported_file_type_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unsupported mesh file type"):
        save_mesh(tall_box(), tmp_path / "box.fbx")


def test_normalize_to_unit_gives_the_object_frame():
    box = tall_box().with_vertices(tall_box().vertices * 3 + torch.tensor([5.0, -2.0, 1.0]))
    unit, transform = normalize_to_unit(box)
    lo, hi = unit.bounds()
    torch.testing.assert_close((lo + hi) / 2, torch.zeros(3), atol=1e-5, rtol=0)
    assert float(unit.vertices.norm(dim=-1).max()) == pytest.approx(0.5)
    homo = torch.cat([unit.vertices, torch.ones(unit.num_vertices, 1)], 1)
    torch.testing.assert_close((homo @ transform.T)[:, :3], box.vertices, atol=1e-5, rtol=0)


def test_clean_up_removes_degenerates_floaters_and_duplicate_vertices():
    sphere = icosphere(subdivisions=2)
    speck = icosphere(subdivisions=0, radius=0.01)
    n = sphere.num_vertices
    v = torch.cat([sphere.vertices, speck.vertices + 3.0])
    f = torch.cat([sphere.faces, speck.faces + n])
    # A repeated-vertex face and a zero-area face.
    f = torch.cat([f, torch.tensor([[0, 0, 1], [0, 1, 1]])])
    mesh = TriMesh(v, f)
    cleaned = remove_degenerate_faces(mesh)
    assert cleaned.num_faces == sphere.num_faces + speck.num_faces
    kept = keep_largest_components(cleaned, min_fraction=0.5)
    assert kept.num_faces == sphere.num_faces and kept.num_vertices == sphere.num_vertices
    assert float(kept.vertices.norm(dim=-1).max()) == pytest.approx(1.0, abs=1e-5)

    # Split every face into its own three vertices (as STL stores them), then weld.
    soup = TriMesh(sphere.vertices[sphere.faces].reshape(-1, 3), torch.arange(sphere.num_faces * 3).view(-1, 3))
    welded = merge_close_vertices(soup, tolerance=1e-6)
    assert welded.num_vertices == sphere.num_vertices and welded.num_faces == sphere.num_faces
    assert clean_mesh(TriMesh(v, f), min_component_fraction=0.5).num_faces == sphere.num_faces
