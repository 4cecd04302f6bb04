"""The reference view of a generated object looks at it wherever it is placed (issue 33 item 1): the scene
camera turned towards it, its roll kept (and, with a size, moved along the line to where the object fills
its frame), and the reference preview is that view as the scene camera shows it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dreampolish.backend.pipeline.frame import job_frame, reference_as_seen
from dreampolish.backend.presets import get_preset
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import CameraSpec


def _scene_camera(offset: tuple[float, float, float]) -> CameraSpec:
    """50 mm, 1920 x 1080, 8 m from the world origin at 28° elevation, looking at it; the rig is sent
    about the placement point `offset` (the add-on's rig_about), so the camera's position moves by -offset."""
    el = math.radians(28.0)
    m = np.eye(4)
    m[:3, 0] = (1.0, 0.0, 0.0)
    m[:3, 1] = (0.0, math.sin(el), math.cos(el))
    m[:3, 2] = (0.0, -math.cos(el), math.sin(el))  # the camera looks down -Z: along +Y, tilted down
    m[:3, 3] = np.array((0.0, -8.0 * math.cos(el), 8.0 * math.sin(el))) - np.array(offset)
    return CameraSpec(matrix_world=m.astype(np.float32), lens_mm=50.0, sensor_width_mm=36.0, sensor_height_mm=24.0,
                      sensor_fit="AUTO", resolution=(1920, 1080), name="Camera")


def _projected(camera, point) -> np.ndarray:
    clip = camera.mvp[0] @ torch.tensor([*point, 1.0])
    return (clip[:2] / clip[3]).numpy()


@pytest.mark.parametrize("size", [0.0, 0.5])
def test_the_reference_view_looks_at_an_object_placed_off_the_cameras_axis(size):
    spec = JobSpec("a ball", cameras=[_scene_camera((1.6, 1.2, 0.0))],
                   options={"reference.object_size": size} if size else {})
    frame = job_frame(spec, get_preset("tiny", spec.options))
    assert np.abs(_projected(frame.scene_camera, (0, 0, 0))).max() > 0.3  # off-centre in the scene camera
    np.testing.assert_allclose(_projected(frame.reference_camera, (0, 0, 0)), 0.0, atol=1e-5)
    ref_c2w, scene_c2w = frame.reference_camera.c2w[0], frame.scene_camera.c2w[0]
    # Turned, not rolled: the reference camera's right axis stays level, as the scene camera's is.
    assert abs(float(ref_c2w[2, 0])) < 1e-5 and abs(float(scene_c2w[2, 0])) < 1e-6
    # From the scene camera's side of the object: the same direction to the origin.
    ref_dir, scene_dir = ref_c2w[:3, 3] / ref_c2w[:3, 3].norm(), scene_c2w[:3, 3] / scene_c2w[:3, 3].norm()
    np.testing.assert_allclose(ref_dir.numpy(), scene_dir.numpy(), atol=1e-5)
    if size:
        # In the object frame (radius 0.5 -> size / 2 m) the sphere fills the reference frame: its distance is
        # 0.5 / sin(atan(tan(fov/2) / 1.15)), fov the vertical 22.9° of 50 mm at 16:9.
        half = math.atan(18.0 * 1080 / 1920 / 50.0)
        expected = 0.5 / math.sin(math.atan(math.tan(half) / 1.15))
        assert float(ref_c2w[:3, 3].norm()) == pytest.approx(expected, rel=1e-4)
        np.testing.assert_allclose(frame.transform[:3, :3], np.eye(3) * size, rtol=1e-6)
    else:
        np.testing.assert_allclose(ref_c2w[:3, 3].numpy(), scene_c2w[:3, 3].numpy(), atol=1e-5)


def test_the_reference_preview_shows_the_object_where_the_scene_camera_sees_it():
    spec = JobSpec("a ball", cameras=[_scene_camera((1.6, 1.2, 0.0))])
    frame = job_frame(spec, get_preset("tiny"))
    ref, scene = frame.reference_camera, frame.scene_camera
    # A dot at the reference image's centre (where the origin projects) lands where the origin projects in
    # the scene camera.
    rgba = torch.zeros(ref.height, ref.width, 4)
    rgba[ref.height // 2 - 2:ref.height // 2 + 2, ref.width // 2 - 2:ref.width // 2 + 2] = 1.0
    seen = reference_as_seen(rgba, ref, scene)
    ys, xs = torch.nonzero(seen[..., 3] > 0.5, as_tuple=True)
    x_ndc, y_ndc = _projected(scene, (0, 0, 0))
    col, row = (x_ndc + 1) / 2 * scene.width, (1 - y_ndc) / 2 * scene.height
    assert abs(float(xs.float().mean()) + 0.5 - col) < 1.0 and abs(float(ys.float().mean()) + 0.5 - row) < 1.0


def test_on_the_cameras_axis_the_reference_preview_is_the_reference_itself():
    spec = JobSpec("a ball", cameras=[_scene_camera((0.0, 0.0, 0.0))])
    frame = job_frame(spec, get_preset("tiny"))
    rgba = torch.rand(frame.reference_camera.height, frame.reference_camera.width, 4)
    torch.testing.assert_close(reference_as_seen(rgba, frame.reference_camera, frame.scene_camera), rgba,
                               atol=1e-4, rtol=0)
