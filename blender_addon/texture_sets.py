"""Texture Sets ×N: N texture-only refines of the selected mesh (seeds Seed, Seed + 1, …) on its own UVs
(protocol/variants.py). Each set arrives as a material of the same object, in the slot a Texture Only refine
fills (the material a new set replaces there is kept in the file); the panel lists the sets of the material
the object shows, and a click shows another in that slot. The sets are told apart by their job's record
(JobRecord.variant_group), so they survive saving and reopening the .blend."""

from __future__ import annotations

import secrets

import bpy

from . import job_request, materials, mesh_io, refine_target
from .job_follow import job_cache
from .protocol.errors import ProtocolError
from .protocol.variants import texture_set_specs
from .reporting import report_error


def set_materials(obj: bpy.types.Object | None) -> tuple[int, list[bpy.types.Material]]:
    """(the slot showing one of the object's texture sets, every material of that set group, in seed order);
    (-1, []) when the object shows none."""
    if obj is None or obj.type != "MESH":
        return -1, []
    cache = job_cache()
    for slot, mat in enumerate(obj.data.materials):
        job_id = mat.get(materials.JOB_PROP) if mat is not None else None
        record = cache.load_record(job_id) if job_id else None
        if record is None or not record.variant_group or record.mode != "texture":
            continue
        group = []
        for other in bpy.data.materials:
            other_job = other.get(materials.JOB_PROP)
            other_record = cache.load_record(other_job) if other_job else None
            if other_record is not None and other_record.variant_group == record.variant_group:
                group.append((other_record.seed, other))
        return slot, [m for _, m in sorted(group, key=lambda sm: sm[0])]
    return -1, []


def draw(layout, context) -> None:
    """The Texture Sets rows of the Refine panel: the operator with its count, and the sets to switch between."""
    row = layout.row(align=True)
    row.operator("dreampolish.texture_sets", icon="MATERIAL")
    row.prop(context.scene.dreampolish, "texture_sets", text="×")
    layout.prop(context.scene.dreampolish, "texture_set_prompts")
    slot, sets = set_materials(context.active_object)
    if sets:
        shown = context.active_object.data.materials[slot]
        col = layout.column(align=True)
        for i, mat in enumerate(sets):
            op = col.operator("dreampolish.show_texture_set", text=f"Set {i + 1}: {mat.name}",
                              depress=mat == shown)
            op.index = i


class DREAMPOLISH_OT_texture_sets(bpy.types.Operator):
    """Make Texture Sets × N of the selected mesh on its own UVs: N texture-only refines with seeds Seed, Seed + 1,
    … (and one Set Prompt each, when given), each arriving as a material of the object that the panel switches
    between"""

    bl_idname = "dreampolish.texture_sets"
    bl_label = "Texture Sets"

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        if obj is None or not obj.select_get() or obj.type != "MESH":
            cls.poll_message_set("Select the mesh to make texture sets of")
            return False
        if context.window_manager.dreampolish.job_state == "submitting":
            cls.poll_message_set("Sending the last job: wait for the backend's answer")
            return False
        return True

    def execute(self, context):
        obj = context.active_object
        s = context.scene.dreampolish
        if not s.prompt.strip():
            report_error(self, "Prompt is empty: Texture Sets needs one; describe the selected object")
            return {"CANCELLED"}
        try:
            mesh = mesh_io.payload_from_object(obj, context.evaluated_depsgraph_get(), world_space=True,
                                               limits=job_request.backend_limits())
            if mesh.uvs is None:
                report_error(self, f"{obj.name!r} has no UV map: texture sets share the object's UVs; unwrap it")
                return {"CANCELLED"}
            prompts = [p.strip() for p in s.texture_set_prompts.split(";") if p.strip()] or None
            specs = texture_set_specs(job_request.job_spec(context, "texture", input_mesh=mesh),
                                      len(prompts) if prompts else s.texture_sets, prompts)
        except ProtocolError as exc:
            report_error(self, str(exc))
            return {"CANCELLED"}
        group, key = secrets.token_hex(4), refine_target.mark(obj)
        jobs = []
        for spec in specs:
            record = job_request.job_record(spec, target_object=obj.name, variant_group=group)
            record.target_key = key
            if s.texture_faces == "ACTIVE_SLOT" and len(obj.material_slots):
                record.target_slot = obj.active_material_index
            jobs.append((spec, record))
        return job_request.submit_variants(context, jobs, what="texture sets")


class DREAMPOLISH_OT_show_texture_set(bpy.types.Operator):
    """Show this texture set on the object, in the slot that shows its sets (the others stay in the file)"""

    bl_idname = "dreampolish.show_texture_set"
    bl_label = "Show Texture Set"
    bl_options = {"REGISTER", "UNDO"}

    index: bpy.props.IntProperty(name="Set", min=0)

    def execute(self, context):
        obj = context.active_object
        slot, sets = set_materials(obj)
        if not sets or self.index >= len(sets):
            report_error(self, "The active object shows no texture set of that number")
            return {"CANCELLED"}
        materials.show_in_slot(obj, sets[self.index], slot)
        return {"FINISHED"}


classes = (DREAMPOLISH_OT_texture_sets, DREAMPOLISH_OT_show_texture_set)
