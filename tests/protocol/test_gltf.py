"""protocol/gltf.py writes .glb files that trimesh reads as glTF (Y-up), and reads them back."""

from __future__ import annotations

import io

import numpy as np
import pytest
from dreampolish.protocol.errors import DecodeError
from dreampolish.protocol.gltf import glb_to_mesh, mesh_to_glb
from dreampolish.protocol.scene import MeshPayload, TexturePayload

from tests.support.pipelines import octahedron, png_rgb

trimesh = pytest.importorskip("trimesh")


def textured_octahedron() -> MeshPayload:
    mesh = octahedron(2.0)
    mesh.textures.append(TexturePayload("base_color", png=png_rgb(8, 8, (200, 60, 30))))
    mesh.transform = np.array([[1, 0, 0, 5], [0, 1, 0, 6], [0, 0, 1, 7], [0, 0, 0, 1]], np.float32)
    return mesh


def test_trimesh_reads_our_glb_in_y_up_with_the_texture():
    mesh = textured_octahedron()
    scene = trimesh.load(io.BytesIO(mesh_to_glb(mesh)), file_type="glb", process=False)
    [geom] = scene.geometry.values()
    # Per-corner UVs split every corner into its own vertex.
    assert len(geom.faces) == mesh.num_faces and len(geom.vertices) == 3 * mesh.num_faces
    corners = mesh.vertices[mesh.faces.reshape(-1)]
    np.testing.assert_allclose(geom.vertices, corners[:, [0, 2, 1]] * [1, 1, -1], atol=1e-6)
    np.testing.assert_allclose(geom.visual.uv[:3], [[0, 0], [1, 0], [0.5, 1]], atol=1e-6)
    image = geom.visual.material.baseColorTexture
    assert image.size == (8, 8) and image.convert("RGB").getpixel((3, 3)) == (200, 60, 30)
    # The object transform moved to the node, converted to Y-up: Blender (5, 6, 7) -> glTF (5, 7, -6).
    transform, _ = scene.graph[scene.graph.nodes_geometry[0]]
    np.testing.assert_allclose(transform[:3, 3], [5, 7, -6], atol=1e-6)


def test_glb_round_trip_restores_blender_axes_uvs_and_textures():
    mesh = textured_octahedron()
    mesh.normals = mesh.vertices / np.linalg.norm(mesh.vertices, axis=1, keepdims=True)
    back = glb_to_mesh(mesh_to_glb(mesh))
    np.testing.assert_allclose(back.vertices[back.faces], mesh.vertices[mesh.faces], atol=1e-6)
    np.testing.assert_allclose(back.uvs, mesh.uvs, atol=1e-6)
    np.testing.assert_allclose(back.normals[back.faces], mesh.normals[mesh.faces], atol=1e-6)
    np.testing.assert_allclose(back.transform, mesh.transform, atol=1e-6)
    assert back.texture("base_color").png == mesh.texture("base_color").png


def test_reads_a_glb_written_by_trimesh_with_shared_vertices():
    box = trimesh.creation.box(extents=(1, 2, 3))
    data = box.export(file_type="glb")
    mesh = glb_to_mesh(data)
    assert mesh.num_vertices == len(box.vertices) and mesh.num_faces == len(box.faces)
    # trimesh's Y extent (2) is Blender's Z extent after the axis conversion.
    np.testing.assert_allclose(np.ptp(mesh.vertices, axis=0), [1, 3, 2], atol=1e-6)


def test_garbage_is_a_decode_error():
    with pytest.raises(DecodeError):
        glb_to_mesh(b"not a glb at all, not at all")
    good = mesh_to_glb(octahedron())
    with pytest.raises(DecodeError):
        glb_to_mesh(good[:40])


def test_tangents_point_along_u_with_the_sign_that_makes_the_bitangent_point_along_v():
    from dreampolish.protocol.gltf import corner_tangents

    # A square in Blender's XY plane, facing +Z: glTF's +Z is Blender's -Y, glTF's +X Blender's +X.
    positions = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0]], np.float32)
    normals = np.tile(np.array([0, 0, 1], np.float32), (3, 1))
    uvs = positions[:, :2].copy()
    t = corner_tangents(positions, uvs, normals)
    np.testing.assert_allclose(t, np.tile([1.0, 0.0, 0.0, 1.0], (3, 1)), atol=1e-6)
    mirrored = uvs.copy()
    mirrored[:, 0] = 1.0 - mirrored[:, 0]  # u runs along -X: cross(n, t) = -Y, but +v is +Y
    t = corner_tangents(positions, mirrored, normals)
    np.testing.assert_allclose(t, np.tile([-1.0, 0.0, 0.0, -1.0], (3, 1)), atol=1e-6)


def test_float_textures_are_written_as_16_bit_pngs_in_gltfs_encoding_for_their_role():
    # The backend sends the normal map as float16 unit vectors; a .glb holds images only, so the writer
    # stores glTF's normal texture, 0.5 n + 0.5, and a linear float base colour sRGB-encoded.
    image = pytest.importorskip("PIL.Image")
    n = np.zeros((4, 6, 3), np.float32)
    n[..., 0], n[..., 2] = 0.6, 0.8  # a tilt towards +u
    n[0, 0] = (0.0, -1.0, 0.0)  # the top-left texel, along -v
    mesh = octahedron()
    mesh.normals = mesh.vertices.copy()
    mesh.textures = [TexturePayload("normal", array=n.astype(np.float16)),
                     TexturePayload("base_color", array=np.full((2, 2, 3), 0.2140411, np.float32))]
    back = glb_to_mesh(mesh_to_glb(mesh))
    assert sorted(t.role for t in back.textures) == ["base_color", "normal"]
    png = back.texture("normal").png
    assert png[24:26] == bytes([16, 2])  # IHDR: 16 bits a channel, RGB
    with image.open(io.BytesIO(png)) as im:  # Pillow reads the top 8 bits of each channel
        stored = np.asarray(im.convert("RGB"), np.float32) / 255.0
    assert stored.shape == (4, 6, 3)
    np.testing.assert_allclose(stored, n * 0.5 + 0.5, atol=1.5 / 255)
    with image.open(io.BytesIO(back.texture("base_color").png)) as im:
        np.testing.assert_allclose(np.asarray(im.convert("RGB"), np.float32) / 255.0, 0.5, atol=1.5 / 255)
    # Without UVs there is no tangent frame for a normal map: it is left out, the rest is kept.
    mesh.uvs = None
    assert [t.role for t in glb_to_mesh(mesh_to_glb(mesh)).textures] == ["base_color"]
