"""`dreampolish-backend render`: image files from a mesh file and a Blender camera JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import trimesh
from dreampolish.backend.cli import main
from dreampolish.backend.commands.render import load_camera_json, save_camera_json
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.scene import CameraSpec
from PIL import Image


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def coverage_centroid(mask: np.ndarray) -> tuple[float, float]:
    """(column, row) centroid of coverage in pixel units (pixel (i, j) has its centre at i + 0.5, j + 0.5)."""
    rows, cols = np.indices(mask.shape) + 0.5
    return float((mask * cols).sum() / mask.sum()), float((mask * rows).sum() / mask.sum())


def front_view(resolution=(96, 64), shift=(0.0, 0.0), lens=50.0) -> CameraSpec:
    """Blender's front view: 4 m along -Y, looking at the origin (+90 deg about X)."""
    m = np.eye(4, dtype=np.float32)
    m[:3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]
    m[:3, 3] = [0.0, -4.0, 0.0]
    return CameraSpec(matrix_world=m, lens_mm=lens, resolution=resolution, shift=shift, name="Front")


def test_render_writes_images_that_match_the_camera(tmp_path):
    mesh_path = tmp_path / "cube.ply"
    trimesh.creation.box(extents=(1.0, 1.0, 1.0)).export(str(mesh_path))
    spec = front_view(resolution=(96, 64), shift=(0.1, 0.0))
    camera_path = save_camera_json(spec, tmp_path / "camera.json")
    out_dir = tmp_path / "out"
    assert main(["render", "--mesh", str(mesh_path), "--camera", str(camera_path), "--out", str(out_dir),
                 "--backend", "torch", "--device", "cpu", "--face-normals"]) == 0

    mask = np.asarray(Image.open(out_dir / "mask.png")).astype(np.float64) / 255
    assert mask.shape == (64, 96)
    # The front face (y = -0.5) is 3.5 m away: side f / 3.5 px with f = 50 / 36 * 96, centred on
    # the image centre moved left by shift * 96 px.
    f = 50 / 36 * 96
    side = f / 3.5
    assert mask.sum() == pytest.approx(side * side, rel=0.02)
    col, row = coverage_centroid(mask)
    assert col == pytest.approx(48 - 0.1 * 96, abs=0.1)
    assert row == pytest.approx(32, abs=0.1)

    depth = np.load(out_dir / "depth.npy")
    assert depth.dtype == np.float32 and depth.shape == (64, 96)
    np.testing.assert_allclose(depth[mask > 0.99], 3.5, atol=1e-4)
    assert (depth[mask == 0] == 0).all()
    depth_mm = np.asarray(Image.open(out_dir / "depth.png"))
    assert depth_mm.dtype == np.uint16 and int(depth_mm[32, 38]) == 3500

    rgba = np.asarray(Image.open(out_dir / "rgba.png"))
    assert rgba.shape == (64, 96, 4)
    np.testing.assert_array_equal(rgba[..., 3], np.asarray(Image.open(out_dir / "mask.png")))
    normals = np.asarray(Image.open(out_dir / "normals.png"))
    # The face seen is the one facing -Y: (n + 1) / 2 = (0.5, 0, 0.5).
    np.testing.assert_allclose(normals[32, 38, :3], [128, 0, 128], atol=1)
    preview = np.asarray(Image.open(out_dir / "depth_preview.png"))
    assert preview[32, 38] > 0 and preview[0, 0] == 0


def test_camera_json_round_trip_and_rejections(tmp_path):
    spec = front_view(resolution=(40, 30), shift=(0.05, -0.1), lens=35.0)
    back = load_camera_json(save_camera_json(spec, tmp_path / "c.json"))
    np.testing.assert_array_equal(back.matrix_world, spec.matrix_world)
    assert (back.lens_mm, back.resolution, back.shift, back.name) == (35.0, (40, 30), (0.05, -0.1), "Front")

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"matrix_world": np.eye(4).tolist(), "focal": 50}))
    with pytest.raises(ValidationError, match="unknown fields"):
        load_camera_json(bad)
    bad.write_text(json.dumps({"matrix_world": np.eye(3).tolist()}))
    with pytest.raises(ValidationError, match="matrix_world"):
        load_camera_json(bad)
    mesh_path = tmp_path / "t.obj"
    trimesh.creation.icosphere(1).export(str(mesh_path))
    assert main(["render", "--mesh", str(mesh_path), "--camera", str(bad), "--out", str(tmp_path / "o")]) == 2


def test_render_of_a_sphere_is_round_and_centred(tmp_path):
    mesh_path = tmp_path / "ball.glb"
    # glTF files are Y-up: the loader converts, so a sphere lifted along Blender +Z stays above centre.
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    sphere.apply_translation((0.0, 0.3, 0.0))  # +0.3 along glTF +Y = Blender +Z
    sphere.export(str(mesh_path))
    camera_path = save_camera_json(front_view(resolution=(64, 64)), tmp_path / "camera.json")
    assert main(["render", "--mesh", str(mesh_path), "--camera", str(camera_path), "--out", str(tmp_path / "o"),
                 "--backend", "torch", "--device", "cpu"]) == 0
    mask = np.asarray(Image.open(tmp_path / "o" / "mask.png")).astype(np.float64) / 255
    f = 50 / 36 * 64
    radius_px = f * 0.5 / math.sqrt(4.0**2 - 0.25)
    # Off-axis, the silhouette is a slightly stretched ellipse; the tessellated sphere is a bit smaller.
    assert mask.sum() == pytest.approx(math.pi * radius_px**2, rel=0.05)
    col, row = coverage_centroid(mask)
    assert col == pytest.approx(32, abs=0.1)
    assert row == pytest.approx(32 - f * 0.3 / 4.0, abs=0.3)


def test_vertex_colours_are_display_values_lit_in_linear_light(tmp_path):
    # A .ply's byte colours are sRGB: 128 lit head-on (Lambert 1) by the head light renders as 128, not
    # as the washed-out 188 of treating 128 / 255 as linear and encoding it again.
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    box.visual.vertex_colors = np.tile([128, 128, 128, 255], (len(box.vertices), 1)).astype(np.uint8)
    mesh_path = tmp_path / "grey.ply"
    box.export(str(mesh_path))
    camera_path = save_camera_json(front_view(resolution=(64, 64)), tmp_path / "camera.json")
    assert main(["render", "--mesh", str(mesh_path), "--camera", str(camera_path), "--out", str(tmp_path / "o"),
                 "--backend", "torch", "--device", "cpu", "--face-normals"]) == 0
    rgba = np.asarray(Image.open(tmp_path / "o" / "rgba.png")).astype(int)
    np.testing.assert_allclose(rgba[32, 32, :3], [128, 128, 128], atol=1)
