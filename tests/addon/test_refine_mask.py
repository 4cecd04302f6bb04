"""Refine Selected on a vertex group (a masked refine) through the panel, against the real pipeline at the tiny
preset: only the group and its border change; each bad mask is refused before anything is sent, the object
untouched."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from tests.support.addon_jobs import rt
from tests.support.blender_box import base_color_image, image_texels, textured_box
from tests.support.blender_env import bpy, pump
from tests.support.masked_mesh import half_regions

pytestmark = pytest.mark.slow


def _repaint_half_blue(addon) -> None:
    """Refine Selected, Texture Only, masked by the vertex group "Half" with "a blue box", until it ends."""
    s = bpy.context.scene.dreampolish
    s.refine_mode, s.prompt, s.texture_faces = "texture", "a box", "ACTIVE_SLOT"
    s.mask_group, s.mask_feather, s.mask_prompt = "Half", 0.1, "a blue box"
    assert bpy.ops.dreampolish.refine_selected() == {"FINISHED"}
    pump(addon, lambda: rt().job_state in ("done", "failed"), timeout_s=180, what="the masked texture job")
    assert rt().job_state == "done", rt().message


def test_a_masked_texture_refine_repaints_only_the_vertex_group(addon, connected_tiny):
    obj, _ = textured_box(addon)
    sent = addon.mesh_io.payload_from_object(obj, bpy.context.evaluated_depsgraph_get())
    kept = half_regions(sent.vertices, sent.faces, sent.uvs, 0.0, 0.1)  # from the mesh as the add-on sends it
    before = image_texels(base_color_image(obj))
    _repaint_half_blue(addon)
    after = image_texels(base_color_image(obj))
    assert after.shape == before.shape
    np.testing.assert_array_equal(after[kept.kept_texels], before[kept.kept_texels])
    assert (after != before).any(-1)[kept.masked_texels].mean() > 0.9
    assert len(obj.data.vertices) == len(sent.vertices)


def _float_texels(image) -> np.ndarray:
    w, h = image.size
    px = np.empty(w * h * 4, np.float32)
    image.pixels.foreach_get(px)
    return px.reshape(h, w, 4)[::-1]


def test_a_16_bit_image_keeps_every_texel_outside_the_group(addon, connected_tiny, tmp_path):
    obj, _ = textured_box(addon)
    sent = addon.mesh_io.payload_from_object(obj, bpy.context.evaluated_depsgraph_get())
    kept = half_regions(sent.vertices, sent.faces, sent.uvs, 0.0, 0.1)
    # the box's colours as a 16-bit PNG file, its low bytes noise of their own, loaded and packed as an artist's
    # image is; on the Image Texture that feeds Base Color
    rgb8 = image_texels(base_color_image(obj)).astype(np.uint16)
    samples = rgb8 * 257 + np.random.default_rng(8).integers(0, 250, rgb8.shape).astype(np.uint16)
    path = tmp_path / "paint16.png"
    path.write_bytes(addon.protocol.gltf.png_file(samples))
    image = bpy.data.images.load(str(path))
    image.pack()
    bsdf = next(n for n in obj.active_material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Base Color"].links[0].from_node.image = image
    before = _float_texels(image)
    _repaint_half_blue(addon)
    result = base_color_image(obj)
    assert result != image and result.is_float, "a 16-bit image comes back as one"
    after = _float_texels(result)
    # Blender turns each 16-bit sample into the same float: equal floats are equal samples
    np.testing.assert_array_equal(after[kept.kept_texels], before[kept.kept_texels])
    assert (after != before).any(-1)[kept.masked_texels].mean() > 0.9


def _png_file_samples(png: bytes) -> np.ndarray:
    """The samples of a 16-bit RGB PNG whose rows all use the Up filter (protocol/gltf.py's png_file)."""
    width, height, depth, colour = struct.unpack(">IIBB", png[16:26])
    assert (depth, colour) == (16, 2)
    idat, pos = b"", 8
    while pos < len(png):
        (length,), kind = struct.unpack(">I", png[pos:pos + 4]), png[pos + 4:pos + 8]
        idat += png[pos + 8:pos + 8 + length] if kind == b"IDAT" else b""
        pos += 12 + length
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * 6)
    assert (rows[:, 0] == 2).all()
    raw = np.cumsum(rows[:, 1:], axis=0, dtype=np.uint8)  # Up: each byte plus the byte above, modulo 256
    return raw.view(">u2").astype(np.uint16).reshape(height, width, 3)


def test_a_16_bit_image_goes_as_its_file_or_painted_as_16_bit_srgb(addon, fresh_scene, tmp_path):
    samples = np.random.default_rng(9).integers(0, 65536, (32, 48, 3)).astype(np.uint16)
    path = tmp_path / "paint16.png"
    path.write_bytes(addon.protocol.gltf.png_file(samples))
    image = bpy.data.images.load(str(path))
    assert addon.refine_mask.image_texture(image).png == path.read_bytes(), "the file itself, every bit"
    image.pack()
    assert addon.refine_mask.image_texture(image).png == path.read_bytes(), "packed, the same bytes"
    image.pixels[0] = image.pixels[0]  # painted in Blender: its pixels are floats now, not the file's samples
    assert image.is_dirty
    sent = _png_file_samples(addon.refine_mask.image_texture(image).png)
    # Blender's scene-linear floats encoded back to sRGB: within one 16-bit step of the file (Blender's own
    # sRGB curve is not exactly IEC 61966-2-1's inverse), where the add-on sent linear values at 8 bits before
    assert np.abs(sent.astype(int) - samples).max() <= 1


@pytest.mark.parametrize(("setup", "says"), [
    ("empty group", "names no vertex with a weight above 0"),
    ("gone group", "has no vertex group 'Gone'"),
    ("wide border", "is wider than the object"),
    ("no image", "give its material an Image Texture on Base Color"),
])
def test_a_bad_mask_is_refused_in_the_panel_and_changes_nothing(addon, connected_tiny, setup, says):
    obj, _ = textured_box(addon)
    s = bpy.context.scene.dreampolish
    s.refine_mode, s.prompt, s.mask_group, s.mask_feather = "texture", "a box", "Half", 0.0
    if setup == "empty group":
        s.mask_group = "Nothing"
    elif setup == "gone group":
        s.mask_group = "Gone"
    elif setup == "wide border":
        s.mask_feather = 5.0
    else:
        obj.data.materials.clear()
    vertices = np.array([v.co[:] for v in obj.data.vertices])
    groups = [g.name for g in obj.vertex_groups]
    jobs_before = rt().job_id
    with pytest.raises(RuntimeError, match=says):
        bpy.ops.dreampolish.refine_selected()
    assert rt().job_id == jobs_before and rt().job_state != "submitting", "nothing was sent"
    np.testing.assert_array_equal(np.array([v.co[:] for v in obj.data.vertices]), vertices)
    assert [g.name for g in obj.vertex_groups] == groups and obj.get("dreampolish_refine_target") is None


def test_a_masked_geometry_refine_moves_only_the_group_and_takes_the_objects_place(addon, connected_tiny):
    obj, regions = textured_box(addon)
    before = np.array([v.co[:] for v in obj.data.vertices], np.float32)
    s = bpy.context.scene.dreampolish
    s.refine_mode, s.prompt, s.mask_group, s.mask_feather = "geometry", "a box", "Half", 0.1
    assert bpy.ops.dreampolish.refine_selected() == {"FINISHED"}
    pump(addon, lambda: rt().job_state in ("done", "failed"), timeout_s=180, what="the masked geometry job")
    assert rt().job_state == "done", rt().message
    assert addon.job_follow.job_cache().load_record(rt().job_id).plan == ["polish", "texture"]
    result = bpy.context.view_layer.objects.active
    after = np.array([v.co[:] for v in result.data.vertices], np.float32)
    assert after.shape == before.shape, "the object's own topology: no re-meshing"
    np.testing.assert_array_equal(after[regions.kept_vertices], before[regions.kept_vertices])
    assert (np.abs(after - before).max(1) > 0)[regions.weights > 0].mean() > 0.9
    # the object's own texture came along: outside the mask and its border its texels are the input's
    sent_texels = image_texels(bpy.data.images["Paint"])
    ours = next(m for m in result.data.materials if m is not None and m.get("dreampolish_job") == rt().job_id)
    bsdf = next(n for n in ours.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    got = image_texels(bsdf.inputs["Base Color"].links[0].from_node.image)
    np.testing.assert_array_equal(got[regions.kept_texels], sent_texels[regions.kept_texels])


def test_a_mask_needs_a_mesh_selected(addon, connected_tiny):
    bpy.ops.object.empty_add()
    s = bpy.context.scene.dreampolish
    s.refine_mode, s.prompt, s.mask_group = "texture", "a box", "Half"
    assert not bpy.ops.dreampolish.refine_selected.poll()
    with pytest.raises(RuntimeError, match="is a empty, not a mesh"):
        bpy.ops.dreampolish.refine_selected()
