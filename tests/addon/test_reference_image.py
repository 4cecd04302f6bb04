"""The reference image in the add-on: read from an image data-block or the active camera's background image,
shown in the panel, sent with the active camera as its view; and a job from it on the real tiny pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.blender_env import bpy, pump
from tests.support.blender_ui import Drawable

ARTIST_COLOUR = (0.8, 0.2, 0.1)


def artist_image(name: str = "concept", w: int = 96, h: int = 64) -> bpy.types.Image:
    """An 8-bit RGBA image data-block: a red-orange block in the upper right quarter, transparent around it."""
    img = bpy.data.images.new(name, w, h, alpha=True)
    px = np.zeros((h, w, 4), np.float32)
    px[4:28, 56:90] = (*ARTIST_COLOUR, 1.0)  # rows counted from the top
    img.pixels.foreach_set(np.ascontiguousarray(px[::-1]).ravel())  # Blender stores the bottom row first
    return img


def _camera(scene) -> bpy.types.Object:
    cam = bpy.data.objects.new("Shot", bpy.data.cameras.new("Shot"))
    scene.collection.objects.link(cam)
    cam.location = (0.0, -6.0, 1.0)
    cam.rotation_euler = (1.4, 0.0, 0.0)
    scene.camera = cam
    return cam


def test_an_image_data_block_becomes_the_request_image_top_row_first(addon, fresh_scene):
    img = artist_image()
    payload = addon.reference_image.reference_payload(img, addon.job_request.backend_limits())
    a = payload.array
    assert a.dtype == np.uint8 and a.shape == (64, 96, 4)
    assert tuple(a[10, 70]) == (204, 51, 26, 255) and a[60, 10, 3] == 0  # the block is at the top


def test_a_float_image_is_sent_in_srgb_and_a_huge_one_is_reduced(addon, fresh_scene):
    img = bpy.data.images.new("linear", 32, 32, float_buffer=True)
    img.pixels.foreach_set(np.full(32 * 32 * 4, 0.2140, np.float32))  # linear 0.214 = sRGB 0.5
    a = addon.reference_image.reference_payload(img, addon.job_request.backend_limits()).array
    assert abs(int(a[0, 0, 0]) - 128) <= 1
    assert addon.reference_image.box_reduce(np.zeros((9000, 300, 4)), 4096).shape == (3000, 100, 4)
    tiny = bpy.data.images.new("speck", 4, 4)
    with pytest.raises(addon.protocol.errors.ValidationError, match="at least 16"):
        addon.reference_image.reference_payload(tiny, addon.job_request.backend_limits())


def test_generate_needs_a_prompt_or_an_image_and_the_camera_background_is_one(addon, fresh_scene):
    s = fresh_scene.dreampolish
    s.prompt = ""
    assert not bpy.ops.dreampolish.generate.poll()
    s.reference_source = "IMAGE"
    assert not bpy.ops.dreampolish.generate.poll()  # no image chosen yet
    s.reference_image = artist_image()
    assert bpy.ops.dreampolish.generate.poll()
    s.reference_source = "CAMERA_BACKGROUND"
    cam = _camera(fresh_scene)
    assert addon.reference_image.chosen_image(fresh_scene) is None
    bg = cam.data.background_images.new()
    bg.image = artist_image("plate")
    assert addon.reference_image.chosen_image(fresh_scene).name == "plate"
    assert bpy.ops.dreampolish.generate.poll()
    spec = addon.job_request.job_spec(bpy.context, "generate")
    assert spec.image is not None and spec.prompt == "" and spec.cameras[0].name == "Shot"
    assert spec.reference_camera == 0


def test_the_panel_shows_the_reference_image_and_its_camera(addon, fresh_scene, tmp_path):
    path = tmp_path / "concept.png"
    img = artist_image()
    img.filepath_raw, img.file_format = str(path), "PNG"
    img.save()
    _camera(fresh_scene)
    assert bpy.ops.dreampolish.open_reference_image(filepath=str(path)) == {"FINISHED"}
    s = fresh_scene.dreampolish
    assert s.reference_source == "IMAGE" and s.reference_image.filepath == str(path)
    drawn: list[str] = []
    bpy.types.DREAMPOLISH_PT_prompt.draw(Drawable(drawn), bpy.context)
    assert "Seen from Shot" in drawn and "dreampolish.open_reference_image" in drawn


def _rt():
    return bpy.context.window_manager.dreampolish


@pytest.mark.slow  # the real pipeline (tiny preset) through the add-on
def test_an_image_job_runs_on_the_real_pipeline_and_the_panel_shows_the_artists_reference(addon, connected_tiny):
    scene = bpy.context.scene
    _camera(scene)
    s = scene.dreampolish
    s.prompt, s.reference_source, s.reference_image = "", "IMAGE", artist_image()
    s.run_until, s.pause_after = "neus", {"reference"}
    assert bpy.ops.dreampolish.generate() == {"FINISHED"}
    pump(addon, lambda: _rt().job_state != "submitting", what="the backend's answer to the submit")
    assert _rt().job_id, f"the backend refused the job: {_rt().message}"
    pump(addon, lambda: _rt().job_state == "paused", timeout_s=120, what="the pause after the reference stage")

    # The panel's preview is the backend's reference view: the artist's block, centred, over white.
    preview = _rt().preview
    w, h = preview.size
    px = np.empty(w * h * 4, np.float32)
    preview.pixels.foreach_get(px)
    px = px.reshape(h, w, 4)[::-1]
    inside = px[..., 3] > 0.9
    assert inside.mean() > 0.1
    np.testing.assert_allclose(px[inside][:, :3].mean(axis=0), ARTIST_COLOUR, atol=0.06)
    ys, xs = np.nonzero(inside)
    assert abs(ys.mean() - h / 2) < 0.1 * h and abs(xs.mean() - w / 2) < 0.1 * w

    assert bpy.ops.dreampolish.resume() == {"FINISHED"}
    pump(addon, lambda: _rt().job_state == "done", timeout_s=180, what="the image job to finish")
    stages = sorted(o["dreampolish_stage"] for o in scene.objects if o.get("dreampolish_job") == _rt().job_id)
    assert stages == ["neus"]  # one object, updated in place by each stage
