"""Materials from received texture maps: which node holds which map, and packing into the .blend."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.blender_env import bpy, render_cycles_linear


def test_maps_are_wired_into_a_principled_bsdf_and_pack_into_the_file(addon, fresh_scene, tmp_path):
    materials = addon.materials
    normal = np.zeros((4, 8, 3), np.float32)
    normal[..., 2] = 1.0
    normal[0, :, 0] = 0.25  # top row on the wire
    np.save(tmp_path / "normal.npy", normal)
    rm = np.zeros((4, 4, 3), np.float32)
    np.save(tmp_path / "rm.npy", rm)
    images = {
        "normal": materials.load_image("normal", tmp_path / "normal.npy", "n"),
        "roughness_metallic": materials.load_image("roughness_metallic", tmp_path / "rm.npy", "rm"),
    }
    n_img = images["normal"]
    assert tuple(n_img.size) == (8, 4) and n_img.is_float
    assert n_img.colorspace_settings.name == "Non-Color"
    px = np.array(n_img.pixels[:], np.float32).reshape(4, 8, 4)
    # Stored as a Normal Map node reads it, 0.5 n + 0.5; row 0 on the wire is the top.
    assert np.allclose(px[3, :, 0], 0.625) and np.allclose(px[0, :, 0], 0.5), "row 0 on the wire is the top"

    mat = materials.textured_material("m", images)
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    nmap = bsdf.inputs["Normal"].links[0].from_node
    assert nmap.type == "NORMAL_MAP" and nmap.uv_map == "UVMap"
    assert nmap.inputs["Color"].links[0].from_node.image == n_img
    assert bsdf.inputs["Roughness"].links[0].from_socket.name == "Green"
    assert bsdf.inputs["Metallic"].links[0].from_socket.name == "Blue"
    assert not bsdf.inputs["Base Color"].links, "no base colour map was given"

    # Rebuilding replaces only the nodes this module made.
    again = materials.textured_material("m", {"normal": n_img}, mat)
    assert again == mat
    assert sum(n.type == "TEX_IMAGE" for n in mat.node_tree.nodes) == 1

    # Packed as they arrive (a float map too): Bake to Material has nothing left to pack.
    assert n_img.packed_file is not None and images["roughness_metallic"].packed_file is not None
    assert materials.bake_images(materials.material_images(mat)) == 0


def test_bake_can_save_textures_beside_the_blend_file(addon, fresh_scene, tmp_path):
    png = tmp_path / "cache" / "base.png"
    png.parent.mkdir()
    img = bpy.data.images.new("src", 2, 2)
    img.filepath_raw = str(png)
    img.file_format = "PNG"
    img.save()
    bpy.data.images.remove(img)
    base = addon.materials.load_image("base_color", png, "Teapot base_color")
    mat = addon.materials.textured_material("Teapot", {"base_color": base})
    bpy.ops.mesh.primitive_cube_add()
    addon.materials.assign_material(bpy.context.active_object, mat)
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))

    assert bpy.ops.dreampolish.bake_to_material(save_beside=True) == {"FINISHED"}
    saved = tmp_path / "textures" / "Teapot_base_color.png"
    assert saved.is_file()
    assert base.filepath == "//textures/Teapot_base_color.png" and base.packed_file is None


def _render_plane_brightness(addon, tmp_path, normal: np.ndarray | None) -> float:
    """Mean linear brightness of a white diffuse plane under a sun straight above it, seen from above,
    with a (4, 4) tangent-space normal map of the constant vector `normal` (None: no normal map)."""
    import math

    bpy.ops.mesh.primitive_plane_add(size=2.0)
    plane = bpy.context.active_object
    images = {}
    if normal is not None:
        np.save(tmp_path / "n.npy", np.tile(np.asarray(normal, np.float32), (4, 4, 1)))
        images["normal"] = addon.materials.load_image("normal", tmp_path / "n.npy", "n")
    mat = addon.materials.textured_material("plane", images)
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Base Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    bsdf.inputs["Roughness"].default_value = 1.0
    bsdf.inputs["Specular IOR Level"].default_value = 0.0  # diffuse only: brightness = albedo * cos
    addon.materials.assign_material(plane, mat)
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.data.energy, sun.data.angle = 1.0, 0.0  # a point-like sun shining down -Z
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    cam.location = (0.0, 0.0, 4.0)
    cam.data.lens = 80.0
    px = render_cycles_linear(tmp_path / f"render-{len(list(tmp_path.iterdir()))}.exr", sun, cam, 16, 4)
    for obj in (plane, sun, cam):
        bpy.data.objects.remove(obj)
    assert math.isfinite(px.mean())
    return float(px[4:12, 4:12, :3].mean())


def test_a_flat_normal_map_shades_like_none_and_a_tilt_like_its_angle(addon, fresh_scene, tmp_path):
    import math

    plain = _render_plane_brightness(addon, tmp_path, None)
    assert plain > 0.05, "the sun should light the plane"
    flat = _render_plane_brightness(addon, tmp_path, [0.0, 0.0, 1.0])
    assert flat == pytest.approx(plain, rel=0.02), "a flat normal map must not change the shading"
    # Tilted by 60 degrees towards the tangent: the sun overhead then gives cos 60 = 0.5 of the light.
    t = math.radians(60.0)
    tilted = _render_plane_brightness(addon, tmp_path, [math.sin(t), 0.0, math.cos(t)])
    assert tilted / plain == pytest.approx(0.5, abs=0.03)
