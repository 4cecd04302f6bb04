"""The reference source "Cameras" (issue 31): every camera of the Rig Cameras collection that has a background
image sends its picture seen from it, shown in the panel as a strip with the cameras' names; a camera that
does not look at the object, or a picture not of the render's shape, is named there before anything is sent;
and a job from two pictures on the real tiny pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.support.blender_env import bpy, mathutils, pump
from tests.support.blender_ui import Drawable

Vector = mathutils.Vector

SIDE = 64
DISTANCE = 4.0
RADIUS = 0.5


def disc_picture(name: str, w: int = SIDE, h: int = SIDE) -> bpy.types.Image:
    """A ball of RADIUS at the origin as a camera at DISTANCE looking at it sees it (50 mm lens, 36 mm sensor):
    an orange disc on transparency."""
    half_tan = 18.0 / 50.0  # AUTO fit: the sensor width spans the wider side
    radius_px = math.tan(math.asin(RADIUS / DISTANCE)) / half_tan * max(w, h) / 2
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    inside = (xs - w / 2) ** 2 + (ys - h / 2) ** 2 <= radius_px**2
    px = np.zeros((h, w, 4), np.float32)
    px[inside] = (0.9, 0.5, 0.1, 1.0)
    img = bpy.data.images.new(name, w, h, alpha=True)
    img.pixels.foreach_set(np.ascontiguousarray(px[::-1]).ravel())
    return img


def camera_at(scene, collection, name: str, position, picture: bpy.types.Image | None) -> bpy.types.Object:
    cam = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    collection.objects.link(cam)
    cam.location = position
    cam.rotation_euler = (Vector((0.0, 0.0, 0.0)) - Vector(position)).to_track_quat("-Z", "Y").to_euler()
    if picture is not None:
        cam.data.background_images.new().image = picture
    return cam


def picture_rig(scene) -> dict[str, bpy.types.Object]:
    """Front (the active camera), top and side cameras with pictures, and one without, in a collection."""
    scene.render.resolution_x = scene.render.resolution_y = SIDE
    scene.render.resolution_percentage = 100
    rig = bpy.data.collections.new("Shots")
    scene.collection.children.link(rig)
    cams = {
        "Front": camera_at(scene, rig, "Front", (0.0, -DISTANCE, 0.0), disc_picture("front.png")),
        "Top": camera_at(scene, rig, "Top", (0.0, -0.05, DISTANCE), disc_picture("top.png")),
        "Side": camera_at(scene, rig, "Side", (DISTANCE, 0.0, 0.5), disc_picture("side.png")),
        "Bare": camera_at(scene, rig, "Bare", (-DISTANCE, 0.0, 0.0), None),
    }
    scene.camera = cams["Front"]
    bpy.context.view_layer.update()  # the cameras' world matrices
    s = scene.dreampolish
    s.prompt, s.reference_source, s.camera_collection = "", "CAMERAS", rig
    return cams


def test_every_camera_with_a_picture_is_sent_the_active_one_first(addon, fresh_scene):
    picture_rig(fresh_scene)
    views = addon.reference_views.picture_cameras(fresh_scene)
    assert [cam.name for cam, _ in views] == ["Front", "Side", "Top"]  # the active camera first, then by name
    assert addon.reference_views.problems(fresh_scene) == []
    assert bpy.ops.dreampolish.generate.poll()
    placement = addon.reference_views.placement(fresh_scene)
    assert placement.length < 0.1  # where the cameras look: the origin
    spec = addon.job_request.job_spec(bpy.context, "generate", placement=placement)
    assert spec.image is None and [v.camera.name for v in spec.views] == ["Front", "Side", "Top"]
    assert spec.views[0].image.array.shape == (SIDE, SIDE, 4)
    np.testing.assert_allclose(spec.views[0].camera.matrix_world[:3, 3], np.array((0.0, -DISTANCE, 0.0)) - placement,
                               atol=1e-5)
    drawn: list[str] = []
    bpy.types.DREAMPOLISH_PT_prompt.draw(Drawable(drawn), bpy.context)
    assert all(name in drawn for name in ("Front", "Side", "Top")) and "Bare" not in drawn


def test_a_camera_looking_away_or_a_picture_of_another_shape_is_named_before_sending(addon, fresh_scene):
    cams = picture_rig(fresh_scene)
    cams["Side"].rotation_euler.z += math.pi  # now it looks away from the object
    bpy.context.view_layer.update()
    found = addon.reference_views.problems(fresh_scene)
    assert found == ["Side: does not look at the object (where the other cameras look)"]
    assert not bpy.ops.dreampolish.generate.poll()
    drawn: list[str] = []
    bpy.types.DREAMPOLISH_PT_prompt.draw(Drawable(drawn), bpy.context)
    assert found[0] in drawn
    with pytest.raises(addon.protocol.errors.ValidationError, match="Side: does not look"):
        addon.job_request.job_spec(bpy.context, "generate")

    cams["Side"].rotation_euler.z -= math.pi
    bpy.context.view_layer.update()
    cams["Top"].data.background_images[0].image = disc_picture("wide.png", w=96, h=48)
    assert addon.reference_views.problems(fresh_scene) == ["Top: its picture is 96x48, not the render's shape (64x64)"]
    fresh_scene.dreampolish.camera_collection = None
    assert addon.reference_views.problems(fresh_scene) == ["Choose the collection of cameras (Rig Cameras)"]


def _rt():
    return bpy.context.window_manager.dreampolish


@pytest.mark.slow  # the real pipeline (tiny preset) through the add-on
def test_a_job_from_the_cameras_pictures_runs_on_the_real_pipeline(addon, connected_tiny):
    picture_rig(bpy.context.scene)
    s = bpy.context.scene.dreampolish
    s.run_until = "nerf"
    assert bpy.ops.dreampolish.generate() == {"FINISHED"}
    pump(addon, lambda: _rt().job_state != "submitting", what="the backend's answer to the submit")
    assert _rt().job_id, f"the backend refused the job: {_rt().message}"
    pump(addon, lambda: _rt().job_state in ("done", "failed"), timeout_s=300, what="the pictures' job to finish")
    assert _rt().job_state == "done", _rt().failure or _rt().message
    (obj,) = [o for o in bpy.context.scene.objects if o.get("dreampolish_job") == _rt().job_id]
    assert obj["dreampolish_stage"] == "nerf"
    # The pictures' object is where their cameras look (the origin), about the ball's size.
    corners = [obj.matrix_world @ Vector(c) for c in obj.bound_box]
    centre = sum(corners, Vector()) / 8
    assert centre.length < 0.35, centre


@pytest.mark.slow
def test_pictures_that_disagree_are_refused_by_the_backend_naming_the_camera(addon, connected_tiny):
    cams = picture_rig(bpy.context.scene)
    # The add-on cannot see this one: Side's picture shows a ball twice the size of the others'.
    cams["Side"].data.background_images[0].image = disc_picture("big.png")
    big = cams["Side"].data.background_images[0].image
    px = np.zeros((SIDE, SIDE, 4), np.float32)
    ys, xs = np.mgrid[0:SIDE, 0:SIDE] + 0.5
    px[(xs - 32) ** 2 + (ys - 32) ** 2 <= 24**2] = (0.9, 0.5, 0.1, 1.0)
    big.pixels.foreach_set(px.ravel())
    assert addon.reference_views.problems(bpy.context.scene) == []
    assert bpy.ops.dreampolish.generate() == {"FINISHED"}
    pump(addon, lambda: _rt().job_state != "submitting", what="the backend's answer to the submit")
    assert not _rt().job_id or _rt().job_state == "failed"
    assert "camera 'Side'" in (_rt().message + _rt().failure), (_rt().message, _rt().failure)
    assert _rt().connection == "connected"  # the backend keeps serving
