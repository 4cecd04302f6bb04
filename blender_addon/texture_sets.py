"""Texture Sets ×N: N texture-only refines of the selected mesh (seeds Seed, Seed + 1, …) on its own UVs
(protocol/variants.py). Each set arrives as a material of the same object, in the slot a Texture Only refine
fills (the material a new set replaces there is kept in the file); the panel lists the sets of the material
the object shows, and a click shows another in that slot. The sets are told apart by their job's record
(JobRecord.variant_group), so they survive saving and reopening the .blend."""

from __future__ import annotations

import secrets

import bpy

from . import gltf_variants, job_request, materials, mesh_io, refine_target
from .job_cache import JobRecord
from .job_follow import job_cache
from .protocol.errors import ProtocolError
from .protocol.variants import texture_set_specs
from .reporting import report_error


def set_records() -> dict[bpy.types.Material, JobRecord]:
    """Every texture-set material of the file with its job's record (a texture-only job of a set group)."""
    cache = job_cache()
    out = {}
    for mat in bpy.data.materials:
        job_id = mat.get(materials.JOB_PROP)
        record = cache.load_record(job_id) if job_id else None
        if record is not None and record.variant_group and record.mode == "texture":
            out[mat] = record
    return out


def set_materials(obj: bpy.types.Object | None, records: dict[bpy.types.Material, JobRecord] | None = None,
                  shown: dict[bpy.types.Material, set[str]] | None = None) -> tuple[int, list[bpy.types.Material]]:
    """(the slot showing one of the object's texture sets, one material per set of that group, in seed order);
    (-1, []) when the object shows none. `records` (set_records()) and `shown` (shown_on()), when the caller
    has them already.

    The sets are the object's when it is the one they were made for (or that one is gone). A set job
    re-imported from the history is a copy of its material on an object of its own: each set counts once,
    as the material this object shows, else one that no other object shows (the sets not shown)."""
    if obj is None or obj.type != "MESH":
        return -1, []
    records = set_records() if records is None else records
    for slot, mat in enumerate(obj.data.materials):
        record = records.get(mat) if mat is not None else None
        if record is None or refine_target.find(record) not in (obj, None):
            continue
        shown = shown_on() if shown is None else shown
        by_job: dict[str, list[bpy.types.Material]] = {}
        for other, other_record in records.items():
            if other_record.variant_group == record.variant_group:
                by_job.setdefault(other_record.job_id, []).append(other)
        chosen = [mat if mat in copies else next((m for m in copies if not shown.get(m, set()) - {obj.name}),
                                                 copies[0])
                  for copies in by_job.values()]
        return slot, sorted(chosen, key=lambda m: records[m].seed)
    return -1, []


def shown_on() -> dict[bpy.types.Material, set[str]]:
    """material -> the names of the objects whose material slots show it."""
    out: dict[bpy.types.Material, set[str]] = {}
    for obj in bpy.data.objects:
        for slot in obj.material_slots:
            if slot.material is not None:
                out.setdefault(slot.material, set()).add(obj.name)
    return out


def set_names(records: list[JobRecord]) -> list[str]:
    """The sets' names, as the command-line client names them in its .glb (protocol/cli.py, _texture_sets):
    each set's prompt when the sets have prompts of their own, else "seed N"."""
    if len({r.prompt for r in records}) == len(records) > 1:
        return [r.prompt for r in records]
    return [f"seed {r.seed}" for r in records]


def sync_gltf_variants() -> None:
    """Blender's glTF exporter's variant data made to say every object's texture sets (gltf_variants.py): one
    variant per set, named set_names, each mapping the set's material onto the slot that shows the sets."""
    records, shown = set_records(), shown_on()
    sets: gltf_variants.SetsOfMesh = {}
    for obj in bpy.data.objects:
        if obj.type != "MESH" or obj.data in sets:
            continue
        slot, mats = set_materials(obj, records, shown)
        if mats:
            sets[obj.data] = (slot, list(zip(mats, set_names([records[m] for m in mats]))))
    gltf_variants.write(sets)


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
        sync_gltf_variants()
        return {"FINISHED"}


classes = (DREAMPOLISH_OT_texture_sets, DREAMPOLISH_OT_show_texture_set)
