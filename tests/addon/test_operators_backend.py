"""The add-on's operators against a real backend process on loopback (the scripted test pipeline).

The scripted pipeline emits after each stage an octahedron (6 vertices, 8 triangles, per-corner UVs)
scaled by 1 + 0.25 * stage index, and with the texture stage a solid (200, 60, 30) base-colour PNG.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.support.blender_env import (
    MODULE,
    backend_process,
    bmesh,
    bpy,
    connect_and_wait,
    connect_when_up,
    pump,
)

OCTAHEDRON_VERTS, OCTAHEDRON_FACES = 6, 8
TEXTURE_RGB = np.array([200, 60, 30]) / 255.0


def _rt():
    return bpy.context.window_manager.dreampolish


def _job_objects(job_id: str) -> list[bpy.types.Object]:
    return [o for o in bpy.context.scene.objects if o.get("dreampolish_job") == job_id]


def _generate(addon, prompt: str = "a test octahedron", **settings) -> str:
    s = bpy.context.scene.dreampolish
    s.prompt = prompt
    for key, value in settings.items():
        setattr(s, key, value)
    assert bpy.ops.dreampolish.generate() == {"FINISHED"}
    pump(addon, lambda: bool(_rt().job_id) and _rt().job_state != "submitting", what="the job to be accepted")
    return _rt().job_id


def _base_color_image(obj: bpy.types.Object) -> bpy.types.Image:
    mat = obj.active_material
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    link = bsdf.inputs["Base Color"].links[0]
    assert link.from_node.type == "TEX_IMAGE"
    return link.from_node.image


def test_generate_imports_every_stage_as_a_textured_editable_mesh(addon, connected):
    job_id = _generate(addon)
    pump(addon, lambda: _rt().job_state == "done", what="the job to finish")

    objects = _job_objects(job_id)
    assert len(objects) == 1, "by default one object per job is updated in place"
    obj = objects[0]
    mesh = obj.data
    assert (len(mesh.vertices), len(mesh.polygons)) == (OCTAHEDRON_VERTS, OCTAHEDRON_FACES)
    assert obj["dreampolish_stage"] == "texture"
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    assert np.abs(co).max() == pytest.approx(2.0)  # texture is stage 4: scale 1 + 0.25 * 4
    uv = np.empty(len(mesh.loops) * 2, np.float32)
    mesh.uv_layers.active.data.foreach_get("uv", uv)
    assert np.allclose(uv.reshape(-1, 3, 2), [[0, 0], [1, 0], [0.5, 1]])
    img = _base_color_image(obj)
    assert tuple(img.size) == (8, 8)
    px = np.array(img.pixels[:4])
    # Blender stores the sRGB PNG as is; its pixels read back as the PNG's values.
    assert np.allclose(px[:3], TEXTURE_RGB, atol=2 / 255)
    assert _rt().progress == pytest.approx(1.0)
    history = {item.job_id: item for item in _rt().history}
    assert history[job_id].status == "done" and history[job_id].last_stage == "texture"


def test_undo_removes_an_imported_stage(addon, connected):
    bpy.ops.ed.undo_push(message="before generate")
    job_id = _generate(addon, pause_after={"nerf"})
    pump(addon, lambda: _rt().job_state == "paused", what="the pause after nerf")
    assert len(_job_objects(job_id)) == 1
    bpy.ops.ed.undo()
    assert _job_objects(job_id) == []
    bpy.ops.dreampolish.cancel()
    pump(addon, lambda: _rt().job_state == "cancelled", what="the cancel")


def test_cancel_stops_a_running_job(addon, connected):
    _generate(addon, overrides="test.steps=200, test.step_s=0.05")
    pump(addon, lambda: _rt().job_state == "running", what="the job to start")
    assert bpy.ops.dreampolish.cancel() == {"FINISHED"}
    pump(addon, lambda: _rt().job_state == "cancelled", timeout_s=10.0, what="the job to be cancelled")
    assert _rt().stage == "nerf", "the job should stop in its first stage"
    assert not bpy.ops.dreampolish.cancel.poll()


def test_paused_job_resumes_from_the_edited_mesh(addon, connected):
    job_id = _generate(addon, pause_after={"dmtet"})
    pump(addon, lambda: _rt().job_state == "paused", what="the pause after dmtet")
    assert _rt().paused_stage == "dmtet"
    assert bpy.ops.dreampolish.resume.poll()
    (obj,) = _job_objects(job_id)
    # The artist moves the object and subdivides its mesh: 6 + 12 edge midpoints = 18 vertices.
    obj.location = (3.0, 0.0, 0.0)
    bm = bmesh.new()
    bm.from_mesh(obj.data)
    bmesh.ops.subdivide_edges(bm, edges=bm.edges[:], cuts=1, use_grid_fill=True)
    bm.to_mesh(obj.data)
    bm.free()
    assert len(obj.data.vertices) == 18

    assert bpy.ops.dreampolish.resume() == {"FINISHED"}
    pump(addon, lambda: _rt().job_state == "done", what="the resumed job to finish")
    (obj,) = _job_objects(job_id)
    # The later stages were built from the edited mesh the backend received.
    assert len(obj.data.vertices) == 18
    assert obj["dreampolish_stage"] == "texture"
    assert tuple(obj.location) == pytest.approx((3.0, 0.0, 0.0)), "the artist's transform is kept"


def test_refine_texture_only_keeps_the_objects_topology(addon, connected):
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0, 0, 0))
    cube = bpy.context.active_object
    bpy.context.scene.dreampolish.refine_mode = "texture"
    bpy.context.scene.dreampolish.prompt = "a wooden crate"
    assert bpy.ops.dreampolish.refine_selected() == {"FINISHED"}
    pump(addon, lambda: _rt().job_state == "done", what="the texture job")
    assert (len(cube.data.vertices), len(cube.data.polygons)) == (8, 6)
    assert np.allclose(np.array(_base_color_image(cube).pixels[:3]), TEXTURE_RGB, atol=2 / 255)
    assert not [o for o in bpy.context.scene.objects if o is not cube]


def test_textures_arrive_packed_and_bake_to_material_keeps_them(addon, connected):
    job_id = _generate(addon)
    pump(addon, lambda: _rt().job_state == "done", what="the job to finish")
    (obj,) = _job_objects(job_id)
    bpy.context.view_layer.objects.active = obj
    img = _base_color_image(obj)
    assert img.packed_file is not None, "packed as it arrived: saving the .blend keeps it"
    assert bpy.ops.dreampolish.bake_to_material() == {"FINISHED"}
    assert img.packed_file is not None and img.packed_file.size > 0


def test_history_reimport_makes_a_new_object(addon, connected):
    job_id = _generate(addon, run_until="nerf")
    pump(addon, lambda: _rt().job_state == "done", what="the job to finish")
    rt = _rt()
    rt.history_index = [item.job_id for item in rt.history].index(job_id)
    assert bpy.ops.dreampolish.reimport() == {"FINISHED"}
    # Connected, the result is fetched from the backend (it may be newer than the cache).
    pump(addon, lambda: len(_job_objects(job_id)) == 2, what="the re-imported object")
    objects = _job_objects(job_id)
    assert all(len(o.data.polygons) == OCTAHEDRON_FACES for o in objects)

    # The history is on disk: a newly opened file lists the job again.
    _rt().history.clear()
    bpy.ops.wm.read_homefile(use_empty=True)
    assert job_id in [item.job_id for item in _rt().history]


def test_progress_shows_stage_step_and_the_latest_preview(addon, connected):
    _generate(addon, run_until="neus", pause_after={"nerf"}, overrides="test.preview=true, test.steps=4")
    pump(addon, lambda: _rt().job_state == "paused", what="the pause after nerf")
    rt = _rt()
    assert (rt.stage, rt.step, rt.total) == ("nerf", 4, 4)
    assert rt.progress == pytest.approx(1.0)
    assert rt.preview is not None and tuple(rt.preview.size) == (4, 4)
    bpy.ops.dreampolish.cancel()
    pump(addon, lambda: _rt().job_state == "cancelled", what="the cancel")


def test_refine_geometry_sends_the_evaluated_mesh_in_world_space(addon, connected):
    bpy.ops.mesh.primitive_cube_add(size=2.0, location=(1.0, 2.0, 3.0), rotation=(0.0, 0.0, 0.5))
    cube = bpy.context.active_object
    cube.scale = (2.0, 1.0, 1.0)
    cube.modifiers.new("Subdivide", "SUBSURF").levels = 1
    bpy.context.view_layer.update()
    evaluated = cube.evaluated_get(bpy.context.evaluated_depsgraph_get()).data
    m = np.array(cube.matrix_world)
    world = np.array([m[:3, :3] @ v.co + m[:3, 3] for v in evaluated.vertices])

    s = bpy.context.scene.dreampolish
    s.refine_mode, s.prompt = "geometry", "a stretched box"
    assert bpy.ops.dreampolish.refine_selected() == {"FINISHED"}
    pump(addon, lambda: _rt().job_state == "done", what="the refine job")
    (result,) = _job_objects(_rt().job_id)
    assert result is not cube and len(cube.data.vertices) == 8, "the artist's object is left as it was"
    # The scripted pipeline returns the mesh it received, scaled by 1.5 at the texture stage (index 2).
    assert (len(result.data.vertices), len(result.data.polygons)) == (26, 48)
    # (The result takes the cube's transform: compared where it is in the world.)
    got = np.array([result.matrix_world @ v.co for v in result.data.vertices])
    np.testing.assert_allclose(got, world * 1.5, atol=1e-4)
    assert result.data.uv_layers.active is not None
    assert _base_color_image(result) is not None


def test_undo_steps_while_a_job_streams_leave_blender_running(addon, connected):
    """The artist works while a job runs: every edit is an undo push, which Blender does with the
    GIL released. A Python thread of the add-on taking the GIL then crashed Blender (a bare thread
    doing what the old client thread did crashed it within a hundred pushes), so the add-on keeps
    no thread: its socket is read on the main thread."""
    threads_before = set(threading.enumerate())
    _generate(addon, overrides="test.steps=30, test.step_s=0.02")
    window = bpy.context.window_manager.windows[0]
    pushes = 0
    deadline = time.monotonic() + 120.0
    while _rt().job_state not in ("done", "failed") and time.monotonic() < deadline:
        with bpy.context.temp_override(window=window):
            bpy.ops.ed.undo_push("EXEC_DEFAULT", message="artist edit")
        pushes += 1
        addon.bridge.drain()
    assert _rt().job_state == "done", (pushes, _rt().message)
    assert pushes >= 100, f"only {pushes} undo pushes while the job streamed"
    assert set(threading.enumerate()) <= threads_before, "the add-on started a Python thread"
    assert len(_job_objects(_rt().job_id)) == 1


def test_reconnecting_picks_up_a_running_job_where_it_left_off(addon, connected):
    _generate(addon, run_until="neus", overrides="test.steps=15, test.step_s=0.05")
    pump(addon, lambda: _rt().job_state == "running", what="the job to start")
    addon.bridge.disconnect()  # e.g. the network dropped; the job goes on in the backend
    assert connect_and_wait() == "connected"
    pump(addon, lambda: _rt().job_state == "done", what="the job to finish after the reconnect")
    assert sorted(o["dreampolish_stage"] for o in _job_objects(_rt().job_id)) == ["neus"]


def test_resume_while_still_in_edit_mode_sends_the_edits(addon, connected):
    job_id = _generate(addon, pause_after={"dmtet"})
    pump(addon, lambda: _rt().job_state == "paused", what="the pause after dmtet")
    (obj,) = _job_objects(job_id)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    bm = bmesh.from_edit_mesh(obj.data)
    bmesh.ops.subdivide_edges(bm, edges=bm.edges[:], cuts=1, use_grid_fill=True)
    bmesh.update_edit_mesh(obj.data)
    assert bpy.ops.dreampolish.resume() == {"FINISHED"}  # the artist has not left Edit Mode
    pump(addon, lambda: _rt().job_state == "done", what="the resumed job to finish")
    bpy.ops.object.mode_set(mode="OBJECT")
    # polish arrived while the object was being edited: it went to a new object, not into the edit.
    stages = {o["dreampolish_stage"]: o for o in _job_objects(job_id)}
    assert len(stages["texture"].data.vertices) == 18, "the backend received the edited mesh"


def test_texture_only_refine_keeps_the_artists_uv_map_and_materials(addon, connected):
    bpy.ops.mesh.primitive_cube_add(size=1.0)
    cube = bpy.context.active_object
    uvs = cube.data.uv_layers
    uvs[0].name = "Lightmap"  # as imported from FBX: two UV maps, the texture one is not "UVMap"
    texture_uv = uvs.new(name="UVChannel_1")
    uvs.active = texture_uv
    wood, metal = bpy.data.materials.new("Wood"), bpy.data.materials.new("Metal")
    cube.data.materials.append(wood)
    cube.data.materials.append(metal)
    for i, poly in enumerate(cube.data.polygons):
        poly.material_index = i % 2
    s = bpy.context.scene.dreampolish
    s.refine_mode, s.prompt, s.texture_faces = "texture", "a wooden crate", "ALL"
    assert bpy.ops.dreampolish.refine_selected() == {"FINISHED"}
    pump(addon, lambda: _rt().job_state == "done", what="the texture job")

    mats = list(cube.data.materials)
    assert wood in mats and metal in mats, "the artist's materials stay on the object"
    ours = [m for m in mats if m.get("dreampolish_job")]
    assert len(ours) == 1
    index = mats.index(ours[0])
    assert all(p.material_index == index for p in cube.data.polygons), "the baked texture covers every face"
    uv_nodes = [n for n in ours[0].node_tree.nodes if n.type in ("UVMAP", "NORMAL_MAP")]
    assert uv_nodes and all(n.uv_map == "UVChannel_1" for n in uv_nodes), "sampled on the UV map it was baked on"
    assert [uv.name for uv in cube.data.uv_layers] == ["Lightmap", "UVChannel_1"]

    # A second texture refine replaces our material in its slot; nothing piles up.
    assert bpy.ops.dreampolish.refine_selected() == {"FINISHED"}
    pump(addon, lambda: _rt().job_state == "done", what="the second texture job")
    assert len(cube.data.materials) == 3


def test_reimport_fetches_newer_stages_and_keeps_following_the_running_job(addon, connected):
    cache = addon.job_follow.job_cache()
    job_a = _generate(addon, run_until="neus", overrides="test.steps=3, test.step_s=0.1")
    pump(addon, lambda: cache.load_stage(job_a) is not None, what="the first stage result")
    # Blender crashes: no more events reach this window, and what it followed is lost.
    addon.bridge.disconnect()
    _rt().job_id = _rt().job_state = ""
    assert connect_and_wait() == "connected"
    assert cache.load_stage(job_a).stage != "neus"

    def job_a_done() -> bool:
        bpy.ops.dreampolish.refresh_history()
        pump(addon, lambda: True)
        return {i.job_id: i.status for i in _rt().history}.get(job_a) == "done"

    pump(addon, job_a_done, what="job A to finish on the backend")
    job_b = _generate(addon, run_until="neus", overrides="test.steps=10, test.step_s=0.05")
    pump(addon, lambda: _rt().job_state == "running", what="job B to start")
    _rt().history_index = [item.job_id for item in _rt().history].index(job_a)
    assert bpy.ops.dreampolish.reimport() == {"FINISHED"}
    pump(addon, lambda: any(o["dreampolish_stage"] == "neus" for o in _job_objects(job_a)),
         what="job A's final stage, fetched from the backend")
    assert _rt().job_id == job_b, "re-importing another job does not change the job this window follows"
    pump(addon, lambda: _rt().job_state == "done", what="job B to finish")
    assert [o["dreampolish_stage"] for o in _job_objects(job_b)] == ["neus"]


def test_a_job_outlives_the_blender_session_and_lands_in_its_object(addon, connected, tmp_path):
    job_id = _generate(addon, overrides="test.steps=6, test.step_s=0.1")
    pump(addon, lambda: len(_job_objects(job_id)) == 1, what="the first stage's object")
    blend = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    # Blender closes (the connection with it) and starts again on the saved file.
    addon.bridge.disconnect()
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    rt = _rt()
    rt.job_id = rt.job_state = ""
    rt.last_seq = 0
    assert connect_and_wait() == "connected"
    # The backend's job list shows the job still going; it is followed again from the history.
    pump(addon, lambda: rt.job_id == job_id, what="the job to be re-attached")
    pump(addon, lambda: rt.job_state == "done", what="the job to finish")
    objects = _job_objects(job_id)
    assert len(objects) == 1, "the remaining stages land in the job's object from the saved file"
    assert objects[0]["dreampolish_stage"] == "texture"
    assert {i.job_id: i.status for i in rt.history}[job_id] == "done"


def test_undoing_stage_imports_leaves_the_job_running_and_the_next_stage_lands_fresh(addon, connected):
    bpy.ops.mesh.primitive_cube_add(size=1.0)
    bpy.ops.ed.undo_push(message="before refine")
    s = bpy.context.scene.dreampolish
    s.refine_mode, s.prompt, s.pause_after = "geometry", "a crate", {"dmtet", "polish"}
    assert bpy.ops.dreampolish.refine_selected() == {"FINISHED"}
    pump(addon, lambda: bool(_rt().job_id) and _rt().job_state != "submitting", what="the job to be accepted")
    job_id = _rt().job_id
    for stage in ("dmtet", "polish"):
        pump(addon, lambda stage=stage: _rt().job_state == "paused" and _rt().paused_stage == stage,
             what=f"the pause after {stage}")
        (obj,) = _job_objects(job_id)
        assert obj["dreampolish_stage"] == stage
        name = obj.name
        bpy.ops.ed.undo()
        assert _job_objects(job_id) == [] and name not in bpy.data.objects, f"undo removes the {stage} import"
        assert _rt().job_id == job_id and _rt().job_state == "paused", "undo does not touch the job"
        assert bpy.ops.dreampolish.resume() == {"FINISHED"}  # nothing to send: the backend goes on from its own
    pump(addon, lambda: _rt().job_state == "done", what="the job to finish")
    (obj,) = _job_objects(job_id)
    assert obj["dreampolish_stage"] == "texture", "the last stage lands in a fresh object"
    assert len(obj.data.polygons) == 12, "the cube's triangles, as the scripted pipeline returns them"
    assert "Cube" in bpy.data.objects, "the undos went no further back than the imports"


def test_overall_progress_and_time_left_follow_the_measured_step_rate(addon, connected):
    clock = addon.progress.JobClock(plan=["nerf", "neus", "dmtet"])
    assert clock.progress("nerf", 0, 10, now=100.0) == (0.0, None)
    # 5 of 10 steps in 2.5 s: 2 steps/s, 2.5 s left in nerf, two later stages of 5 s each (nerf's projection).
    overall, left = clock.progress("nerf", 5, 10, now=102.5)
    assert overall == pytest.approx(0.5 / 3) and left == pytest.approx(2.5 + 2 * 5.0)
    # nerf took 6 s; neus at 1 of 4 steps after 1 s: 3 s left, then dmtet at nerf's measured 6 s.
    clock.progress("neus", 0, 4, now=106.0)
    overall, left = clock.progress("neus", 1, 4, now=107.0)
    assert overall == pytest.approx(1.25 / 3) and left == pytest.approx(3.0 + 6.0)

    _generate(addon, run_until="neus", overrides="test.steps=4, test.step_s=0.1")
    rt = _rt()
    pump(addon, lambda: rt.stage == "nerf" and 2 <= rt.step < 4, what="the middle of the nerf stage")
    # The scripted pipeline runs reference, nerf and neus here: three stages, the first one done.
    assert rt.overall == pytest.approx((1 + rt.step / 4) / 3)
    assert 0.0 < rt.eta_s < 10.0
    pump(addon, lambda: rt.job_state == "done", what="the job to finish")
    assert rt.overall == 1.0 and rt.eta_s == 0.0


def _glb_json(path) -> dict:
    """The JSON chunk of a binary glTF (glTF 2.0 spec, "GLB File Format Specification")."""
    import json
    import struct

    data = path.read_bytes()
    magic, _version, _length = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF"
    chunk_length, chunk_type = struct.unpack_from("<I4s", data, 12)
    assert chunk_type == b"JSON"
    return json.loads(data[20:20 + chunk_length])


def test_export_glb_carries_the_artists_edits_and_the_texture(addon, connected, tmp_path):
    job_id = _generate(addon)
    pump(addon, lambda: _rt().job_state == "done", what="the job to finish")
    (obj,) = _job_objects(job_id)
    obj.data.vertices[0].co.z = 5.0  # an edit the backend never saw (Blender's +Z is glTF's +Y)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    path = tmp_path / "result.glb"
    assert bpy.ops.dreampolish.export_glb(filepath=str(path)) == {"FINISHED"}
    gltf = _glb_json(path)
    assert len(gltf["meshes"]) == 1
    position = gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]
    assert position["max"][1] == pytest.approx(5.0)
    material = gltf["materials"][gltf["meshes"][0]["primitives"][0]["material"]]
    assert "baseColorTexture" in material["pbrMetallicRoughness"] and len(gltf["images"]) == 1


def test_several_jobs_at_once_each_follow_their_own_object(addon, connected):
    first = _generate(addon, "a first octahedron", overrides="test.steps=5, test.step_s=0.1")
    assert bpy.ops.dreampolish.generate.poll(), "a running job does not block the next one"
    second = _generate(addon, "a second octahedron", overrides="test.steps=2")
    rt = _rt()
    listed = {item.job_id: item.state for item in rt.jobs}
    assert set(listed) >= {first, second} and all(listed[j] in ("queued", "running") for j in (first, second))
    pump(addon, lambda: all(item.state == "done" for item in rt.jobs if item.job_id in (first, second)),
         timeout_s=60, what="both jobs to finish")
    for job_id, prompt in ((first, "a first octahedron"), (second, "a second octahedron")):
        (obj,) = _job_objects(job_id)
        assert obj["dreampolish_stage"] == "texture" and obj.name.startswith(prompt)
    history = {item.job_id: item.status for item in rt.history}
    assert history[first] == history[second] == "done"


def test_seed_variants_stand_side_by_side_and_the_picked_one_continues(addon, connected):
    s = bpy.context.scene.dreampolish
    s.prompt, s.seed, s.variants, s.variants_up_to = "a test octahedron", 40, 3, "dmtet"
    assert bpy.ops.dreampolish.generate_variants() == {"FINISHED"}
    pump(addon, lambda: len(_rt().jobs) == 3 and all(i.state == "paused" for i in _rt().jobs),
         timeout_s=60.0, what="the three variants to stop after dmtet")
    jobs = [item.job_id for item in _rt().jobs]
    history = {item.job_id: item for item in _rt().history}
    assert sorted(history[j].seed for j in jobs) == [40, 41, 42]
    objects = {j: _job_objects(j) for j in jobs}
    assert all(len(found) == 1 and found[0]["dreampolish_stage"] == "dmtet" for found in objects.values())
    # Side by side: each in its own place, in a row.
    places = [np.array(objects[j][0].matrix_world.translation) for j in jobs]
    gaps = sorted(np.linalg.norm(a - b) for i, a in enumerate(places) for b in places[i + 1:])
    assert gaps[0] > 0.5, places

    bpy.ops.object.select_all(action="DESELECT")
    assert not bpy.ops.dreampolish.pick_variant.poll(), "nothing selected: nothing to pick"
    picked = jobs[1]
    obj = objects[picked][0]
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj
    assert bpy.ops.dreampolish.pick_variant() == {"FINISHED"}
    items = lambda: {item.job_id: item.state for item in _rt().jobs}  # noqa: E731
    pump(addon, lambda: items()[picked] == "done" and all(items()[j] == "cancelled" for j in jobs if j != picked),
         timeout_s=60.0, what="the picked variant to finish and the others to be cancelled")
    assert _rt().job_id == picked and _rt().job_state == "done"
    assert _job_objects(picked)[0]["dreampolish_stage"] == "texture"
    assert all(_job_objects(j)[0]["dreampolish_stage"] == "dmtet" for j in jobs if j != picked)


def test_variants_a_full_queue_refuses_go_on_as_far_as_they_were_queued(addon, fresh_scene):
    # One queued job per client: the first variant runs, the second waits, the third is refused.
    s = bpy.context.scene.dreampolish
    s.prompt, s.variants = "a test octahedron", 4
    s.overrides = "test.steps=40, test.step_s=0.05"
    with backend_process("--max-queued-per-client", "1") as address:
        prefs = bpy.context.preferences.addons[MODULE].preferences
        prefs.backend_address, prefs.timeout_s = address, 5.0
        connect_when_up()
        s.variants_up_to = "nerf"  # one of the stages the backend listed (there are none before)
        assert bpy.ops.dreampolish.generate_variants() == {"FINISHED"}
        pump(addon, lambda: _rt().job_state != "submitting", what="the variants' submits")
        queued = [item.job_id for item in _rt().jobs]
        assert 1 <= len(queued) < 4
        assert _rt().message.startswith(f"Only {len(queued)} variants queued; the next was refused"), _rt().message
        assert bpy.ops.dreampolish.generate_variants.poll(), "the panel is not left waiting"
        addon.bridge.disconnect()  # the backend and its jobs stop with the block
