"""Texture Only on a mesh whose UV map spans two UDIM tiles, through the panel against the real pipeline at
the tiny preset: one image per tile arrives as one tiled image on the object; a face across a tile's edge is
refused before anything is sent."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.addon_jobs import rt
from tests.support.blender_box import base_color_image
from tests.support.blender_env import bpy, pump
from tests.support.masked_mesh import box_mesh, grid_uvs

pytestmark = pytest.mark.slow


def _two_tile_box(addon, crossing: bool = False):
    vertices, faces = box_mesh()
    uvs = grid_uvs(len(faces))
    uvs[vertices[faces][:, :, 0].mean(1) > 0, :, 0] += 1.0  # the +X half in tile 1002
    if crossing:
        uvs[0, 0, 0] = 1.5
    payload = addon.protocol.scene.MeshPayload(vertices, faces, uvs=uvs)
    obj = bpy.data.objects.new("Tiles", addon.mesh_io.new_mesh("Tiles", payload))
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    return obj


def test_a_two_tile_uv_map_gets_a_tiled_image(addon, connected_tiny):
    obj = _two_tile_box(addon)
    s = bpy.context.scene.dreampolish
    s.refine_mode, s.prompt, s.texture_faces, s.mask_group = "texture", "a box", "ALL", ""
    assert bpy.ops.dreampolish.refine_selected() == {"FINISHED"}
    pump(addon, lambda: rt().job_state in ("done", "failed"), timeout_s=180, what="the UDIM texture job")
    assert rt().job_state == "done", rt().message
    image = base_color_image(obj)
    assert image.source == "TILED"
    assert sorted(t.number for t in image.tiles) == [1001, 1002]
    assert len(image.packed_files) == 2, "both tiles packed into the .blend as they arrived"
    assert len(obj.data.vertices) == 98


def test_a_face_across_a_tile_edge_is_refused_before_sending(addon, connected_tiny):
    obj = _two_tile_box(addon, crossing=True)
    s = bpy.context.scene.dreampolish
    s.refine_mode, s.prompt, s.mask_group = "texture", "a box", ""
    before = rt().job_id
    with pytest.raises(RuntimeError, match="face 0 crosses the edge of UDIM tile 1001"):
        bpy.ops.dreampolish.refine_selected()
    assert rt().job_id == before and obj.get("dreampolish_refine_target") is None
    assert np.isclose(obj.data.uv_layers.active.data[0].uv[0], 1.5)
