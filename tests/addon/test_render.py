"""A received, baked object renders with its texture in Cycles (CPU), even from a reopened .blend
whose texture cache is gone."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from tests.support.blender_env import bpy, pump


def _render(path: Path) -> np.ndarray:
    """Render the scene's camera to `path` and return its RGBA pixels (float, rows bottom up)."""
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 8
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = 48
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    scene.view_settings.view_transform = "Standard"  # the default (AgX, Filmic) differs across Blender versions
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    img = bpy.data.images.load(str(path), check_existing=False)
    px = np.array(img.pixels[:], dtype=np.float32).reshape(48, 48, 4)
    bpy.data.images.remove(img)
    return px


def _light_and_camera() -> None:
    scene = bpy.context.scene
    world = bpy.data.worlds.new("White")
    world.color = (1.0, 1.0, 1.0)  # uniform white light: the surface shows its albedo
    scene.world = world
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    cam.location = (0.0, -6.0, 0.0)
    cam.rotation_euler = (math.radians(90), 0.0, 0.0)
    scene.collection.objects.link(cam)
    scene.camera = cam


def _object_colour(px: np.ndarray) -> np.ndarray:
    covered = px[..., 3] > 0.9
    assert covered.sum() > 100, "the object should cover the middle of the image"
    return px[covered][:, :3].mean(axis=0)


def test_baked_object_renders_with_its_texture_after_reopening(addon, connected, tmp_path):
    _light_and_camera()
    s = bpy.context.scene.dreampolish
    s.prompt = "a red octahedron"
    bpy.ops.dreampolish.generate()
    rt = bpy.context.window_manager.dreampolish
    pump(addon, lambda: rt.job_state == "done", what="the job to finish")
    job_id = rt.job_id
    obj = next(o for o in bpy.context.scene.objects if o.get("dreampolish_job") == job_id)
    bpy.context.view_layer.objects.active = obj
    assert bpy.ops.dreampolish.bake_to_material() == {"FINISHED"}

    r, g, b = _object_colour(_render(tmp_path / "received.png"))
    # The texture is (200, 60, 30) in sRGB; Blender's default material would be grey (r = g = b).
    assert r > 2.0 * g and r > 3.0 * b, (r, g, b)

    blend = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    shutil.rmtree(addon.job_follow.job_cache().job_dir(job_id))
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    r2, g2, b2 = _object_colour(_render(tmp_path / "reopened.png"))
    np.testing.assert_allclose((r2, g2, b2), (r, g, b), atol=0.02)


def test_unbaked_default_material_is_grey(addon, fresh_scene, tmp_path):
    """The check above can fail: the same view of a plain object is not red."""
    _light_and_camera()
    bpy.ops.mesh.primitive_ico_sphere_add(radius=1.0)
    r, g, b = _object_colour(_render(tmp_path / "plain.png"))
    assert abs(r - g) < 0.05 and abs(g - b) < 0.05, (r, g, b)
