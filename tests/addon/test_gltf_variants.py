"""Texture sets through Blender's own glTF exporter: File > Export > glTF 2.0 (bpy.ops.export_scene.gltf, with no
option of ours) and the panel's Export GLB write the sets the panel made as KHR_materials_variants, one variant per
set, each naming that set's material, and keep doing so when a set is switched, removed or re-imported from the
history; the Khronos validator finds no error in any of the files.

Against the scripted backend (tests/support/pipelines.py): its sets share one texture, so what is checked is which
material each variant names, by the material's name (the exporter names a glTF material after Blender's)."""

from __future__ import annotations

import json
import struct

from tests.support.addon_jobs import rt
from tests.support.blender_box import textured_box
from tests.support.blender_env import bpy, pump
from tests.support.gltf_validator import validate_glb

VARIANTS = "KHR_materials_variants"


def _texture_sets(addon, obj, count: int = 3, seed: int = 7, prompts: str = "") -> list:
    """Texture Sets ×count of obj through the panel's operator, followed until every set is in the file."""
    s = bpy.context.scene.dreampolish
    s.prompt, s.seed, s.texture_sets, s.texture_faces, s.texture_set_prompts = "a box", seed, count, "ACTIVE_SLOT", prompts
    assert bpy.ops.dreampolish.texture_sets() == {"FINISHED"}
    pump(addon, lambda: rt().job_state != "submitting", what="the backend's answer to the submits")
    expected = len(prompts.split(";")) if prompts else count
    pump(addon, lambda: len(addon.texture_sets.set_materials(obj)[1]) == expected and all(
        j.state == "done" for j in rt().jobs), timeout_s=60, what="the texture sets")
    return addon.texture_sets.set_materials(obj)[1]


def _export(path, **options) -> dict:
    """Blender's File > Export > glTF 2.0 as a .glb; its JSON chunk, after the Khronos validator passed it."""
    assert bpy.ops.export_scene.gltf(filepath=str(path), export_format="GLB", **options) == {"FINISHED"}
    validate_glb(path)
    return _glb_json(path)


def _glb_json(path) -> dict:
    data = path.read_bytes()
    length, kind = struct.unpack_from("<I4s", data, 12)
    assert data[:4] == b"glTF" and kind == b"JSON"
    return json.loads(data[20:20 + length])


def _variant_materials(gltf: dict, mesh_name: str) -> tuple[str, dict[str, str]]:
    """(the primitive's own material, {variant name: the material its mapping names}) of the one primitive of
    the glTF mesh called mesh_name, by material name."""
    names = [v["name"] for v in gltf["extensions"][VARIANTS]["variants"]]
    (mesh,) = [m for m in gltf["meshes"] if m["name"] == mesh_name]
    (primitive,) = mesh["primitives"]
    material_name = [m["name"] for m in gltf["materials"]]
    mapped = {}
    for mapping in primitive["extensions"][VARIANTS]["mappings"]:
        for variant in mapping["variants"]:
            assert names[variant] not in mapped, f"variant {names[variant]!r} mapped twice"
            mapped[names[variant]] = material_name[mapping["material"]]
    return material_name[primitive["material"]], mapped


def test_file_export_writes_the_texture_sets_as_variants_through_switch_and_removal(addon, connected, tmp_path):
    obj, _ = textured_box(addon)
    sets = _texture_sets(addon, obj)
    cache = addon.job_follow.job_cache()
    assert [cache.load_record(m["dreampolish_job"]).seed for m in sets] == [7, 8, 9]
    shown = obj.data.materials[0]

    gltf = _export(tmp_path / "sets.glb")
    assert VARIANTS in gltf["extensionsUsed"] and VARIANTS not in gltf.get("extensionsRequired", [])
    assert [v["name"] for v in gltf["extensions"][VARIANTS]["variants"]] == ["seed 7", "seed 8", "seed 9"]
    default, mapped = _variant_materials(gltf, "Box")
    assert mapped == {"seed 7": sets[0].name, "seed 8": sets[1].name, "seed 9": sets[2].name}
    assert default == shown.name, "the set the object shows is the primitive's own material"
    by_name = {m["name"]: m for m in gltf["materials"]}
    # a glTF material of its own per set, textured (the scripted sets share one PNG, which the exporter stores once)
    assert all("baseColorTexture" in by_name[name]["pbrMetallicRoughness"] for name in mapped.values())

    # Switched in the panel: the same three variants; the primitive now shows the set picked.
    assert bpy.ops.dreampolish.show_texture_set(index=0) == {"FINISHED"}
    default, mapped = _variant_materials(_export(tmp_path / "switched.glb"), "Box")
    assert default == sets[0].name and mapped["seed 9"] == sets[2].name and len(mapped) == 3

    # A set removed (its material deleted from the file): its variant goes with it, the others stay as they were.
    kept = [m.name for m in sets[:2]]
    bpy.data.materials.remove(sets[2])
    assert len(addon.texture_sets.set_materials(obj)[1]) == 2
    gltf = _export(tmp_path / "removed.glb")
    assert [v["name"] for v in gltf["extensions"][VARIANTS]["variants"]] == ["seed 7", "seed 8"]
    assert _variant_materials(gltf, "Box")[1] == {"seed 7": kept[0], "seed 8": kept[1]}


def test_export_glb_writes_the_variants_with_the_gltf_preference_off(addon, connected, tmp_path):
    obj, _ = textured_box(addon)
    sets = _texture_sets(addon, obj, seed=20)
    # The artist turned glTF's Material Variants off (which also unregisters its variant data); the panel's
    # Export GLB still writes the sets.
    bpy.context.preferences.addons["io_scene_gltf2"].preferences.KHR_materials_variants_ui = False
    bpy.context.view_layer.objects.active = obj
    assert obj.get("dreampolish_job"), "a set's arrival marks the box as DreamPolish's (Export GLB's poll)"
    path = tmp_path / "panel.glb"
    assert bpy.ops.dreampolish.export_glb(filepath=str(path)) == {"FINISHED"}
    validate_glb(path)
    gltf = _glb_json(path)
    (mesh,) = gltf["meshes"]
    _, mapped = _variant_materials(gltf, mesh["name"])
    assert mapped == {"seed 20": sets[0].name, "seed 21": sets[1].name, "seed 22": sets[2].name}


def test_set_prompts_name_the_variants_and_a_reimport_from_the_history_adds_none(addon, connected, tmp_path):
    obj, _ = textured_box(addon)
    sets = _texture_sets(addon, obj, prompts="red paint; bare wood")
    job = sets[1]["dreampolish_job"]
    history = rt()
    history.history_index = [item.job_id for item in history.history].index(job)
    assert bpy.ops.dreampolish.reimport() == {"FINISHED"}
    pump(addon, lambda: len(bpy.context.scene.objects) == 2, what="the re-imported set")
    (copy,) = [o for o in bpy.context.scene.objects if o != obj]
    assert copy.data.materials[0] not in sets, "the re-import is a copy of the set on an object of its own"
    assert addon.texture_sets.set_materials(obj)[1] == sets, "the box still has its two sets, once each"

    gltf = _export(tmp_path / "prompts.glb")
    assert [v["name"] for v in gltf["extensions"][VARIANTS]["variants"]] == ["red paint", "bare wood"]
    assert _variant_materials(gltf, "Box")[1] == {"red paint": sets[0].name, "bare wood": sets[1].name}
    copy_mesh = next(m for m in gltf["meshes"] if m["name"] != "Box")
    assert "extensions" not in copy_mesh["primitives"][0], "the copy shows its one texture, no variants"


def test_export_glb_of_sets_with_modifiers_writes_them_or_says_why_not(addon, connected, tmp_path):
    obj, _ = textured_box(addon)
    sets = _texture_sets(addon, obj, seed=30)
    obj.modifiers.new("Bevel", "BEVEL")
    bpy.context.view_layer.objects.active = obj
    path = tmp_path / "modified.glb"
    assert bpy.ops.dreampolish.export_glb(filepath=str(path)) == {"FINISHED"}
    validate_glb(path)
    gltf = _glb_json(path)
    if bpy.app.version >= (5, 3):
        assert _variant_materials(gltf, "Box")[1] == {"seed 30": sets[0].name, "seed 31": sets[1].name,
                                                      "seed 32": sets[2].name}
    else:  # Blender 5.0's exporter reads the variants from its modifier-applied copy of the mesh, which has none
        assert VARIANTS not in gltf.get("extensionsUsed", [])
        assert "apply 'Box''s modifiers (Ctrl+A)" in rt().failure


def test_a_reopened_file_exports_its_sets_with_the_gltf_preference_off(addon, connected, tmp_path):
    obj, _ = textured_box(addon)
    names = [m.name for m in _texture_sets(addon, obj, seed=40)]
    blend = tmp_path / "sets.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    # another session: glTF's Material Variants off, as in a fresh Blender
    bpy.context.preferences.addons["io_scene_gltf2"].preferences.KHR_materials_variants_ui = False
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    gltf = _export(tmp_path / "reopened.glb")
    assert _variant_materials(gltf, "Box")[1] == dict(zip(["seed 40", "seed 41", "seed 42"], names))
