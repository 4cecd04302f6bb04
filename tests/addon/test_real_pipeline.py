"""The add-on against the real pipeline at the tiny preset (random tiny models on the CPU: the shapes
mean nothing, but every request, message and payload is the real one)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.support.addon_jobs import generate, job_objects, rt, submit
from tests.support.blender_env import REPO_ROOT, bpy, pump

# Each test runs the real pipeline (tiny preset) through the add-on: in make test, not make test-fast.
pytestmark = pytest.mark.slow


def _base_color_link(mat: bpy.types.Material):
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    return bsdf.inputs["Base Color"].links[0]


def _cancel_and_wait(addon) -> None:
    assert bpy.ops.dreampolish.cancel() == {"FINISHED"}
    pump(addon, lambda: rt().job_state in ("cancelled", "done"), timeout_s=120, what="the cancel")


def test_a_leftover_pause_after_nerf_does_not_break_refine_selected(addon, connected_tiny):
    bpy.ops.mesh.primitive_cube_add(size=1.0)
    job_id = submit(addon, bpy.ops.dreampolish.refine_selected, refine_mode="geometry",
                     prompt="a crate", pause_after={"nerf", "polish"})
    spec_pause = addon.job_follow.job_cache().load_record(job_id)
    assert spec_pause is not None
    _cancel_and_wait(addon)


def test_run_up_to_sends_an_unbroken_chain_the_backend_accepts(addon, connected_tiny):
    s = bpy.context.scene.dreampolish
    assert addon.job_request.stage_plan("generate", "neus") == ["reference", "nerf", "neus"]
    assert addon.job_request.stage_plan("geometry", "polish") == ["dmtet", "polish"]
    generate(addon, run_until="neus", pause_after={"texture"})
    _cancel_and_wait(addon)
    # A refine that would end before its own first stage is greyed out, saying why.
    bpy.ops.mesh.primitive_cube_add(size=1.0)
    s.refine_mode, s.run_until = "geometry", "nerf"
    assert not bpy.ops.dreampolish.refine_selected.poll()
    with pytest.raises(RuntimeError, match="before a geometry refine's first stage"):
        bpy.ops.dreampolish.refine_selected()


def test_stage_meshes_show_their_colours_and_the_final_mesh_arrives_once(addon, connected_tiny):
    job_id = generate(addon, pause_after={"nerf"})
    pump(addon, lambda: rt().job_state == "paused", timeout_s=120, what="the pause after nerf")
    (obj,) = job_objects(job_id)
    colors = obj.data.color_attributes
    assert colors.active_color is not None, "the nerf stage sends vertex colours"
    link = _base_color_link(obj.active_material)
    assert link.from_node.type == "VERTEX_COLOR" and link.from_node.layer_name == colors.active_color.name

    images_before = set(bpy.data.images.keys())
    assert bpy.ops.dreampolish.resume() == {"FINISHED"}
    pump(addon, lambda: rt().job_state == "done", timeout_s=180, what="the job to finish")
    (obj,) = job_objects(job_id)
    assert obj["dreampolish_stage"] == "export"
    new_images = sorted(set(bpy.data.images.keys()) - images_before)
    roles = [name.rsplit(" ", 1)[-1] for name in new_images]
    assert len(roles) == len(set(roles)), f"one image per texture role, got {new_images}"
    assert _base_color_link(obj.active_material).from_node.type == "TEX_IMAGE"
    # export repeats the texture stage's mesh: it is not stored or imported a second time.
    cache = addon.job_follow.job_cache()
    assert cache.load_record(job_id).stages[-2:] == ["texture", "export"]
    assert not (cache.job_dir(job_id) / "export.npz").exists()
    assert cache.load_stage(job_id).stage == "texture"


def test_object_per_stage_keeps_each_stage_in_a_job_collection(addon, connected_tiny):
    job_id = generate(addon, import_mode="per_stage", run_until="neus")
    pump(addon, lambda: rt().job_state == "done", timeout_s=120, what="the job to finish")
    objects = job_objects(job_id)
    # The reference stage ends with an image, not a mesh: nothing to import for it.
    assert sorted(o["dreampolish_stage"] for o in objects) == ["nerf", "neus"]
    assert all(o.users_collection[0].name == f"DreamPolish {job_id}" for o in objects)


OVERRIDE_EXAMPLE = re.compile(r"[a-z_]+(?:\.[a-z_]+)+=[\w.]+(?:, [a-z_]+(?:\.[a-z_]+)+=[\w.]+)*")
"""An "Overrides" example as the docs write it: stage.field=value, comma separated."""


def _override_examples(addon) -> list[tuple[str, str]]:
    """Every Overrides example shown to an artist: README, the field's tooltip, the parser's docstring."""
    sources = {
        "README.md": (REPO_ROOT / "README.md").read_text(encoding="utf-8"),
        "Overrides tooltip": bpy.context.scene.dreampolish.bl_rna.properties["overrides"].description,
        "parse_overrides docstring": addon.job_request.parse_overrides.__doc__,
    }
    return [(example, where) for where, text in sources.items() for example in OVERRIDE_EXAMPLE.findall(text)
            if example != "stage.field=value"]  # the form itself, not an example


def test_every_overrides_example_is_accepted_by_the_real_pipeline(addon, connected_tiny):
    examples = _override_examples(addon)
    assert {where for _, where in examples} == {"README.md", "Overrides tooltip", "parse_overrides docstring"}
    for example, where in dict(examples).items():
        s = bpy.context.scene.dreampolish
        s.prompt, s.overrides, s.run_until = "a teapot", example, "reference"
        assert bpy.ops.dreampolish.generate() == {"FINISHED"}
        pump(addon, lambda: rt().job_state != "submitting", what=f"the answer to {example!r}")
        assert rt().job_id, f"{where}: the backend refused {example!r}: {rt().message}"
        pump(addon, lambda: rt().job_state == "done", timeout_s=60, what=f"the job of {example!r}")
        rt().job_id = ""


def test_pause_edit_in_edit_mode_and_resume_the_next_stage_starts_from_the_edit(addon, connected_tiny):
    from tests.support.blender_env import bmesh

    job_id = generate(addon, run_until="polish", pause_after={"dmtet"})
    pump(addon, lambda: rt().job_state == "paused", timeout_s=180, what="the pause after dmtet")
    (obj,) = job_objects(job_id)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    bm = bmesh.from_edit_mesh(obj.data)
    size = max(obj.dimensions)
    # Move everything, extrude one face outwards, delete two others: what an artist does.
    bmesh.ops.translate(bm, verts=bm.verts[:], vec=(0.1 * size, 0.0, 0.0))
    bm.faces.ensure_lookup_table()
    face = bm.faces[0]
    normal = face.normal.copy()
    extruded = bmesh.ops.extrude_face_region(bm, geom=[face])
    new_verts = [g for g in extruded["geom"] if isinstance(g, bmesh.types.BMVert)]
    bmesh.ops.translate(bm, verts=new_verts, vec=normal * 0.3 * size)
    bm.faces.ensure_lookup_table()
    bmesh.ops.delete(bm, geom=[bm.faces[-1], bm.faces[-2]], context="FACES_ONLY")
    edited_tris = sum(len(f.verts) - 2 for f in bm.faces)
    edited_verts = len(bm.verts)
    edited_co = np.array([v.co[:] for v in bm.verts])
    bmesh.update_edit_mesh(obj.data)

    assert bpy.ops.dreampolish.resume() == {"FINISHED"}  # still in Edit Mode
    pump(addon, lambda: rt().job_state == "done", timeout_s=180, what="the resumed job to finish")
    bpy.ops.object.mode_set(mode="OBJECT")
    polished = next(o for o in job_objects(job_id) if o["dreampolish_stage"] == "polish")
    # Polish keeps the topology it is given: the edited mesh's, triangulated.
    assert (len(polished.data.vertices), len(polished.data.polygons)) == (edited_verts, edited_tris)
    got = np.array([v.co[:] for v in polished.data.vertices])
    np.testing.assert_allclose(got.max(axis=0), edited_co.max(axis=0), atol=0.1 * size)
    np.testing.assert_allclose(got.min(axis=0), edited_co.min(axis=0), atol=0.1 * size)
