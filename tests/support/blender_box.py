"""The test box (tests/support/masked_mesh.py) as a Blender object with a vertex group and an image texture, for
the add-on's tests of masked refines and texture sets (inside the bpy module only)."""

from __future__ import annotations

import numpy as np

from tests.support.blender_env import bpy
from tests.support.masked_mesh import TEXTURE_SIDE, box_mesh, colour_texels, grid_uvs, half_regions


def textured_box(addon, colour=(200, 30, 30)):
    """The test box as a Blender object: its triangles and UVs, its +X half in vertex group "Half" (and an empty
    group "Nothing"), and a base-colour image on an Image Texture of its material."""
    vertices, faces = box_mesh()
    payload = addon.protocol.scene.MeshPayload(vertices, faces, uvs=grid_uvs(len(faces)))
    regions = half_regions(vertices, faces, payload.uvs, 0.0, 0.1)
    obj = bpy.data.objects.new("Box", addon.mesh_io.new_mesh("Box", payload))
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    group = obj.vertex_groups.new(name="Half")
    group.add([int(i) for i in np.flatnonzero(regions.weights > 0)], 1.0, "REPLACE")
    obj.vertex_groups.new(name="Nothing")
    image = bpy.data.images.new("Paint", TEXTURE_SIDE, TEXTURE_SIDE)
    rgba = np.concatenate([colour_texels(colour), np.full((TEXTURE_SIDE, TEXTURE_SIDE, 1), 255, np.uint8)], -1)
    image.pixels.foreach_set((rgba[::-1].astype(np.float32) / 255.0).ravel())
    image.pack()
    obj.data.materials.append(addon.materials.textured_material("Paint", {"base_color": image}))
    return obj, regions


def image_texels(image) -> np.ndarray:
    w, h = image.size
    px = np.empty(w * h * 4, np.float32)
    image.pixels.foreach_get(px)
    return np.round(px.reshape(h, w, 4)[::-1, :, :3] * 255).astype(np.uint8)


def base_color_image(obj):
    bsdf = next(n for n in obj.active_material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    return bsdf.inputs["Base Color"].links[0].from_node.image
