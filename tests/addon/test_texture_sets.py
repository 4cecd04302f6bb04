"""Texture Sets ×3 through the panel, against the real pipeline at the tiny preset: three sets of the selected
mesh on its own UVs arrive as materials of the same object, differ, and switch in its slot; Blender's own glTF
export writes them as KHR_materials_variants."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from tests.support.addon_jobs import rt
from tests.support.blender_box import base_color_image, image_texels, textured_box
from tests.support.blender_env import bpy, pump
from tests.support.gltf_validator import validate_glb

pytestmark = pytest.mark.slow


def test_three_texture_sets_arrive_as_materials_of_the_object_and_switch(addon, connected_tiny, tmp_path):
    obj, _ = textured_box(addon)
    uvs = np.empty(len(obj.data.loops) * 2, np.float32)
    obj.data.uv_layers.active.data.foreach_get("uv", uvs)
    s = bpy.context.scene.dreampolish
    s.prompt, s.seed, s.texture_sets, s.texture_faces, s.texture_set_prompts = "a box", 7, 3, "ACTIVE_SLOT", ""
    assert bpy.ops.dreampolish.texture_sets() == {"FINISHED"}
    pump(addon, lambda: rt().job_state != "submitting", what="the backend's answer to the submits")
    assert rt().message == "3 texture sets queued"
    cache = addon.job_follow.job_cache()

    def sets_done() -> bool:
        return len(addon.texture_sets.set_materials(obj)[1]) == 3 and all(
            j.state == "done" for j in rt().jobs if (cache.load_record(j.job_id) or j).variant_group)

    pump(addon, sets_done, timeout_s=300, what="three texture sets")
    slot, sets = addon.texture_sets.set_materials(obj)
    assert [cache.load_record(m["dreampolish_job"]).seed for m in sets] == [7, 8, 9]
    assert slot == 0 and len(obj.data.materials) == 1, "the sets take the artist's slot in turn"
    texels = []
    for i, mat in enumerate(sets):
        assert bpy.ops.dreampolish.show_texture_set(index=i) == {"FINISHED"}
        assert obj.data.materials[slot] == mat
        texels.append(image_texels(base_color_image(obj)).astype(int))
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.abs(texels[i] - texels[j]).mean() > 1.0, (i, j)
    after = np.empty_like(uvs)
    obj.data.uv_layers.active.data.foreach_get("uv", after)
    np.testing.assert_array_equal(after, uvs)  # one UV layout: the object's own
    assert all(m.users >= 1 for m in sets), "the sets not shown stay in the file"

    # Blender's own glTF export: one variant per set, each naming a material with that set's own image
    path = tmp_path / "sets.glb"
    assert bpy.ops.export_scene.gltf(filepath=str(path), export_format="GLB") == {"FINISHED"}
    validate_glb(path)
    data = path.read_bytes()
    (length,) = struct.unpack_from("<I", data, 12)
    gltf = json.loads(data[20:20 + length])
    assert [v["name"] for v in gltf["extensions"]["KHR_materials_variants"]["variants"]] == ["seed 7", "seed 8",
                                                                                                "seed 9"]
    (primitive,) = gltf["meshes"][0]["primitives"]
    mappings = primitive["extensions"]["KHR_materials_variants"]["mappings"]
    assert [gltf["materials"][m["material"]]["name"] for m in mappings] == [m.name for m in sets]
    assert [m["variants"] for m in mappings] == [[0], [1], [2]]
    sources = {gltf["textures"][gltf["materials"][m["material"]]["pbrMetallicRoughness"]["baseColorTexture"]["index"]]
               ["source"] for m in mappings}
    assert len(sources) == 3, "three different textures"


def test_set_prompts_make_one_set_per_prompt(addon, connected_tiny):
    obj, _ = textured_box(addon)
    s = bpy.context.scene.dreampolish
    s.prompt, s.seed, s.texture_sets, s.texture_set_prompts = "a box", 0, 3, "red paint; bare wood"
    assert bpy.ops.dreampolish.texture_sets() == {"FINISHED"}
    pump(addon, lambda: rt().job_state != "submitting", what="the backend's answer to the submits")
    assert rt().message == "2 texture sets queued"
    cache = addon.job_follow.job_cache()
    pump(addon, lambda: len(addon.texture_sets.set_materials(obj)[1]) == 2, timeout_s=300, what="two texture sets")
    _, sets = addon.texture_sets.set_materials(obj)
    assert [cache.load_record(m["dreampolish_job"]).prompt for m in sets] == ["red paint", "bare wood"]
