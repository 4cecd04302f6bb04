"""Polygons on the wire (issue 30): a mesh payload carries Blender's faces (corner counts and corner
vertices), its triangles are their fan, the wire refuses what Blender would refuse, and a .glb of it is
triangles that the Khronos validator accepts."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.gltf import glb_to_mesh, mesh_to_glb
from dreampolish.protocol.scene import MeshPayload, TexturePayload, fan_triangulation

from tests.support.gltf_validator import validate_glb


def cube() -> MeshPayload:
    """The unit cube as six quads, outward, with per-corner UVs (one chart per face)."""
    v = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.float32)
    quads = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    corners = np.array(quads, np.uint32).ravel()
    uvs = np.tile(np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32), (6, 1)) * 0.3
    return MeshPayload.from_polygons(v, np.full(6, 4, np.uint32), corners, uvs)


def test_the_fan_of_a_polygon_keeps_its_winding_and_first_corner():
    np.testing.assert_array_equal(fan_triangulation(np.array([3, 5], np.uint32)),
                                  [[0, 1, 2], [3, 4, 5], [3, 5, 6], [3, 6, 7]])
    mesh = cube().validate()
    assert (mesh.num_polygons, mesh.num_faces) == (6, 12)
    # every triangle's normal points away from the centre, as the quads were wound
    p = mesh.vertices[mesh.faces]
    normal = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    assert (np.sum(normal * (p.mean(1) - 0.5), 1) > 0).all()


def test_a_polygon_mesh_crosses_the_wire_as_polygons_beside_its_triangles():
    # the triangles and their per-corner UVs as before (a client of protocol 1.1 reads them), the polygons beside
    mesh = cube()
    frames = codec.encode(m.StageResult(stage="texture", index=5, mesh=mesh, job_id="j", seq=1))
    header = msgpack.unpackb(frames[0])
    wire = header["body"]["mesh"] if "body" in header else header["mesh"]
    assert {"faces", "uvs", "face_sizes", "face_corners"} <= wire.keys()
    assert wire["uvs"]["shape"] == [12, 3, 2]
    decoded = codec.decode([bytes(f) for f in frames]).mesh
    np.testing.assert_array_equal(decoded.face_sizes, mesh.face_sizes)
    np.testing.assert_array_equal(decoded.face_corners, mesh.face_corners)
    np.testing.assert_array_equal(decoded.faces, mesh.faces)
    np.testing.assert_array_equal(decoded.uvs, mesh.uvs)
    np.testing.assert_array_equal(decoded.corner_uvs(), np.tile(np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32) * np.float32(0.3), (6, 1)))


def _sent(mesh_map: dict) -> m.Message:
    """A resume carrying `mesh_map` (arrays as they would be framed), decoded as the backend decodes it."""
    frames = codec.encode(m.Resume(mesh=cube(), job_id="j"))
    header = msgpack.unpackb(frames[0])
    body = header["body"] if "body" in header else header
    arrays: list[bytes] = []

    def frame(a: np.ndarray) -> dict:
        arrays.append(np.ascontiguousarray(a).tobytes())
        return {"frame": len(frames) - 1 + len(arrays), "dtype": a.dtype.str, "shape": list(a.shape)}

    template = body["mesh"]["vertices"]
    assert set(template) >= {"frame", "dtype", "shape"}, template  # the frame reference's fields
    body["mesh"] = {k: frame(v) if isinstance(v, np.ndarray) else v for k, v in mesh_map.items()}
    return codec.decode([msgpack.packb(header), *[bytes(f) for f in frames[1:]], *arrays])


GOOD = {"vertices": cube().vertices, "faces": cube().faces, "uvs": cube().uvs, "face_sizes": np.full(6, 4, np.uint32),
        "face_corners": cube().face_corners, "textures": []}
TWO_UVS = cube().uvs.copy()
TWO_UVS[1, 0] += 0.5  # face 0's second triangle disagrees on its first corner


@pytest.mark.parametrize(("change", "words"), [
    ({"face_sizes": np.array([4, 4, 4, 4, 4, 2, 2], np.uint32)}, "mesh.face_sizes[5] is 2; a face has 3 to 64"),
    ({"face_sizes": np.array([4, 4, 4, 4, 4, 3], np.uint32)}, "add up to 23 corners but mesh.face_corners has 24"),
    ({"face_corners": np.where(cube().face_corners == 7, 8, cube().face_corners).astype(np.uint32)},
     "mesh.face_corners index vertex 8 but there are only 8"),
    ({"face_corners": np.concatenate([[0, 1, 0, 2], cube().face_corners[4:]]).astype(np.uint32)},
     "mesh face 0 uses vertex 0 twice (a degenerate face)"),
    ({"face_sizes": np.full(6, 4, np.int32)}, "mesh.face_sizes must be uint32"),
    ({"faces": np.ascontiguousarray(cube().faces[:, [1, 2, 0]])}, "not the fan triangulation of the polygons"),
    ({"uvs": TWO_UVS}, "mesh face 0 has two UVs at one corner"),
    ({"face_corners": None}, "face_corners"),
])
def test_bad_polygons_are_refused_in_words(change, words):
    mesh_map = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    assert _sent(GOOD).mesh.num_polygons == 6  # the map without the change is a good mesh
    with pytest.raises(ValidationError) as err:
        _sent(mesh_map)
    assert words in str(err.value)


def test_triangles_that_are_not_the_polygons_fan_are_refused():
    mesh = cube()
    mesh.faces = np.ascontiguousarray(mesh.faces[:, [1, 2, 0]])
    with pytest.raises(ValidationError, match="not the fan triangulation"):
        mesh.validate()


def test_a_mirroring_transform_reverses_each_polygon_and_keeps_it_a_polygon():
    mesh = cube()
    mesh.transform = np.diag([-1, 1, 1, 1]).astype(np.float32)
    world = mesh.in_world().validate()
    np.testing.assert_array_equal(world.face_sizes, mesh.face_sizes)
    np.testing.assert_array_equal(world.face_corners[:4], [0, 2, 3, 1])  # first corner kept, the rest reversed
    np.testing.assert_array_equal(world.corner_uvs()[:4], mesh.corner_uvs()[[0, 3, 2, 1]])
    p = world.vertices[world.faces]
    normal = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    centre = world.vertices.mean(0)
    assert (np.sum(normal * (p.mean(1) - centre), 1) > 0).all()  # still outward in the world


def test_a_glb_of_quads_is_their_triangles_and_passes_the_khronos_validator(tmp_path):
    mesh = cube()
    mesh.normals = (mesh.vertices - 0.5) / np.linalg.norm(mesh.vertices - 0.5, axis=1, keepdims=True)
    mesh.textures = [TexturePayload("normal", array=np.tile(np.array([0, 0, 1], np.float16), (8, 8, 1)))]
    path = tmp_path / "cube.glb"
    path.write_bytes(mesh_to_glb(mesh.validate()))
    validate_glb(path)
    back = glb_to_mesh(path.read_bytes())
    assert back.num_faces == 12 and back.face_sizes is None  # glTF holds triangles only
    np.testing.assert_allclose(back.vertices[back.faces], mesh.vertices[mesh.faces], atol=1e-6)


def tetrahedron() -> MeshPayload:
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.uint32)
    return MeshPayload(v, f, uvs=np.tile(np.array([[0, 0], [0.5, 0], [0, 0.5]], np.float32), (4, 1, 1)))


def test_levels_of_detail_cross_the_wire_and_are_nodes_of_their_own_in_the_glb(tmp_path):
    mesh = cube()
    mesh.transform = np.diag([2, 2, 2, 1]).astype(np.float32)
    mesh.lods = [tetrahedron()]
    mesh.lods[0].textures = [TexturePayload("normal", array=np.tile(np.array([0, 0, 1], np.float16), (4, 4, 1)))]
    mesh.lods[0].normals = np.tile(np.array([0, 0, 1], np.float32), (4, 1))
    decoded = codec.decode([bytes(f) for f in codec.encode(m.StageResult(stage="texture", mesh=mesh, job_id="j"))]).mesh
    assert len(decoded.lods) == 1 and decoded.lods[0].num_faces == 4 and decoded.lods[0].texture("normal") is not None
    assert decoded.num_polygons == 6
    path = tmp_path / "lods.glb"
    path.write_bytes(mesh_to_glb(decoded, name="cube"))
    validate_glb(path)
    import json
    import struct
    data = path.read_bytes()
    length = struct.unpack_from("<I", data, 12)[0]
    gltf = json.loads(data[20:20 + length])
    assert [n["name"] for n in gltf["nodes"]] == ["cube", "cube_LOD1"]
    assert gltf["nodes"][0]["matrix"] == gltf["nodes"][1]["matrix"]
    assert len(gltf["meshes"]) == 2 and len(gltf["materials"]) == 2
    world = decoded.in_world()  # the levels of detail go into the world with their mesh
    np.testing.assert_allclose(world.lods[0].vertices, tetrahedron().vertices * 2)


def test_nested_levels_of_detail_are_refused():
    mesh = cube()
    inner = tetrahedron()
    inner.lods = [tetrahedron()]
    mesh.lods = [inner]
    with pytest.raises(ValidationError, match=r"mesh.lods\[0\] has levels of detail of its own"):
        codec.decode([bytes(f) for f in codec.encode(m.StageResult(stage="texture", mesh=mesh, job_id="j"))])
