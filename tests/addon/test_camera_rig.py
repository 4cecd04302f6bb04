"""Camera rig: what is sent for known Blender cameras, checked against Blender's own camera frame."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.support.blender_env import bpy, mathutils

Euler, Matrix, Vector = mathutils.Euler, mathutils.Matrix, mathutils.Vector


def _camera(name: str, *, lens=50.0, sensor=(36.0, 24.0), fit="AUTO", shift=(0.0, 0.0),
            location=(0.0, -5.0, 1.0), rotation=(math.radians(80), 0.0, 0.0), scale=(1.0, 1.0, 1.0)):
    data = bpy.data.cameras.new(name)
    data.lens = lens
    data.sensor_width, data.sensor_height = sensor
    data.sensor_fit = fit
    data.shift_x, data.shift_y = shift
    obj = bpy.data.objects.new(name, data)
    obj.location, obj.rotation_euler, obj.scale = location, Euler(rotation), scale
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.update()
    return obj


def _set_resolution(x: int, y: int, percent: int = 100) -> None:
    r = bpy.context.scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = x, y, percent


def _blender_frame_tangents(cam_obj) -> tuple[float, float, float, float]:
    """(left, right, bottom, top) at unit distance, from Blender's camera frame for this scene."""
    corners = cam_obj.data.view_frame(scene=bpy.context.scene)
    xs = [c.x / -c.z for c in corners]
    ys = [c.y / -c.z for c in corners]
    return min(xs), max(xs), min(ys), max(ys)


@pytest.mark.parametrize(
    "lens, sensor, fit, resolution, shift, fov",
    [
        # 36 mm wide sensor fitted to the wider side of 16:9.
        (50.0, (36.0, 24.0), "AUTO", (1920, 1080), (0.0, 0.0),
         (2 * math.atan(18 / 50), 2 * math.atan(18 / 50 * 1080 / 1920))),
        # Portrait with AUTO: the sensor width maps onto the image height.
        (35.0, (36.0, 24.0), "AUTO", (800, 1200), (0.0, 0.0),
         (2 * math.atan(18 / 35 * 800 / 1200), 2 * math.atan(18 / 35))),
        # VERTICAL: the sensor height maps onto the image height.
        (35.0, (36.0, 24.0), "VERTICAL", (1000, 800), (0.0, 0.0),
         (2 * math.atan(12 / 35 * 1000 / 800), 2 * math.atan(12 / 35))),
        # HORIZONTAL on a portrait image, with lens shift.
        (85.0, (30.0, 20.0), "HORIZONTAL", (600, 900), (0.1, -0.05),
         (2 * math.atan(15 / 85), 2 * math.atan(15 / 85 * 900 / 600))),
    ],
)
def test_known_cameras_send_blenders_intrinsics_and_field_of_view(
        addon, fresh_scene, lens, sensor, fit, resolution, shift, fov):
    rig = addon.camera_rig
    _set_resolution(*resolution)
    cam = _camera("Cam", lens=lens, sensor=sensor, fit=fit, shift=shift)
    spec = rig.camera_spec(cam, bpy.context.scene)
    assert (spec.lens_mm, spec.sensor_width_mm, spec.sensor_height_mm) == pytest.approx((lens, *sensor))
    assert spec.sensor_fit == fit and spec.resolution == resolution
    assert spec.shift == pytest.approx(shift)
    np.testing.assert_allclose(spec.matrix_world, np.array(cam.matrix_world), atol=1e-6)
    if shift == (0.0, 0.0):
        assert [math.radians(a) for a in rig.field_of_view_deg(spec)] == pytest.approx(fov, rel=1e-6)
    # Blender's own camera frame (sensor fit, aspect and shift applied) is the ground truth.
    assert rig.view_tangents(spec) == pytest.approx(_blender_frame_tangents(cam), abs=1e-6)


def test_render_percentage_and_camera_scale(addon, fresh_scene):
    _set_resolution(1920, 1080, percent=50)
    cam = _camera("Scaled", scale=(2.0, 2.0, 2.0))
    spec = addon.camera_rig.camera_spec(cam, bpy.context.scene)
    assert spec.resolution == (960, 540)
    rot = spec.matrix_world[:3, :3]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-6)  # scale removed: camera-to-world is rigid
    np.testing.assert_allclose(spec.matrix_world[:3, 3], (0.0, -5.0, 1.0), atol=1e-6)


def test_rig_is_the_active_camera_then_the_collection(addon, fresh_scene):
    scene = bpy.context.scene
    active = _camera("Active")
    scene.camera = active
    extra = bpy.data.collections.new("Rig")
    scene.collection.children.link(extra)
    for name in ("B side", "A side"):
        cam = _camera(name)
        extra.objects.link(cam)
    extra.objects.link(active)  # listed once, as the reference view
    specs = addon.camera_rig.scene_rig(scene, extra)
    assert [s.name for s in specs] == ["Active", "A side", "B side"]


def test_no_camera_gives_an_orbit_looking_at_the_origin(addon, fresh_scene):
    specs = addon.camera_rig.scene_rig(bpy.context.scene, None, addon.camera_rig.OrbitSettings(views=6))
    assert len(specs) == 6
    for spec in specs:
        m = Matrix(spec.matrix_world.tolist())
        position = m.translation
        forward = (m.to_3x3() @ Vector((0, 0, -1))).normalized()
        assert position.length == pytest.approx(3.0, rel=1e-5)
        assert forward.dot(-position.normalized()) == pytest.approx(1.0, abs=1e-5)
        assert math.degrees(math.asin(position.z / position.length)) == pytest.approx(15.0, abs=1e-4)
        up = m.to_3x3() @ Vector((0, 1, 0))
        assert up.z > 0, "the orbit keeps world +Z up in the image"


def test_orthographic_camera_is_refused_with_a_clear_message(addon, fresh_scene):
    cam = _camera("Ortho")
    cam.data.type = "ORTHO"
    with pytest.raises(addon.protocol.errors.ValidationError, match="only perspective cameras"):
        addon.camera_rig.camera_spec(cam, bpy.context.scene)


def _camera_looking_away_from_the_origin(focus_distance: float):
    """A camera at (10, 0, 2) looking along +Y (the origin is behind its right shoulder)."""
    import math

    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    cam.location = (10.0, 0.0, 2.0)
    cam.rotation_euler = (math.radians(90), 0.0, 0.0)  # -Z turned to +Y
    cam.data.dof.use_dof, cam.data.dof.focus_distance = True, focus_distance  # Camera View: at the focus
    bpy.context.scene.collection.objects.link(cam)
    bpy.context.scene.camera = cam
    return cam


def test_a_generated_object_appears_where_the_camera_looks(addon, connected):
    from tests.support.blender_env import pump

    _camera_looking_away_from_the_origin(5.0)
    s = bpy.context.scene.dreampolish
    s.prompt, s.run_until = "a lantern", "nerf"
    assert bpy.ops.dreampolish.generate() == {"FINISHED"}
    rt = bpy.context.window_manager.dreampolish
    pump(addon, lambda: rt.job_state == "done", what="the job to finish")
    (obj,) = [o for o in bpy.context.scene.objects if o.get("dreampolish_job") == rt.job_id]
    # The scripted pipeline's octahedron sits at its frame's origin: the frame is at the focus point.
    np.testing.assert_allclose(np.array(obj.matrix_world.translation), (10.0, 5.0, 2.0), atol=1e-5)

    s.placement = "CURSOR"
    bpy.context.scene.cursor.location = (-3.0, 1.0, 0.5)
    assert bpy.ops.dreampolish.generate() == {"FINISHED"}
    pump(addon, lambda: rt.job_state == "done", what="the second job to finish")
    (obj,) = [o for o in bpy.context.scene.objects if o.get("dreampolish_job") == rt.job_id]
    np.testing.assert_allclose(np.array(obj.matrix_world.translation), (-3.0, 1.0, 0.5), atol=1e-5)


@pytest.mark.slow  # the real pipeline (tiny preset) through the add-on
def test_the_real_pipeline_sizes_the_object_by_the_distance_to_where_the_camera_looks(addon, connected_tiny):
    import math

    from tests.support.blender_env import pump

    cam = _camera_looking_away_from_the_origin(5.0)
    s = bpy.context.scene.dreampolish
    s.prompt, s.run_until = "a lantern", "nerf"
    assert bpy.ops.dreampolish.generate() == {"FINISHED"}
    rt = bpy.context.window_manager.dreampolish
    pump(addon, lambda: rt.job_state == "done", timeout_s=120, what="the job to finish")
    (obj,) = [o for o in bpy.context.scene.objects if o.get("dreampolish_job") == rt.job_id]
    loc, _rot, scale = obj.matrix_world.decompose()
    np.testing.assert_allclose(np.array(loc), (10.0, 5.0, 2.0), atol=1e-4)
    # backend/pipeline/frame.py: the unit frame (the cube around the radius-0.5 sphere) is scaled by 2 r,
    # r = d sin(atan(tan(fov/2) / m)), with d the reference camera's distance to the frame's origin and
    # m = ReferenceStageConfig.fill_margin (1.15); the add-on applies that scale to the mesh (scale reads 1).
    spec = addon.camera_rig.camera_spec(cam, bpy.context.scene)
    half = math.radians(min(addon.camera_rig.field_of_view_deg(spec))) / 2
    expected = 2 * 5.0 * math.sin(math.atan(math.tan(half) / 1.15))
    np.testing.assert_allclose(np.array(scale), 1.0, atol=1e-6)
    local = np.array([v.co[:] for v in obj.data.vertices])
    assert np.abs(local).max() <= expected / 2 * 1.001
    assert np.abs(local).max() >= expected / 2 * 0.25, "the mesh is not in metres"
