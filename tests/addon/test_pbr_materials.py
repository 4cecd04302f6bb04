"""PBR maps in Blender: wired as Blender's own glTF importer wires them, and lit as a PBR material is."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.support.blender_env import bpy, render_cycles_linear

ROLES = ("base_color", "normal", "roughness_metallic")


def _png(tmp_path: Path, name: str, rgb: np.ndarray) -> Path:
    img = bpy.data.images.new(name, rgb.shape[1], rgb.shape[0])
    rgba = np.ones((*rgb.shape[:2], 4), np.float32)
    rgba[..., :3] = rgb[::-1]  # Blender's rows start at the bottom
    img.pixels.foreach_set(rgba.ravel())
    path = tmp_path / f"{name}.png"
    img.filepath_raw, img.file_format = str(path), "PNG"
    img.save()
    bpy.data.images.remove(img)
    return path


def _maps(tmp_path: Path) -> dict[str, Path]:
    base = np.tile(np.array([0.8, 0.3, 0.2], np.float32), (8, 8, 1))
    normal = np.tile(np.array([0.5, 0.5, 1.0], np.float32), (8, 8, 1))
    rm = np.tile(np.array([1.0, 0.4, 0.9], np.float32), (8, 8, 1))
    return {"base_color": _png(tmp_path, "base", base), "normal": _png(tmp_path, "normal", normal),
            "roughness_metallic": _png(tmp_path, "rm", rm)}


def _chain(bsdf, socket: str) -> tuple[list[str], str | None, str | None]:
    """(node types from the BSDF input back to the image, the output socket the BSDF reads, the image's
    colour space) for one Principled BSDF input."""
    types, link = [], bsdf.inputs[socket].links
    read = link[0].from_socket.name if link else None
    while link:
        node = link[0].from_node
        types.append(node.type)
        if node.type == "TEX_IMAGE":
            return types, read, node.image.colorspace_settings.name
        inputs = [i for i in node.inputs if i.links and i.name in ("Color", "Image", "Vector", "A")]
        link = inputs[0].links if inputs else None
    return types, read, None


def _wiring(mat) -> dict[str, tuple]:
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    return {s: _chain(bsdf, s) for s in ("Base Color", "Roughness", "Metallic", "Normal")}


def test_maps_are_wired_as_blenders_gltf_importer_wires_the_same_glb(addon, fresh_scene, tmp_path):
    """The GLB the backend writes, imported by Blender's glTF importer, and the add-on's material from the
    same maps: each Principled input reads the same channel of the same kind of chain, with the same
    colour space (sRGB base colour, Non-Color data for the normal and metallic-roughness maps)."""
    import importlib

    scene = importlib.import_module(addon.__name__ + ".protocol.scene")
    gltf = importlib.import_module(addon.__name__ + ".protocol.gltf")
    files = _maps(tmp_path)
    uvs = np.array([[[0, 0], [1, 0], [1, 1]], [[0, 0], [1, 1], [0, 1]]], np.float32)
    mesh = scene.MeshPayload(
        vertices=np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], np.float32),
        faces=np.array([[0, 1, 2], [0, 2, 3]], np.uint32), uvs=uvs,
        textures=[scene.TexturePayload(role=r, png=files[r].read_bytes()) for r in ROLES])
    glb = tmp_path / "job.glb"
    glb.write_bytes(gltf.mesh_to_glb(mesh))
    bpy.ops.preferences.addon_enable(module="io_scene_gltf2")
    assert bpy.ops.import_scene.gltf(filepath=str(glb)) == {"FINISHED"}
    imported = next(o for o in bpy.context.scene.objects if o.type == "MESH").active_material
    theirs = _wiring(imported)

    images = {r: addon.materials.load_image(r, files[r], r) for r in ROLES}
    ours = _wiring(addon.materials.textured_material("ours", images))
    assert theirs["Base Color"] == (["TEX_IMAGE"], "Color", "sRGB")
    assert theirs["Roughness"] == (["SEPARATE_COLOR", "TEX_IMAGE"], "Green", "Non-Color")
    assert theirs["Metallic"] == (["SEPARATE_COLOR", "TEX_IMAGE"], "Blue", "Non-Color")
    assert theirs["Normal"] == (["NORMAL_MAP", "TEX_IMAGE"], "Normal", "Non-Color")
    assert ours == theirs
    nmap = next(n for n in bpy.data.materials["ours"].node_tree.nodes if n.type == "NORMAL_MAP")
    assert nmap.space == "TANGENT" and nmap.uv_map == "UVMap"


def _render_halves(addon, tmp_path: Path, sun_tilt_deg: float) -> tuple[float, float]:
    """Mean linear brightness of the left (smooth metal) and right (rough dielectric) halves of a grey plane
    carrying a metallic-roughness map, seen from straight above, under a sun tilted `sun_tilt_deg` from
    overhead (about the Y axis)."""
    rm = np.ones((8, 8, 3), np.float32)
    rm[:, :4, 1], rm[:, :4, 2] = 0.25, 1.0  # left: roughness 0.25, metallic 1
    rm[:, 4:, 1], rm[:, 4:, 2] = 1.0, 0.0  # right: roughness 1, dielectric
    base = np.full((8, 8, 3), 0.8, np.float32)
    name = f"{sun_tilt_deg:g}"
    images = {"base_color": addon.materials.load_image("base_color", _png(tmp_path, f"b{name}", base), "b"),
              "roughness_metallic": addon.materials.load_image("roughness_metallic",
                                                               _png(tmp_path, f"rm{name}", rm), "rm")}
    bpy.ops.mesh.primitive_plane_add(size=2.0)
    plane = bpy.context.active_object
    addon.materials.assign_material(plane, addon.materials.textured_material("pbr", images))
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.data.energy, sun.data.angle = 3.0, math.radians(8.0)
    sun.rotation_euler = (0.0, math.radians(sun_tilt_deg), 0.0)
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    cam.location, cam.data.lens = (0.0, 0.0, 6.0), 120.0
    px = render_cycles_linear(tmp_path / f"render-{name}.exr", sun, cam, 24, 16)
    for obj in (plane, sun, cam):
        bpy.data.objects.remove(obj)
    return float(px[6:18, 2:10, :3].mean()), float(px[6:18, 14:22, :3].mean())


def test_cycles_lights_the_maps_as_a_pbr_material_not_as_baked_shading(addon, fresh_scene, tmp_path):
    """Sun overhead, then tilted 50 degrees: the rough dielectric half dims as cos 50 (Lambert), while the
    smooth metal's mirror highlight leaves the camera and it goes almost dark. Baked-in shading on a plain
    diffuse material would dim both halves by the same factor."""
    metal_over, rough_over = _render_halves(addon, tmp_path, 0.0)
    metal_tilt, rough_tilt = _render_halves(addon, tmp_path, 50.0)
    print("metal", metal_over, metal_tilt, "rough", rough_over, rough_tilt)
    assert rough_over > 0.05 and metal_over > 0.05
    assert rough_tilt / rough_over == pytest.approx(math.cos(math.radians(50.0)), rel=0.1)
    assert metal_tilt / metal_over < 0.15
    assert metal_over > 2.0 * rough_over, "the smooth metal should mirror the overhead sun into the camera"


@pytest.mark.slow  # the real pipeline (tiny preset) through the add-on
def test_a_tiny_job_arrives_with_every_map_wired_with_its_colour_space(addon, connected_tiny):
    """The real pipeline (tiny preset): the final object's material holds the base colour (sRGB), the
    metallic-roughness map (Non-Color, G and B) and the normal map (Non-Color, through a Normal Map node)."""
    from tests.support.addon_jobs import generate, job_objects, rt
    from tests.support.blender_env import pump

    job_id = generate(addon)
    pump(addon, lambda: rt().job_state == "done", timeout_s=300, what="the job to finish")
    (obj,) = job_objects(job_id)
    wiring = _wiring(obj.active_material)
    assert wiring["Base Color"] == (["TEX_IMAGE"], "Color", "sRGB")
    assert wiring["Roughness"] == (["SEPARATE_COLOR", "TEX_IMAGE"], "Green", "Non-Color")
    assert wiring["Metallic"] == (["SEPARATE_COLOR", "TEX_IMAGE"], "Blue", "Non-Color")
    assert wiring["Normal"] == (["NORMAL_MAP", "TEX_IMAGE"], "Normal", "Non-Color")
