"""Blender camera conversion against hand-computed projections, orbit cameras and view sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dreampolish.backend.render.cameras import (
    ViewSampler,
    camera_from_blender,
    cameras_from_blender,
    fill_distance,
    orbit_cameras,
    project_to_pixels,
)
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.scene import CameraSpec


def blender_camera(location=(0.0, 0.0, 0.0), rotation=np.eye(3), **kw) -> CameraSpec:
    m = np.eye(4, dtype=np.float32)
    m[:3, :3] = rotation
    m[:3, 3] = location
    return CameraSpec(matrix_world=m, **kw)


def pixels_of(spec: CameraSpec, points) -> np.ndarray:
    cam = camera_from_blender(spec)
    px, _ = project_to_pixels(torch.tensor(points, dtype=torch.float32), cam)
    return px[0].numpy()


# A camera at the origin with the identity matrix looks down world -Z with +Y up, so a point
# (x, y, -z) lands at column w/2 + f x / z - dx and row h/2 - f y / z + dy, with f and the shift
# (dx, dy) in pixels.


def expected(w: int, h: int, f: float, point, shift_px=(0.0, 0.0)) -> tuple[float, float]:
    x, y, z = point
    return w / 2 + f * x / -z - shift_px[0], h / 2 - f * y / -z + shift_px[1]


@pytest.mark.parametrize(
    ("fit", "resolution", "focal"),
    [
        # HORIZONTAL: lens / sensor_width * width.
        ("HORIZONTAL", (200, 100), 50 / 36 * 200),
        ("HORIZONTAL", (100, 200), 50 / 36 * 100),
        # VERTICAL: lens / sensor_height * height.
        ("VERTICAL", (200, 100), 50 / 24 * 100),
        ("VERTICAL", (100, 200), 50 / 24 * 200),
        # AUTO: the sensor WIDTH maps onto the larger image side (Blender's rule).
        ("AUTO", (200, 100), 50 / 36 * 200),
        ("AUTO", (100, 200), 50 / 36 * 200),
        ("AUTO", (128, 128), 50 / 36 * 128),
    ],
)
def test_lens_and_sensor_fit_match_hand_computed_projection(fit, resolution, focal):
    spec = blender_camera(lens_mm=50.0, sensor_width_mm=36.0, sensor_height_mm=24.0,
                          sensor_fit=fit, resolution=resolution)
    w, h = resolution
    points = [(0.0, 0.0, -4.0), (0.3, 0.0, -4.0), (0.0, 0.2, -2.0), (-0.25, -0.1, -5.0)]
    got = pixels_of(spec, points)
    want = np.array([expected(w, h, focal, p) for p in points])
    np.testing.assert_allclose(got, want, atol=1e-3)
    cam = camera_from_blender(spec)
    assert cam.width == w and cam.height == h
    assert float(cam.fovy_deg[0]) == pytest.approx(math.degrees(2 * math.atan(h / 2 / focal)), rel=1e-5)


@pytest.mark.parametrize(
    ("fit", "resolution", "viewfac"),
    [("AUTO", (200, 100), 200), ("AUTO", (100, 200), 200), ("HORIZONTAL", (100, 200), 100),
     ("VERTICAL", (200, 100), 100)],
)
def test_shift_moves_the_image_by_a_fraction_of_the_fitted_side(fit, resolution, viewfac):
    spec = blender_camera(lens_mm=35.0, sensor_fit=fit, resolution=resolution, shift=(0.1, -0.05))
    unshifted = blender_camera(lens_mm=35.0, sensor_fit=fit, resolution=resolution)
    points = [(0.0, 0.0, -3.0), (0.4, -0.2, -3.0)]
    delta = pixels_of(spec, points) - pixels_of(unshifted, points)
    # Shifting the lens right (+x) moves the content left; shifting down (-y) moves it up.
    np.testing.assert_allclose(delta, [[-0.1 * viewfac, -0.05 * viewfac]] * 2, atol=1e-3)


def test_camera_pose_from_matrix_world():
    # Camera 5 m along -Y looking at the origin (+90 deg about X), as Blender's front view.
    rot = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float32)
    spec = blender_camera(location=(0.0, -5.0, 0.0), rotation=rot, lens_mm=50.0, resolution=(100, 100))
    f = 50 / 36 * 100
    px = pixels_of(spec, [(0.0, 0.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0)])
    np.testing.assert_allclose(px[0], [50, 50], atol=1e-3)
    np.testing.assert_allclose(px[1], [50, 50 - f / 5], atol=1e-3)  # world up is image up
    np.testing.assert_allclose(px[2], [50 + f / 5, 50], atol=1e-3)  # world +X is image right
    cam = camera_from_blender(spec)
    assert float(cam.distance[0]) == pytest.approx(5.0)
    assert float(cam.elevation_deg[0]) == pytest.approx(0.0, abs=1e-4)
    assert float(cam.azimuth_deg[0]) == pytest.approx(-90.0)
    _, depth = project_to_pixels(torch.tensor([[0.0, 0.0, 0.0]]), cam)
    assert float(depth[0, 0]) == pytest.approx(5.0)


def test_camera_object_scale_is_ignored_as_in_blender():
    rot = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float32)
    plain = blender_camera(location=(0.3, -5.0, 0.2), rotation=rot, resolution=(80, 60))
    scaled = blender_camera(location=(0.3, -5.0, 0.2), rotation=rot * np.array([2.0, 0.5, 3.0], np.float32),
                            resolution=(80, 60))
    points = [(0.0, 0.0, 0.0), (0.4, 0.3, -0.2)]
    np.testing.assert_allclose(pixels_of(scaled, points), pixels_of(plain, points), atol=1e-3)


def test_cameras_in_one_batch_must_share_a_resolution():
    a = blender_camera(resolution=(64, 64), name="front")
    b = blender_camera(resolution=(64, 48), name="side")
    assert cameras_from_blender([a, a]).batch_size == 2
    with pytest.raises(ValidationError, match="resolution"):
        cameras_from_blender([a, b])


def test_invalid_camera_is_rejected_with_a_typed_error():
    with pytest.raises(ValidationError):
        camera_from_blender(blender_camera(lens_mm=0.0))


def test_orbit_cameras_look_at_the_origin_with_z_up():
    el = torch.tensor([0.0, 30.0, -10.0, 90.0, -90.0])
    az = torch.tensor([0.0, 45.0, 200.0, 30.0, 0.0])
    cams = orbit_cameras(el, az, torch.full((5,), 3.8), torch.full((5,), 20.0), 64, 48)
    rot = cams.c2w[:, :3, :3]
    assert torch.isfinite(cams.c2w).all()
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3).expand(5, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(5), atol=1e-5, rtol=0)
    px, depth = project_to_pixels(torch.zeros(1, 3), cams)
    torch.testing.assert_close(px[:, 0], torch.tensor([[32.0, 24.0]] * 5), atol=1e-3, rtol=0)
    torch.testing.assert_close(depth[:, 0], torch.full((5,), 3.8), atol=1e-4, rtol=0)
    pos = cams.c2w[1, :3, 3]
    e, a = math.radians(30), math.radians(45)
    torch.testing.assert_close(pos, 3.8 * torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a),
                                                         math.sin(e)]), atol=1e-5, rtol=0)
    # Off the poles, world up appears above the image centre.
    up_px, _ = project_to_pixels(torch.tensor([[0.0, 0.0, 0.3]]), cams[:3])
    assert (up_px[:, 0, 1] < 24.0).all()


def test_fill_distance_makes_the_bounding_sphere_fill_the_frame():
    for fovy in (15.0, 30.0, 60.0):
        d = float(fill_distance(fovy, object_radius=0.5, margin=1.2))
        focal = 50 / math.tan(math.radians(fovy) / 2)  # 100 px tall image
        silhouette_radius = focal * 0.5 / math.sqrt(d * d - 0.25)
        assert silhouette_radius == pytest.approx(50 / 1.2, rel=1e-5)


def test_view_sampler_stays_in_its_ranges_and_is_seeded():
    sampler = ViewSampler(elevation_range=(-10, 45), azimuth_range=(-180, 180), distance_range=(3, 4),
                          fovy_range=(15, 60))
    a = sampler.sample(64, 32, 32, torch.Generator().manual_seed(1))
    b = sampler.sample(64, 32, 32, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.c2w, b.c2w)
    assert a.elevation_deg.min() >= -10 and a.elevation_deg.max() <= 45
    assert a.distance.min() >= 3 and a.distance.max() <= 4
    assert a.fovy_deg.min() >= 15 and a.fovy_deg.max() <= 60
    torch.testing.assert_close(a.c2w[:, :3, 3].norm(dim=-1), a.distance)
    polish = ViewSampler(fovy_range=(15, 60), fill_frame=True).sample(8, 32, 32, torch.Generator().manual_seed(2))
    torch.testing.assert_close(polish.distance, fill_distance(polish.fovy_deg, 0.5, 1.1))
    ref = sampler.reference(32, 32)
    assert float(ref.elevation_deg[0]) == 0.0 and float(ref.azimuth_deg[0]) == 0.0
