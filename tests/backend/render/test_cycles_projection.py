"""Our camera conversion and rasteriser against Blender's own renderer.

Blender (the `bpy` module) lives in its own interpreter (.venv-blender, no torch), so a bpy
script run in a subprocess builds a scene (Suzanne, off-centre and turned), renders its alpha
with Cycles on the CPU for cameras with different lenses, sensor fits, non-square resolutions
and shifts, and saves the mesh (world coordinates, OBJ) and each camera as CameraSpec JSON.
This test then renders the same mesh from the same JSON with our rasteriser and compares.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from dreampolish.backend.commands.render import load_camera_json
from dreampolish.backend.geometry.mesh import load_mesh
from dreampolish.backend.render.cameras import camera_from_blender
from dreampolish.backend.render.rasterize import MeshRasterizer
from PIL import Image

REPO = Path(__file__).resolve().parents[3]
BLENDER_PYTHON = REPO / ".venv-blender" / "bin" / "python"

pytestmark = pytest.mark.skipif(
    not BLENDER_PYTHON.exists(), reason=f"needs Blender's bpy interpreter at {BLENDER_PYTHON} (make the .venv-blender)"
)

# (name, lens mm, sensor width, sensor height, sensor fit, resolution, shift, location, look-at target)
CAMERAS = [
    ("auto_landscape", 50.0, 36.0, 24.0, "AUTO", (96, 64), (0.0, 0.0), (2.2, -3.0, 1.4), (0.1, 0.2, 0.05)),
    ("auto_portrait_shift", 35.0, 36.0, 24.0, "AUTO", (60, 90), (0.12, -0.08), (-2.5, -2.0, 0.8), (0.0, 0.0, 0.0)),
    ("vertical_landscape", 40.0, 30.0, 20.0, "VERTICAL", (100, 56), (-0.1, 0.05), (0.3, -3.2, -1.0), (0.1, 0.2, 0.05)),
    ("horizontal_portrait", 60.0, 36.0, 30.0, "HORIZONTAL", (56, 80), (0.0, 0.1), (3.0, 1.5, 2.0), (0.1, 0.2, 0.0)),
]

BPY_SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import bpy, bmesh
    from mathutils import Vector

    out = Path(sys.argv[-2])
    cameras = json.loads(sys.argv[-1])
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene

    bpy.ops.mesh.primitive_monkey_add(size=1.0, location=(0.1, 0.2, 0.05), rotation=(0.3, -0.2, 0.9))
    monkey = bpy.context.active_object
    mesh = monkey.data
    bm = bmesh.new()
    bm.from_mesh(mesh)
    bmesh.ops.triangulate(bm, faces=bm.faces[:])
    bm.to_mesh(mesh)
    bm.free()
    world = monkey.matrix_world
    with open(out / "monkey.obj", "w") as f:
        for v in mesh.vertices:
            p = world @ v.co
            f.write(f"v {p.x:.7f} {p.y:.7f} {p.z:.7f}\\n")
        for poly in mesh.polygons:
            f.write("f " + " ".join(str(i + 1) for i in poly.vertices) + "\\n")

    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 64
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.use_denoising = False
    scene.cycles.pixel_filter_type = "BOX"
    scene.cycles.filter_width = 1.0
    scene.cycles.max_bounces = 0
    scene.render.film_transparent = True
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.image_settings.color_depth = "8"

    for name, lens, sw, sh, fit, res, shift, loc, target in cameras:
        data = bpy.data.cameras.new(name)
        data.lens, data.sensor_width, data.sensor_height, data.sensor_fit = lens, sw, sh, fit
        data.shift_x, data.shift_y = shift
        cam = bpy.data.objects.new(name, data)
        scene.collection.objects.link(cam)
        cam.location = loc
        direction = Vector(target) - Vector(loc)
        cam.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
        bpy.context.view_layer.update()
        scene.camera = cam
        scene.render.resolution_x, scene.render.resolution_y = res
        scene.render.filepath = str(out / f"{name}.png")
        bpy.ops.render.render(write_still=True)
        spec = {
            "matrix_world": [list(row) for row in cam.matrix_world],
            "lens_mm": data.lens, "sensor_width_mm": data.sensor_width, "sensor_height_mm": data.sensor_height,
            "sensor_fit": data.sensor_fit, "resolution": list(res), "shift": [data.shift_x, data.shift_y],
            "name": name,
        }
        (out / f"{name}.json").write_text(json.dumps(spec))
''')


@pytest.fixture(scope="module")
def cycles_renders(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cycles")
    script = out / "scene.py"
    script.write_text(BPY_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(BLENDER_PYTHON), str(script), str(out), json.dumps(CAMERAS)],
        capture_output=True, text=True, timeout=300, env=env, cwd=out,
    )
    if result.returncode != 0:
        pytest.fail(f"the bpy script failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return out


def coverage_centroid(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.indices(mask.shape) + 0.5
    return np.array([(mask * cols).sum(), (mask * rows).sum()]) / mask.sum()


@pytest.mark.parametrize("name", [c[0] for c in CAMERAS])
def test_rasteriser_matches_cycles_alpha(cycles_renders, name):
    torch.set_num_threads(1)
    spec = load_camera_json(cycles_renders / f"{name}.json")
    cameras = camera_from_blender(spec)
    mesh = load_mesh(cycles_renders / "monkey.obj")
    with torch.no_grad():
        ours = MeshRasterizer("torch").rasterize(mesh, cameras).mask[0, ..., 0].numpy().astype(np.float64)
    alpha = np.asarray(Image.open(cycles_renders / f"{name}.png"), dtype=np.float64)[..., 3] / 255.0
    assert alpha.shape == ours.shape == (spec.resolution[1], spec.resolution[0])
    assert alpha.sum() > 200, "the object should fill a good part of the frame"

    # Cycles' alpha with a 1-pixel box filter is each pixel's covered fraction (64 jittered
    # samples), which is what our antialiased mask approximates.
    inside = alpha > 0.5
    ours_in = ours > 0.5
    iou = (inside & ours_in).sum() / (inside | ours_in).sum()
    assert iou > 0.97, f"silhouette IoU with Cycles {iou:.4f}"
    assert ours.sum() == pytest.approx(alpha.sum(), rel=0.02)
    # A half-pixel slip or a wrong shift/fit would move the centroid by far more than this.
    np.testing.assert_allclose(coverage_centroid(ours), coverage_centroid(alpha), atol=0.15)
    # Disagreement is confined to the outline: pixels whose whole 3x3 neighbourhood Cycles sees
    # as fully covered (or empty) are fully covered (or empty) for us too.
    padded = np.pad(alpha, 1, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))
    deep_inside, far_outside = windows.min((-2, -1)) > 0.999, windows.max((-2, -1)) < 0.001
    assert deep_inside.sum() > 50 and far_outside.sum() > 50
    assert ours[deep_inside].min() > 0.99
    assert ours[far_outside].max() < 0.01
