"""Where Generate puts a new object, and whether it matches what its reference shows (issue 33 items 1, 5).

The scene is an artist's ordinary one: a floor, a camera 8 m away at 28° elevation, 50 mm, 1920 × 1080.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import bpy
import numpy as np
import pytest
from mathutils import Vector

from tests.support.blender_env import pump

HULL_PIPELINE = "tests.support.hull_pipeline:ReferenceHullPipeline"


def _ordinary_scene(percent: int = 100) -> bpy.types.Object:
    """A 40 m floor at z = 0 and the active camera looking at the origin from 8 m at 28° elevation."""
    scene = bpy.context.scene
    floor = bpy.data.objects.new("Floor", bpy.data.meshes.new("Floor"))
    floor.data.from_pydata([(-20, -20, 0), (20, -20, 0), (20, 20, 0), (-20, 20, 0)], [], [(0, 1, 2, 3)])
    scene.collection.objects.link(floor)
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    el = math.radians(28.0)
    cam.location = (0.0, -8.0 * math.cos(el), 8.0 * math.sin(el))
    cam.rotation_euler = (math.pi / 2 - el, 0.0, 0.0)  # looking along +Y, tilted down by 28°
    cam.data.lens = 50.0
    scene.collection.objects.link(cam)
    scene.camera = cam
    scene.render.resolution_x, scene.render.resolution_y = 1920, 1080
    scene.render.resolution_percentage = percent
    bpy.context.view_layer.update()
    return cam


def _generated_object(rt) -> bpy.types.Object:
    (obj,) = [o for o in bpy.context.scene.objects if o.get("dreampolish_job") == rt.job_id]
    return obj


def _generate(addon, timeout_s: float = 30.0) -> bpy.types.Object:
    rt = bpy.context.window_manager.dreampolish
    assert bpy.ops.dreampolish.generate() == {"FINISHED"}
    pump(addon, lambda: rt.job_state in ("done", "failed"), timeout_s=timeout_s, what="the job to finish")
    assert rt.job_state == "done", rt.message
    return _generated_object(rt)


# --- item 5: Camera View placement ---------------------------------------------------------------------


def test_camera_view_places_where_the_view_centre_meets_the_floor_not_at_the_untouched_focus_distance(
        addon, connected):
    cam = _ordinary_scene()
    assert not cam.data.dof.use_dof and cam.data.dof.focus_distance == 10.0  # Blender's untouched defaults
    s = bpy.context.scene.dreampolish
    s.prompt, s.run_until, s.rest_on_surface = "a mug", "nerf", False
    obj = _generate(addon)
    # The view axis meets the floor at the origin (the camera looks at it); 10 m down the axis is 0.9 m
    # under the floor.
    np.testing.assert_allclose(np.array(obj.matrix_world.translation), (0.0, 0.0, 0.0), atol=1e-4)


def test_rest_on_surface_stands_the_object_on_the_floor_at_its_size(addon, connected):
    _ordinary_scene()
    s = bpy.context.scene.dreampolish
    s.prompt, s.run_until = "a mug", "nerf"
    assert s.rest_on_surface  # on by default
    s.size_mode, s.object_size = "SET", 0.3
    obj = _generate(addon)
    # The object's sphere (0.3 m across) touches the floor from above: its centre 0.15 m over the hit point.
    np.testing.assert_allclose(np.array(obj.matrix_world.translation), (0.0, 0.0, 0.15), atol=1e-4)


def test_depth_of_field_focus_is_used_when_it_is_on(addon, connected):
    cam = _ordinary_scene()
    cam.data.dof.use_dof, cam.data.dof.focus_distance = True, 5.0
    s = bpy.context.scene.dreampolish
    s.prompt, s.run_until, s.rest_on_surface = "a mug", "nerf", False
    obj = _generate(addon)
    expected = cam.matrix_world.translation + cam.matrix_world.to_quaternion() @ Vector((0, 0, -5.0))
    np.testing.assert_allclose(np.array(obj.matrix_world.translation), np.array(expected), atol=1e-4)
    target = bpy.data.objects.new("Target", None)
    target.location = (1.0, 2.0, 0.5)
    bpy.context.scene.collection.objects.link(target)
    cam.data.dof.focus_object = target
    obj = _generate(addon)
    np.testing.assert_allclose(np.array(obj.matrix_world.translation), (1.0, 2.0, 0.5), atol=1e-4)


def test_the_size_sent_is_the_artists_or_the_one_that_fills_the_view(addon, fresh_scene):
    cam = _ordinary_scene()
    s = bpy.context.scene.dreampolish
    s.prompt, s.rest_on_surface = "a mug", False
    point = addon.camera_rig.placement_point(bpy.context.scene, "CAMERA")
    spec = addon.job_request.job_spec(bpy.context, "generate", placement=point)
    # Fill the View: 2 d sin(atan(tan(fov/2) / 1.15)), fov the vertical 22.9° of 50 mm at 16:9, d = 8 m.
    half = math.atan(18.0 * 1080 / 1920 / 50.0)
    assert spec.options["reference.object_size"] == pytest.approx(
        2 * 8.0 * math.sin(math.atan(math.tan(half) / 1.15)), rel=1e-4)
    assert (cam.matrix_world.translation - point).length == pytest.approx(8.0, rel=1e-4)
    s.size_mode, s.object_size = "SET", 0.12
    spec = addon.job_request.job_spec(bpy.context, "generate", placement=point)
    assert spec.options["reference.object_size"] == pytest.approx(0.12)


# --- item 1: Place At = 3D Cursor off the camera's axis --------------------------------------------------


@pytest.fixture(scope="module")
def hull_backend_address():
    from tests.support.blender_env import backend_process

    with backend_process(pipeline=HULL_PIPELINE) as address:
        yield address


@pytest.fixture
def connected_hull(addon, fresh_scene, hull_backend_address) -> str:
    from tests.support.blender_env import connect_when_up

    prefs = bpy.context.preferences.addons[addon.__name__].preferences
    prefs.backend_address, prefs.timeout_s = hull_backend_address, 5.0
    connect_when_up()
    return hull_backend_address


def _ball_picture() -> bpy.types.Image:
    """An artist's picture: a disc on a transparent background."""
    n = 96
    img = bpy.data.images.new("ball", n, n, alpha=True)
    y, x = np.mgrid[0:n, 0:n]
    inside = ((x - n / 2 + 0.5) ** 2 + (y - n / 2 + 0.5) ** 2) < (0.4 * n) ** 2
    rgba = np.zeros((n, n, 4), np.float32)
    rgba[inside] = (0.8, 0.3, 0.2, 1.0)
    img.pixels.foreach_set(rgba.ravel())
    img.pack()
    return img


def _alpha(img: bpy.types.Image) -> np.ndarray:
    w, h = img.size
    px = np.empty(w * h * 4, np.float32)
    img.pixels.foreach_get(px)
    return px.reshape(h, w, 4)[..., 3]


def _silhouette_from_the_scene_camera(obj: bpy.types.Object) -> np.ndarray:
    """Cycles' alpha of the object alone (the floor hidden from the render), at the scene's render size."""
    scene = bpy.context.scene
    for other in scene.objects:
        other.hide_render = other is not obj and other.type == "MESH"
    scene.render.engine = "CYCLES"
    scene.cycles.device, scene.cycles.samples = "CPU", 4
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    out = Path(tempfile.mkdtemp(prefix="dreampolish-silhouette-")) / "silhouette.png"
    scene.render.filepath = str(out)
    bpy.ops.render.render(write_still=True)
    return _alpha(bpy.data.images.load(str(out)))


@pytest.mark.slow  # a backend of its own, and a Cycles render
def test_an_object_placed_at_the_cursor_off_the_cameras_axis_matches_its_reference(addon, connected_hull):
    from bpy_extras.object_utils import world_to_camera_view

    cam = _ordinary_scene(percent=20)  # renders at 384 x 216
    scene = bpy.context.scene
    scene.cursor.location = (1.6, 1.2, 0.0)  # on the floor, well off the camera's axis
    view = world_to_camera_view(scene, cam, scene.cursor.location)
    assert abs(view.x - 0.5) > 0.2  # a third of the frame's width from its centre
    s = scene.dreampolish
    s.prompt, s.run_until, s.placement = "a ball", "nerf", "CURSOR"
    s.reference_source, s.reference_image = "IMAGE", _ball_picture()
    s.size_mode, s.object_size = "SET", 1.0
    s.overrides = "reference.size=384"  # the reference at the render's size: the IoU counts its pixels
    obj = _generate(addon)
    rt = bpy.context.window_manager.dreampolish

    reference = _alpha(rt.preview) > 0.5  # the reference view as the panel shows it
    silhouette = _silhouette_from_the_scene_camera(obj) > 0.5
    assert reference.shape == silhouette.shape == (216, 384)
    iou = float((reference & silhouette).sum() / max((reference | silhouette).sum(), 1))
    assert iou >= 0.9, f"silhouette IoU against the reference {iou:.3f}"
    vertices = np.array([obj.matrix_world @ v.co for v in obj.data.vertices])
    assert vertices[:, 2].min() >= -1e-4, "part of the object is under the floor"
    assert vertices[:, 2].min() <= 0.05, "the object floats above the floor"
    assert max(obj.dimensions) == pytest.approx(1.0, rel=0.1)  # the artist's size


@pytest.mark.slow  # a backend of its own
def test_a_generated_objects_scale_reads_1_and_its_size_is_the_artists(addon, connected_hull):
    _ordinary_scene(percent=20)
    s = bpy.context.scene.dreampolish
    s.prompt, s.run_until, s.placement = "a ball", "nerf", "CAMERA"
    s.reference_source, s.reference_image = "IMAGE", _ball_picture()
    s.size_mode, s.object_size = "SET", 0.4
    obj = _generate(addon)
    np.testing.assert_allclose(np.array(obj.scale), 1.0, atol=1e-6)
    assert max(obj.dimensions) == pytest.approx(0.4, rel=0.1)
    vertices = np.array([obj.matrix_world @ v.co for v in obj.data.vertices])
    assert vertices[:, 2].min() >= -1e-4, "part of the object is under the floor"
