"""MeshPayload <-> Blender mesh: exact counts, per-corner UVs, world transform and modifiers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.support.blender_env import bpy, mathutils

Matrix = mathutils.Matrix


def _payload(addon, with_extras: bool = True):
    scene = addon.protocol.scene
    # A unit square pyramid: 5 vertices, 6 triangles.
    v = np.array([[0, 0, 1], [1, 1, 0], [-1, 1, 0], [-1, -1, 0], [1, -1, 0]], np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1], [1, 3, 2], [1, 4, 3]], np.uint32)
    uvs = np.random.default_rng(0).random((len(f), 3, 2)).astype(np.float32)
    extras = {}
    if with_extras:
        n = v / np.linalg.norm(v, axis=1, keepdims=True)
        extras = {"normals": n.astype(np.float32), "colors": np.tile([0.2, 0.4, 0.6], (5, 1)).astype(np.float32)}
    return scene.MeshPayload(vertices=v, faces=f, uvs=uvs, **extras)


def test_payload_becomes_a_mesh_with_the_same_triangles_uvs_and_colours(addon, fresh_scene):
    payload = _payload(addon)
    mesh = addon.mesh_io.new_mesh("pyramid", payload)
    assert (len(mesh.vertices), len(mesh.polygons), len(mesh.loops)) == (5, 6, 18)
    co = np.empty(15, np.float32)
    mesh.vertices.foreach_get("co", co)
    np.testing.assert_array_equal(co.reshape(5, 3), payload.vertices)
    corners = np.empty(18, np.int32)
    mesh.loops.foreach_get("vertex_index", corners)
    np.testing.assert_array_equal(corners.reshape(6, 3), payload.faces)
    uv = np.empty(36, np.float32)
    mesh.uv_layers["UVMap"].data.foreach_get("uv", uv)
    np.testing.assert_allclose(uv.reshape(6, 3, 2), payload.uvs)
    col = np.empty(20, np.float32)
    mesh.color_attributes["Color"].data.foreach_get("color", col)
    np.testing.assert_allclose(col.reshape(5, 4)[:, :3], payload.colors)
    assert mesh.validate() is False, "Blender found nothing to fix in the mesh we built"


def test_a_polygon_payload_becomes_quads_with_their_uvs_per_corner(addon, fresh_scene):
    # A pyramid of one quad and four triangles, sent as polygons (issue 30): Blender gets the quad itself.
    scene = addon.protocol.scene
    v = np.array([[0, 0, 1], [1, 1, 0], [-1, 1, 0], [-1, -1, 0], [1, -1, 0]], np.float32)
    sizes = np.array([3, 3, 3, 3, 4], np.uint32)
    corners = np.array([0, 1, 2, 0, 2, 3, 0, 3, 4, 0, 4, 1, 1, 4, 3, 2], np.uint32)
    uvs = np.random.default_rng(1).random((16, 2)).astype(np.float32)
    payload = scene.MeshPayload.from_polygons(v, sizes, corners, uvs)
    assert payload.num_faces == 6  # its triangles, for every triangle consumer
    mesh = addon.mesh_io.new_mesh("pyramid", payload)
    assert (len(mesh.vertices), len(mesh.polygons), len(mesh.loops)) == (5, 5, 16)
    totals = np.empty(5, np.int32)
    mesh.polygons.foreach_get("loop_total", totals)
    np.testing.assert_array_equal(totals, sizes)
    got = np.empty(16, np.int32)
    mesh.loops.foreach_get("vertex_index", got)
    np.testing.assert_array_equal(got, corners)
    uv = np.empty(32, np.float32)
    mesh.uv_layers["UVMap"].data.foreach_get("uv", uv)
    np.testing.assert_allclose(uv.reshape(16, 2), uvs)
    assert mesh.validate() is False, "Blender found nothing to fix in the mesh we built"


def test_selected_object_is_sent_evaluated_triangulated_and_in_world_space(addon, fresh_scene):
    bpy.ops.mesh.primitive_cube_add(size=2.0, location=(1.0, 2.0, 3.0), rotation=(0.0, 0.0, math.radians(30)))
    cube = bpy.context.active_object
    cube.scale = (2.0, 1.0, 1.0)
    cube.modifiers.new("Subdivide", "SUBSURF").levels = 1
    bpy.context.view_layer.update()
    depsgraph = bpy.context.evaluated_depsgraph_get()
    payload = addon.mesh_io.payload_from_object(cube, depsgraph, world_space=True)

    evaluated = cube.evaluated_get(depsgraph).data
    assert payload.num_vertices == len(evaluated.vertices) == 26  # subdivided once: 8 + 12 + 6
    assert payload.num_faces == 2 * len(evaluated.polygons) == 48  # quads split in two
    local = np.array([v.co for v in evaluated.vertices], np.float32)
    m = np.array(cube.matrix_world, np.float32)
    np.testing.assert_allclose(payload.vertices, local @ m[:3, :3].T + m[:3, 3], atol=1e-5)
    np.testing.assert_array_equal(payload.transform, np.eye(4, dtype=np.float32))
    assert payload.uvs is not None and payload.uvs.shape == (48, 3, 2)

    object_space = addon.mesh_io.payload_from_object(cube, depsgraph, world_space=False)
    np.testing.assert_allclose(object_space.vertices, local, atol=1e-6)
    np.testing.assert_allclose(object_space.transform, m, atol=1e-6)


def test_an_object_of_quads_is_sent_as_quads_when_asked(addon, fresh_scene):
    # The artist's edit of a game-ready mesh goes back with its quads (resume after finish), in world space
    # or with its transform; by default, triangles.
    bpy.ops.mesh.primitive_cube_add(size=2.0, location=(1.0, 2.0, 3.0))
    cube = bpy.context.active_object
    cube.scale = (-1.0, 1.0, 1.0)  # mirrored: each face's corners turn, its first corner kept
    bpy.context.view_layer.update()
    depsgraph = bpy.context.evaluated_depsgraph_get()
    triangles = addon.mesh_io.payload_from_object(cube, depsgraph, world_space=True)
    assert triangles.face_sizes is None and triangles.num_faces == 12
    for world_space in (True, False):
        quads = addon.mesh_io.payload_from_object(cube, depsgraph, world_space=world_space, polygons=True)
        assert quads.num_polygons == 6 and (quads.face_sizes == 4).all() and quads.num_faces == 12
        assert quads.uvs is not None and quads.corner_uvs().shape == (24, 2)
        world = quads.in_world()
        tri = world.vertices[world.faces.astype(np.int64)]
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        assert (np.sum(normals * (tri.mean(axis=1) - np.array([1.0, 2.0, 3.0])), axis=1) > 0).all()


def test_a_mirrored_object_is_sent_with_its_faces_pointing_outward(addon, fresh_scene):
    # A negative scale mirrors the object: placed in the world by the protocol's one rule
    # (MeshPayload.in_world), its triangles' winding flips, so that they still face outward.
    bpy.ops.mesh.primitive_cube_add(size=2.0, location=(3.0, 0.0, 0.0))
    cube = bpy.context.active_object
    cube.scale = (-1.0, 1.0, 1.0)
    bpy.context.view_layer.update()
    payload = addon.mesh_io.payload_from_object(cube, bpy.context.evaluated_depsgraph_get(), world_space=True)
    tri = payload.vertices[payload.faces.astype(np.int64)]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    outward = tri.mean(axis=1) - np.array([3.0, 0.0, 0.0], np.float32)
    assert (np.einsum("ij,ij->i", normals, outward) > 0).all()


def test_updating_in_place_keeps_the_objects_transform(addon, fresh_scene):
    obj = bpy.data.objects.new("result", addon.mesh_io.new_mesh("result", _payload(addon, with_extras=False)))
    bpy.context.scene.collection.objects.link(obj)
    obj.matrix_world = Matrix.Translation((5.0, 0.0, 0.0)) @ Matrix.Rotation(0.5, 4, "Z")
    before = obj.matrix_world.copy()
    bigger = _payload(addon, with_extras=False)
    bigger.vertices = bigger.vertices * 2
    addon.mesh_io.fill_mesh(obj.data, bigger)
    assert obj.matrix_world == before
    assert max(abs(c) for v in obj.data.vertices for c in v.co) == pytest.approx(2.0)


def test_mesh_over_the_backend_limit_is_refused_before_sending(addon, fresh_scene):
    bpy.ops.mesh.primitive_cube_add()
    limits = addon.protocol.limits.Limits(max_faces=10)
    with pytest.raises(addon.protocol.errors.LimitExceeded, match="mesh too large: 12 triangles"):
        addon.mesh_io.payload_from_object(bpy.context.active_object, bpy.context.evaluated_depsgraph_get(),
                                          limits=limits)


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 decoding: c / 12.92 below 0.04045, else ((c + 0.055) / 1.055) ** 2.4."""
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def test_stage_colours_arrive_linear_and_the_stage_material_shows_them(addon, fresh_scene):
    """The wire carries linear RGB (protocol/README.md): Blender stores it as is, and shows it."""
    srgb = np.array([200, 60, 30]) / 255.0
    linear = _srgb_to_linear(srgb).astype(np.float32)
    payload = _payload(addon, with_extras=False)
    payload.colors = np.tile(linear, (payload.num_vertices, 1))
    cache = addon.job_follow.job_cache()
    cache.save_record(addon.job_cache.JobRecord(job_id="colourjob", prompt="a red pyramid"))
    cache.save_stage("colourjob", "nerf", payload)
    assert bpy.ops.dreampolish.import_result(job_id="colourjob", stage="nerf") == {"FINISHED"}
    obj = bpy.context.view_layer.objects.active
    attr = obj.data.color_attributes.active_color
    assert (attr.data_type, attr.domain) == ("FLOAT_COLOR", "POINT")
    got = np.array([d.color[:3] for d in attr.data])
    np.testing.assert_allclose(got, np.tile(linear, (len(got), 1)), atol=1e-6)
    # Blender's own sRGB view of the same value is the colour we started from.
    np.testing.assert_allclose(np.array(attr.data[0].color_srgb[:3]), srgb, atol=1e-3)

    bsdf = next(n for n in obj.active_material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    node = bsdf.inputs["Base Color"].links[0].from_node
    assert node.type == "VERTEX_COLOR" and node.layer_name == attr.name
