"""MeshPayload <-> Blender mesh, built from arrays with foreach_set/foreach_get (no temporary files).

Arrays handed to foreach_set are C-contiguous and of the property's own type, so Blender copies
them in one pass. Geometry is in Blender's world convention (Z up, metres) on both sides.
"""

from __future__ import annotations

import bpy
import numpy as np
from mathutils import Matrix

from .protocol.errors import LimitExceeded, ValidationError
from .protocol.limits import Limits
from .protocol.scene import MAX_POLYGON_CORNERS, MeshPayload, polygon_starts

UV_LAYER_NAME = "UVMap"
COLOR_ATTRIBUTE_NAME = "Color"


def fill_mesh(mesh: bpy.types.Mesh, payload: MeshPayload) -> bpy.types.Mesh:
    """Replace the geometry of `mesh` by the payload's faces (its polygons as they are: a quad stays a quad;
    triangles otherwise), per-corner UVs, normals and colours.

    Objects using `mesh` keep their own transform: only the mesh data changes.
    """
    payload.validate()
    n_verts = payload.num_vertices
    if payload.has_polygons:
        sizes = payload.face_sizes.astype(np.int64)
        corner_verts, uvs = payload.face_corners, payload.corner_uvs()
        loop_starts = polygon_starts(sizes)
    else:
        sizes = np.full(payload.num_faces, 3, np.int64)
        corner_verts, uvs = payload.faces, payload.uvs
        loop_starts = np.arange(0, 3 * payload.num_faces, 3)
    n_faces = int(sizes.shape[0])
    mesh.clear_geometry()
    mesh.vertices.add(n_verts)
    mesh.loops.add(int(sizes.sum()))
    mesh.polygons.add(n_faces)
    # Write through the generic attribute API: it copies the arrays straight into Blender's storage,
    # several times faster than the legacy per-element collections on large meshes (bench/blender_import.py).
    attrs = mesh.attributes
    attrs["position"].data.foreach_set("vector", np.ascontiguousarray(payload.vertices, dtype=np.float32).ravel())
    attrs[".corner_vert"].data.foreach_set("value", np.ascontiguousarray(corner_verts, dtype=np.int32).ravel())
    mesh.polygons.foreach_set("loop_start", np.ascontiguousarray(loop_starts, dtype=np.int32))

    if uvs is not None:
        # A 2D float corner attribute is a UV map in Blender 4.x and 5.x.
        layer = attrs.new(UV_LAYER_NAME, "FLOAT2", "CORNER")
        layer.data.foreach_set("vector", np.ascontiguousarray(uvs, dtype=np.float32).ravel())
        mesh.uv_layers.active = mesh.uv_layers[UV_LAYER_NAME]
        mesh.uv_layers[UV_LAYER_NAME].active_render = True
    if payload.colors is not None:
        rgba = np.ones((n_verts, 4), dtype=np.float32)
        rgba[:, : payload.colors.shape[1]] = payload.colors
        attr = mesh.color_attributes.new(COLOR_ATTRIBUTE_NAME, "FLOAT_COLOR", "POINT")
        attr.data.foreach_set("color", rgba.ravel())
    mesh.update(calc_edges=True)
    if payload.normals is not None:
        mesh.polygons.foreach_set("use_smooth", np.ones(n_faces, dtype=bool))
        mesh.normals_split_custom_set_from_vertices(np.ascontiguousarray(payload.normals, dtype=np.float32))
    mesh.update()
    return mesh


def new_mesh(name: str, payload: MeshPayload) -> bpy.types.Mesh:
    return fill_mesh(bpy.data.meshes.new(name), payload)


def payload_from_object(
    obj: bpy.types.Object,
    depsgraph: bpy.types.Depsgraph,
    *,
    world_space: bool = True,
    limits: Limits | None = None,
    polygons: bool = False,
) -> MeshPayload:
    """Triangulated mesh of `obj` as it looks in the viewport (modifiers evaluated); with `polygons`, its
    faces as they are (quads stay quads, the triangles their fans: the artist's edit of a game-ready mesh)
    when every face has at most MAX_POLYGON_CORNERS corners.

    world_space=True bakes the object's world transform into the vertices (transform = identity),
    so that the mesh lines up with the camera rig, by the protocol's one object-to-world rule
    (MeshPayload.in_world: a mirrored object's faces are turned to keep pointing outward);
    otherwise vertices stay in object space and `transform` carries the object's world matrix.
    """
    if obj is None:
        raise ValidationError("nothing selected: select a mesh object")
    if obj.type != "MESH":
        raise ValidationError(f"{obj.name!r} is a {obj.type.lower()}, not a mesh")
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        matrix_world = np.array(obj.matrix_world, dtype=np.float32)
        payload = _payload_from_mesh(mesh, matrix_world, world_space, limits)  # checks the limits
        return _as_polygons(mesh, payload, matrix_world, world_space) if polygons else payload
    finally:
        evaluated.to_mesh_clear()


def _payload_from_mesh(mesh: bpy.types.Mesh, matrix_world: np.ndarray, world_space: bool,
                       limits: Limits | None) -> MeshPayload:
    mesh.calc_loop_triangles()
    n_verts, n_tris = len(mesh.vertices), len(mesh.loop_triangles)
    if limits is not None:
        if n_verts > limits.max_vertices:
            raise LimitExceeded(f"mesh too large: {n_verts} vertices; the backend accepts at most {limits.max_vertices}")
        if n_tris > limits.max_faces:
            raise LimitExceeded(f"mesh too large: {n_tris} triangles; the backend accepts at most {limits.max_faces}")
    if n_tris == 0:
        raise ValidationError("the mesh has no faces")

    co = np.empty(n_verts * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", co)
    co = co.reshape(n_verts, 3)
    tris = np.empty(n_tris * 3, dtype=np.int32)
    mesh.loop_triangles.foreach_get("vertices", tris)
    tri_loops = np.empty(n_tris * 3, dtype=np.int32)
    mesh.loop_triangles.foreach_get("loops", tri_loops)

    uvs = None
    uv_layer = mesh.uv_layers.active
    if uv_layer is not None:
        loop_uv = np.empty(len(mesh.loops) * 2, dtype=np.float32)
        uv_layer.data.foreach_get("uv", loop_uv)
        uvs = np.ascontiguousarray(loop_uv.reshape(-1, 2)[tri_loops].reshape(n_tris, 3, 2))

    payload = MeshPayload(
        vertices=np.ascontiguousarray(co, dtype=np.float32),
        faces=tris.reshape(n_tris, 3).astype(np.uint32),
        uvs=uvs,
        transform=matrix_world.astype(np.float32),
    )
    return (payload.in_world() if world_space else payload).validate()


def _as_polygons(mesh: bpy.types.Mesh, triangulated: MeshPayload, matrix_world: np.ndarray,
                 world_space: bool) -> MeshPayload:
    """The mesh's own faces with their UVs per corner, placed as `triangulated` was; `triangulated` itself
    when the mesh has only triangles or a face of more than MAX_POLYGON_CORNERS corners."""
    sizes = np.empty(len(mesh.polygons), dtype=np.int32)
    mesh.polygons.foreach_get("loop_total", sizes)
    if not sizes.size or sizes.max() <= 3 or sizes.max() > MAX_POLYGON_CORNERS:
        return triangulated
    starts = np.empty(len(mesh.polygons), dtype=np.int32)
    mesh.polygons.foreach_get("loop_start", starts)
    loops = (np.repeat(starts, sizes) + np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes))
    corner_vert = np.empty(len(mesh.loops), dtype=np.int32)
    mesh.loops.foreach_get("vertex_index", corner_vert)
    uvs = None
    if mesh.uv_layers.active is not None:
        loop_uv = np.empty(len(mesh.loops) * 2, dtype=np.float32)
        mesh.uv_layers.active.data.foreach_get("uv", loop_uv)
        uvs = loop_uv.reshape(-1, 2)[loops]
    co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", co)
    payload = MeshPayload.from_polygons(co.reshape(-1, 3), sizes.astype(np.uint32),
                                        corner_vert[loops].astype(np.uint32), uvs, transform=matrix_world)
    return (payload.in_world() if world_space else payload).validate()


def set_matrix(obj: bpy.types.Object, transform: np.ndarray) -> None:
    obj.matrix_world = Matrix(transform.astype(np.float64).tolist())
