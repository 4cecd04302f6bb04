"""Nothing of the artist's is lost: the maps survive saving the .blend (and moving it to another
machine), a texture-only refine keeps the artist's material slots and finds its object by identity,
a geometry refine's result takes the original's place, transform and materials, and the smaller
things an artist notices (resuming from Edit Mode, an empty refine prompt, a paused job in the
history, the exported GLB's names and colours).

Every job runs the real pipeline at the tiny preset through the add-on's own operators."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

from tests.support.addon_jobs import generate, job_objects, rt, submit
from tests.support.blender_env import bpy, mathutils, pump

pytestmark = pytest.mark.slow  # each test runs the real pipeline (tiny preset)

MAP_ROLES = ("base_color", "normal", "roughness_metallic")


def _wait(addon, state: str, what: str) -> None:
    pump(addon, lambda: rt().job_state == state, timeout_s=300, what=what)


def _pixels(img: bpy.types.Image) -> np.ndarray:
    px = np.empty(len(img.pixels), dtype=np.float32)
    img.pixels.foreach_get(px)
    return px


def _job_maps(mat: bpy.types.Material) -> dict[str, bpy.types.Image]:
    """The material's image nodes by role (the add-on names its nodes "DreamPolish <Role>")."""
    roles = {"DreamPolish Base Color": "base_color", "DreamPolish Normal": "normal",
             "DreamPolish Roughness Metallic": "roughness_metallic"}
    return {roles[n.name]: n.image for n in mat.node_tree.nodes if n.name in roles}


def _crate(name: str = "Crate") -> bpy.types.Object:
    """A cube with two of the artist's materials on alternating faces (a procedural one in slot 1)."""
    bpy.ops.mesh.primitive_cube_add(size=1.0)
    cube = bpy.context.active_object
    cube.name = name
    wood = bpy.data.materials.new("Wood")
    metal = bpy.data.materials.new("Brushed Metal")
    noise = metal.node_tree.nodes.new("ShaderNodeTexNoise")
    bsdf = next(n for n in metal.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    metal.node_tree.links.new(noise.outputs["Fac"], bsdf.inputs["Roughness"])
    cube.data.materials.append(wood)
    cube.data.materials.append(metal)
    for i, poly in enumerate(cube.data.polygons):
        poly.material_index = i % 2
    return cube


def _face_materials(obj: bpy.types.Object) -> list[str]:
    return [obj.data.materials[p.material_index].name for p in obj.data.polygons]


def _ours(obj: bpy.types.Object) -> list[bpy.types.Material]:
    return [m for m in obj.data.materials if m is not None and m.get("dreampolish_job")]


# --- item 2: every map survives save and reopen, here and on another machine ---------------------


def test_every_map_survives_saving_and_reopening_the_blend_on_another_machine(addon, connected_tiny, tmp_path):
    job_id = generate(addon)
    _wait(addon, "done", "the job to finish")
    (obj,) = job_objects(job_id)
    maps = _job_maps(obj.active_material)
    assert sorted(maps) == sorted(MAP_ROLES)
    before = {role: _pixels(img) for role, img in maps.items()}
    names = {role: img.name for role, img in maps.items()}
    assert np.abs(before["normal"].reshape(-1, 4)[:, 2] - 0.5).max() > 0.1, "a normal map points outwards"

    # Saved without Bake to Material; then "another machine": the .blend moved, the add-on's cache gone.
    here = tmp_path / "here" / "scene.blend"
    here.parent.mkdir()
    assert bpy.ops.wm.save_as_mainfile(filepath=str(here)) == {"FINISHED"}
    there = tmp_path / "there" / "scene.blend"
    there.parent.mkdir()
    shutil.move(here, there)
    shutil.rmtree(addon.job_follow.job_cache().root)
    assert bpy.ops.wm.open_mainfile(filepath=str(there)) == {"FINISHED"}

    for role, name in names.items():
        img = bpy.data.images[name]
        assert img.has_data or img.size[0] > 0, f"the {role} map is missing after reopening"
        after = _pixels(img)
        assert after.shape == before[role].shape, f"the {role} map reopened as {tuple(img.size)}"
        # PNG maps come back as they were sent; the float normal map losslessly.
        np.testing.assert_allclose(after, before[role], atol=1e-3, err_msg=f"the {role} map changed")


# --- item 6: texture-only refine keeps the artist's slots and materials ----------------------------


def test_texture_only_refine_textures_the_active_slot_and_keeps_the_material_it_replaced(
        addon, connected_tiny, tmp_path):
    cube = _crate()
    cube.active_material_index = 1  # the artist picks the metal faces
    faces_before = _face_materials(cube)
    job_id = submit(addon, bpy.ops.dreampolish.refine_selected, refine_mode="texture", prompt="a wooden crate")
    _wait(addon, "done", "the texture job")

    (mine,) = _ours(cube)
    assert mine["dreampolish_job"] == job_id
    assert [m.name for m in cube.data.materials] == ["Wood", mine.name], "the texture takes the active slot"
    assert _face_materials(cube) == [name if name == "Wood" else mine.name for name in faces_before], \
        "only the active slot's faces show the texture; the wood faces stay wood"
    assert bpy.data.materials["Brushed Metal"].use_fake_user, "the replaced material stays in the file"

    path = tmp_path / "crate.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.open_mainfile(filepath=str(path))
    metal = bpy.data.materials.get("Brushed Metal")
    assert metal is not None and any(n.type == "TEX_NOISE" for n in metal.node_tree.nodes), \
        "the procedural material is still in the saved file"


def test_texture_only_refine_on_all_faces_adds_a_slot_and_keeps_every_material(addon, connected_tiny):
    cube = _crate()
    submit(addon, bpy.ops.dreampolish.refine_selected, refine_mode="texture", prompt="a wooden crate",
           texture_faces="ALL")
    _wait(addon, "done", "the texture job")
    (first,) = _ours(cube)
    assert [m.name for m in cube.data.materials] == ["Wood", "Brushed Metal", first.name]
    assert set(_face_materials(cube)) == {first.name}

    # A second texture takes the first one's slot (nothing piles up); the first stays in the file.
    submit(addon, bpy.ops.dreampolish.refine_selected, prompt="an old sea chest", texture_faces="ALL")
    _wait(addon, "done", "the second texture job")
    (second,) = _ours(cube)
    assert second != first and [m.name for m in cube.data.materials] == ["Wood", "Brushed Metal", second.name]
    assert first.name in bpy.data.materials and first.use_fake_user, "the replaced texture is kept"


# --- item 7: the target is found by identity, not by name ------------------------------------------


def test_renaming_the_object_while_its_texture_job_runs_still_textures_it(addon, connected_tiny):
    cube = _crate()
    objects_before = set(bpy.data.objects)
    s = bpy.context.scene.dreampolish
    s.refine_mode, s.prompt = "texture", "a wooden crate"
    assert bpy.ops.dreampolish.refine_selected() == {"FINISHED"}
    cube.name = "Hero Crate"  # the artist renames it before any result arrives
    pump(addon, lambda: rt().job_state != "submitting", what="the backend's answer to the submit")
    job_id = rt().job_id
    _wait(addon, "done", "the texture job")

    assert set(bpy.data.objects) == objects_before, "no new object was made for the texture"
    assert [m["dreampolish_job"] for m in _ours(cube)] == [job_id], "the renamed object got the texture"


def test_a_texture_whose_object_was_deleted_says_so(addon, connected_tiny):
    cube = _crate()
    s = bpy.context.scene.dreampolish
    s.refine_mode, s.prompt = "texture", "a wooden crate"
    assert bpy.ops.dreampolish.refine_selected() == {"FINISHED"}
    bpy.data.objects.remove(cube)
    pump(addon, lambda: rt().job_state != "submitting", what="the backend's answer to the submit")
    _wait(addon, "done", "the texture job")
    assert "the object the texture was made for, is gone" in rt().failure, rt().failure


# --- item 8: a geometry refine's result takes the original's place ---------------------------------


def test_geometry_refine_result_keeps_the_originals_transform_origin_collection_and_material(
        addon, connected_tiny):
    props = bpy.data.collections.new("Props")
    bpy.context.scene.collection.children.link(props)
    bpy.ops.mesh.primitive_cube_add(size=1.0)
    cube = bpy.context.active_object
    for coll in list(cube.users_collection):
        coll.objects.unlink(cube)
    props.objects.link(cube)
    cube.data.transform(mathutils.Matrix.Translation((0.0, 0.0, 0.5)))  # the origin at its base
    cube.location, cube.rotation_euler, cube.scale = (1.0, 2.0, 0.0), (0.0, 0.0, 0.6), (2.06, 2.06, 2.06)
    paint = bpy.data.materials.new("Red Paint")
    cube.data.materials.append(paint)
    bpy.context.view_layer.update()
    matrix = np.array(cube.matrix_world)
    bpy.ops.ed.undo_push(message="the artist's scene")

    job_id = submit(addon, bpy.ops.dreampolish.refine_selected, refine_mode="geometry", prompt="a crate")
    _wait(addon, "done", "the geometry refine")

    (result,) = job_objects(job_id)
    assert result is not cube
    np.testing.assert_allclose(np.array(result.matrix_world), matrix, atol=1e-5,
                               err_msg="the result has the original's location, rotation and scale")
    assert [c.name for c in result.users_collection] == ["Props"]
    assert paint.name in [m.name for m in result.data.materials if m is not None]
    # Its mesh is where the backend made it, in the original's frame (origin included).
    cached = addon.job_follow.job_cache().load_stage(job_id, "texture").mesh.in_world()
    local = np.array([v.co[:] for v in result.data.vertices])
    world = local @ matrix[:3, :3].T + matrix[:3, 3]
    np.testing.assert_allclose(world, cached.vertices, atol=1e-4)
    # The original is hidden (viewport and render), not deleted, and not overlapping the result.
    assert cube.name in bpy.data.objects and cube.hide_get() and cube.hide_render

    # Undoing the imports gives the artist their scene back as it was.
    while job_objects(job_id):
        bpy.ops.ed.undo()
    cube = bpy.data.objects["Cube"]
    assert not cube.hide_get() and not cube.hide_render


# --- item 10: the smaller things --------------------------------------------------------------------


def test_resuming_from_edit_mode_keeps_the_job_in_one_object(addon, connected_tiny):
    job_id = generate(addon, pause_after={"dmtet"})
    _wait(addon, "paused", "the pause after dmtet")
    (obj,) = job_objects(job_id)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    assert bpy.ops.dreampolish.resume() == {"FINISHED"}  # still in Edit Mode
    _wait(addon, "done", "the resumed job")

    assert job_objects(job_id) == [obj], "the rest of the job went into a second object"
    assert obj["dreampolish_stage"] == "export" and obj.mode == "EDIT", "still in Edit Mode, on the last stage"
    bpy.ops.object.mode_set(mode="OBJECT")  # leaving Edit Mode writes what it shows
    final = addon.job_follow.job_cache().load_stage(job_id, "texture").mesh
    assert (len(obj.data.vertices), len(obj.data.polygons)) == (final.num_vertices, final.num_faces)
    assert _job_maps(obj.active_material), "the textured material is on it"


def test_an_empty_refine_prompt_is_refused_naming_the_field(addon, connected_tiny):
    bpy.ops.mesh.primitive_cube_add(size=1.0)
    bpy.context.scene.dreampolish.prompt = "  "
    with pytest.raises(RuntimeError, match="Prompt is empty"):
        bpy.ops.dreampolish.refine_selected()
    assert not rt().job_id and rt().job_state != "submitting", "nothing was sent"


def test_the_history_says_paused_for_a_paused_job(addon, connected_tiny):
    job_id = generate(addon, pause_after={"nerf"})
    _wait(addon, "paused", "the pause after nerf")
    (item,) = [h for h in rt().history if h.job_id == job_id]
    assert item.status == "paused"
    assert bpy.ops.dreampolish.cancel() == {"FINISHED"}
    _wait(addon, "cancelled", "the cancel")
    (item,) = [h for h in rt().history if h.job_id == job_id]
    assert item.status == "cancelled"


def _glb_json(path) -> dict:
    data = path.read_bytes()
    length, kind = struct.unpack_from("<I4s", data, 12)
    assert kind == b"JSON"
    return json.loads(data[20:20 + length])


def test_the_exported_glb_names_the_mesh_as_the_object_and_has_no_stale_colours(
        addon, connected_tiny, tmp_path):
    job_id = generate(addon)
    _wait(addon, "done", "the job to finish")
    (obj,) = job_objects(job_id)
    obj.name = "Hero Stool"
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    path = tmp_path / "stool.glb"
    assert bpy.ops.dreampolish.export_glb(filepath=str(path)) == {"FINISHED"}
    (mesh,) = _glb_json(path)["meshes"]
    assert mesh["name"] == "Hero Stool"
    attributes = set().union(*(p["attributes"] for p in mesh["primitives"]))
    assert not {a for a in attributes if a.startswith("COLOR_")}, \
        f"the textured mesh's material uses no vertex colours, yet the GLB has {sorted(attributes)}"
