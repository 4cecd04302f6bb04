"""A game-ready (finish stage) result in Blender (issue 30): the object arrives as quads with the UV map
Blender names, the baked normal map wired through a Normal Map node on that UV map, and its levels of detail
as hidden children `<name>_LOD1`... with their own UVs and materials; re-imported from the cache, the same."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.blender_env import bpy


def _grid(addon, n: int, with_normal: bool):
    """An n x n grid of quads in the xy plane, UVs = xy, with a base colour and (optionally) a normal map."""
    scene = addon.protocol.scene
    xs = np.linspace(0.0, 1.0, n + 1, dtype=np.float32)
    gx, gy = np.meshgrid(xs, xs, indexing="xy")
    v = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size, np.float32)], 1)
    i = (np.arange(n)[:, None] * (n + 1) + np.arange(n)[None]).ravel()
    corners = np.stack([i, i + 1, i + n + 2, i + n + 1], 1).ravel().astype(np.uint32)
    textures = [scene.TexturePayload("base_color", png=_png(addon))]
    if with_normal:
        textures.append(scene.TexturePayload("normal", array=np.tile(np.array([0.2, 0, 0.98], np.float16), (8, 8, 1))))
    return scene.MeshPayload.from_polygons(v, np.full(n * n, 4, np.uint32), corners, v[corners][:, :2],
                                           normals=np.tile(np.array([0, 0, 1], np.float32), (len(v), 1)),
                                           textures=textures)


def _png(addon) -> bytes:
    from tests.support.png import png_rgb  # stdlib and numpy: Blender's Python has no dreampolish

    return png_rgb(8, 8, (200, 40, 40))


def _normal_map_wired(obj) -> bool:
    mat = obj.data.materials[0]
    nodes = [n for n in mat.node_tree.nodes if n.type == "NORMAL_MAP"]
    if not nodes or nodes[0].uv_map != obj.data.uv_layers.active.name:
        return False
    image_in = nodes[0].inputs["Color"].links
    bsdf_in = [link.to_node.type for link in nodes[0].outputs["Normal"].links]
    return bool(image_in) and image_in[0].from_node.type == "TEX_IMAGE" and "BSDF_PRINCIPLED" in bsdf_in


def test_a_finished_result_arrives_as_quads_with_its_normal_map_and_its_lods(addon, fresh_scene):
    payload = _grid(addon, 8, with_normal=True)
    payload.lods = [_grid(addon, 4, with_normal=True), _grid(addon, 2, with_normal=False)]
    cache = addon.job_follow.job_cache()
    cache.save_record(addon.job_cache.JobRecord(job_id="gamejob", prompt="a red tile"))
    cache.save_stage("gamejob", "texture", payload)
    for new_object in (False, True):  # as it arrives, and re-imported from the cache
        assert bpy.ops.dreampolish.import_result(job_id="gamejob", stage="texture", new_object=new_object) == {"FINISHED"}
        obj = bpy.context.active_object
        mesh = obj.data
        assert (len(mesh.polygons), len(mesh.loops)) == (64, 256)
        assert all(p.loop_total == 4 for p in mesh.polygons)
        assert mesh.uv_layers.active.name == "UVMap"
        assert _normal_map_wired(obj)
        lods = sorted(obj.children, key=lambda c: c.name)
        assert [c.name for c in lods] == [f"{obj.name}_LOD1", f"{obj.name}_LOD2"]
        assert [len(c.data.polygons) for c in lods] == [16, 4]
        assert all(p.loop_total == 4 for c in lods for p in c.data.polygons)
        assert all(c.hide_get() and c.hide_render for c in lods)
        assert _normal_map_wired(lods[0]) and lods[1].data.uv_layers.active is not None
        np.testing.assert_allclose(np.array(lods[0].matrix_world), np.array(obj.matrix_world), atol=1e-6)


def test_the_finish_stages_fallback_reaches_the_panel_without_failing_the_job(addon, fresh_scene):
    import importlib

    from tests.support.blender_env import MODULE

    messages = importlib.import_module(f"{MODULE}.protocol.messages")
    rt = bpy.context.window_manager.dreampolish
    rt.job_id, rt.job_state, rt.failure, rt.message = "20261201-000000-abcdef", "queued", "", ""
    note = messages.Progress(job_id=rt.job_id, seq=1, stage="finish", step=1, total=1,
                             losses={messages.REMESH_FALLBACK: 1.0, "faces": 3012.0})
    addon.job_events.on_message(note)
    assert "quadric decimation made the game-ready mesh" in rt.message, rt.message
    assert rt.failure == "" and rt.job_state == "running"
    rt.job_id, rt.job_state, rt.message = "", "", ""


def test_the_game_ready_box_sends_the_finish_options(addon, fresh_scene):
    s = bpy.context.scene.dreampolish
    assert addon.job_request.game_ready_options(s, "generate") == {}
    s.game_ready, s.game_faces, s.game_quads, s.game_lods = True, 3000, True, 2
    assert addon.job_request.game_ready_options(s, "generate") == {"finish.faces": 3000, "finish.quads": True,
                                                                   "finish.lods": 2}
    assert addon.job_request.game_ready_options(s, "texture") == {}  # a texture-only job keeps its mesh
    assert addon.job_request.game_ready_options(s, "geometry", masked=True) == {}  # so does a masked refine
    s.game_ready = False


RENDER_SIZE, SAMPLES = 128, 16


def _shaded(addon, name: str, payload, normal_map=None, tmp_path=None):
    """An object of `payload` with a grey diffuse material, with the normal map (an .npy) when given."""
    images = {} if normal_map is None else {"normal": addon.materials.load_image("normal", normal_map, "n")}
    obj = bpy.data.objects.new(name, addon.mesh_io.new_mesh(name, payload))
    bpy.context.scene.collection.objects.link(obj)
    mat = addon.materials.textured_material(name, images)
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Base Color"].default_value = (0.6, 0.6, 0.6, 1.0)
    bsdf.inputs["Roughness"].default_value = 1.0
    bsdf.inputs["Specular IOR Level"].default_value = 0.0
    addon.materials.assign_material(obj, mat)
    return obj


def _render_alone(obj, others, path):
    import math

    from tests.support.blender_env import render_cycles_linear

    for o in others:
        o.hide_render = o is not obj
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.data.energy, sun.data.angle = 3.0, 0.0
    sun.rotation_euler = (math.radians(60), 0.0, math.radians(30))  # grazing: the ripples cast their shading
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    cam.location, cam.rotation_euler = (0.0, -1.3, 1.0), (math.radians(52), 0.0, 0.0)
    px = render_cycles_linear(path, sun, cam, RENDER_SIZE, SAMPLES)
    for o in (sun, cam):
        bpy.data.objects.remove(o)
    return px


@pytest.mark.slow  # the backend's finish and bake in a process of their own, and three Cycles renders
def test_the_normal_map_brings_the_polished_shading_back_to_the_low_mesh(addon, fresh_scene, tmp_path):
    # The backend's finish stage and cage bake (tests/support/game_ready.py, run in the backend's Python) on a
    # rippled torus: 400 quads cannot hold its 20 ripples, the normal map can. Rendered with Cycles under the same
    # sun, the low mesh with its normal map is compared with the polished (high) mesh, and so is the low mesh
    # without it: the mean image difference with the map must be at most MAX_RATIO of the one without.
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    fixture = tmp_path / "game_ready.npz"
    subprocess.run([str(root / ".venv" / "bin" / "python"), "-m", "tests.support.game_ready", str(fixture)],
                   cwd=root, check=True, capture_output=True, timeout=600)
    d = np.load(fixture)
    scene = addon.protocol.scene
    high = scene.MeshPayload(d["high_vertices"], d["high_faces"].astype(np.uint32), normals=d["high_normals"])
    low = scene.MeshPayload.from_polygons(d["low_vertices"], d["low_sizes"], d["low_corners"], d["low_uvs"],
                                          normals=d["low_normals"])
    np.save(tmp_path / "normal.npy", d["normal_map"])
    objs = [_shaded(addon, "high", high), _shaded(addon, "low", low),
            _shaded(addon, "low_nm", low, tmp_path / "normal.npy")]
    high_px, plain_px, mapped_px = (_render_alone(o, objs, tmp_path / f"{o.name}.exr")[..., :3] for o in objs)
    covered = (high_px.sum(-1) > 0) | (plain_px.sum(-1) > 0)
    without = float(np.abs(plain_px - high_px)[covered].mean())
    with_map = float(np.abs(mapped_px - high_px)[covered].mean())
    print(f"mean |low - high| {without:.4f}, with the normal map {with_map:.4f} ({with_map / without:.2f})",
          file=sys.stderr)
    assert with_map <= MAX_RATIO * without, (with_map, without)


MAX_RATIO = 0.6
"""Measured 0.38 (BENCHMARKS.md, "Game-ready output"): what is left is the silhouette, which a normal map
cannot change (the low mesh's outline misses the ripples), and 16 samples' noise in both renders. The same
renders of a map that brought back only part of the ripples' shading (at 96 px with 40 ripples, two image
pixels a ripple, the map reached 0.91) fail; 0.6 asks for at least 40 % of the missing shading back."""
