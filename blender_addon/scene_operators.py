"""The scene operators: a stage result into the scene (import), its textures into the .blend (bake),
the object out as a .glb (export). Each is an undo step ({'REGISTER', 'UNDO'}).

A stage result's way into Blender: job_events.py stores it in the job cache as it arrives
(job_cache.JobCache.save_stage: arrays, texture files, the job's record, one write each) and calls
import_stage() here, which hands the stored result over in memory and runs the import operator.
Why through the disk cache: Blender loads images from files (the material's textures stay cache
files until Bake to Material packs or copies them), and the history re-imports a job, resumes or
follows it again after Blender restarted, from what is stored. Why through an operator: a scene
change made outside one is no undo step, and an artist's Ctrl+Z must take an import back like any
edit. The operator reads the cache only when nothing was handed over (a re-import from the history,
or Blender redoing the step).
"""

from __future__ import annotations

import logging
from pathlib import Path

import bpy
import numpy as np
from bpy.props import BoolProperty, StringProperty

from . import materials, mesh_io
from .job_cache import CachedStage, JobRecord
from .job_follow import job_cache
from .reporting import report_error, report_failure

log = logging.getLogger(__name__)

JOB_PROP = materials.JOB_PROP
STAGE_PROP = "dreampolish_stage"
"""Custom property naming the stage an object shows."""

_handed_over: dict[tuple[str, str], tuple[CachedStage, JobRecord]] = {}
"""(job id, stage) -> the stage result just stored and its record, for the import operator that runs now."""


def job_object(context, job_id: str, stage: str = "") -> bpy.types.Object | None:
    """The scene object holding a job's result (of `stage`, when given; else the latest)."""
    found = [o for o in context.scene.objects if o.get(JOB_PROP) == job_id]
    if stage:
        found = [o for o in found if o.get(STAGE_PROP) == stage] or found
    return found[-1] if found else None


def import_stage(stored: CachedStage, record: JobRecord, new_object: bool = False) -> bool:
    """Run the import operator on a stage result just stored, with an undo step, from a timer as
    well as from a script; a failure is reported to the artist. True when the result was imported."""
    key = (record.job_id, stored.stage)
    _handed_over[key] = (stored, record)
    wm = bpy.context.window_manager
    window = bpy.context.window or (wm.windows[0] if wm.windows else None)
    try:
        with bpy.context.temp_override(window=window):
            result = bpy.ops.dreampolish.import_result(
                "EXEC_DEFAULT", True, job_id=record.job_id, stage=stored.stage, new_object=new_object)
    except RuntimeError as exc:  # the operator reported an error (Blender raises it at the caller)
        report_failure(str(exc).removeprefix("Error: ").strip(), status_bar=False)
        return False
    finally:
        _handed_over.pop(key, None)
    return "FINISHED" in result


class DREAMPOLISH_OT_import_result(bpy.types.Operator):
    """Bring a job's stage result into the scene as an editable, textured mesh"""

    bl_idname = "dreampolish.import_result"
    bl_label = "Import Result"
    bl_options = {"REGISTER", "UNDO"}

    job_id: StringProperty(name="Job")
    stage: StringProperty(name="Stage", description="Empty: the latest stage received")
    new_object: BoolProperty(name="New Object", default=False,
                             description="Always make a new object (re-import from the history)")

    def execute(self, context):
        handed = _handed_over.get((self.job_id, self.stage))
        if handed is not None:
            cached, record = handed
        else:
            cache = job_cache()
            cached, record = cache.load_stage(self.job_id, self.stage), cache.load_record(self.job_id)
        if cached is None or record is None:
            report_error(self, f"No stored result for job {self.job_id!r}: fetch it from the backend")
            return {"CANCELLED"}
        try:
            obj = self._import(context, cached, record)
        except Exception as exc:  # noqa: BLE001 - the artist is told, the add-on goes on
            log.exception("importing %s of job %s failed", cached.stage, self.job_id)
            report_error(self, f"Could not import the {cached.stage} result of job {self.job_id}: {exc}")
            return {"CANCELLED"}
        obj[JOB_PROP] = self.job_id
        obj[STAGE_PROP] = cached.stage
        return {"FINISHED"}

    def _import(self, context, cached, record: JobRecord) -> bpy.types.Object:
        label = (record.prompt or "DreamPolish")[:40]
        target = bpy.data.objects.get(record.target_object) if record.mode == "texture" else None
        if target is not None and not self.new_object:
            obj = target  # texture-only: the artist's object keeps its own topology, UVs and materials
        else:
            obj = self._mesh_object(context, cached, record, label)
        mine = next((m for m in obj.data.materials if m is not None and JOB_PROP in m), None)
        if cached.texture_files:
            images = {
                role: materials.load_image(role, path, f"{label} {cached.stage} {role}")
                for role, path in cached.texture_files.items()
                if role in ("base_color", "normal", "roughness_metallic")
            }
            # The textures were baked on the UV map the payload carried: the mesh's active one.
            uv = obj.data.uv_layers.active
            mat = materials.textured_material(f"{label} material", images, mine,
                                              uv_map=uv.name if uv is not None else mesh_io.UV_LAYER_NAME)
        elif cached.mesh.colors is not None and obj is not target:
            mat = materials.color_attribute_material(f"{label} material", mine)
        else:
            return obj
        mat[JOB_PROP] = self.job_id
        materials.assign_material(obj, mat)
        return obj

    def _mesh_object(self, context, cached, record: JobRecord, label: str) -> bpy.types.Object:
        per_stage = context.scene.dreampolish.import_mode == "per_stage"
        obj = None if (self.new_object or per_stage) else job_object(context, self.job_id)
        if obj is not None and obj.type == "MESH" and obj.mode != "EDIT":
            mesh_io.fill_mesh(obj.data, cached.mesh)  # in place: the artist's transform stays
            return obj
        # (An object in Edit Mode is left alone: leaving Edit Mode would overwrite the new stage.)
        mesh = mesh_io.new_mesh(f"{label} {cached.stage}", cached.mesh)
        obj = bpy.data.objects.new(f"{label} {cached.stage}" if per_stage else label, mesh)
        # The backend's transform is relative to the frame the cameras were sent in.
        placed = np.eye(4, dtype=np.float32)
        placed[:3, 3] = record.placement
        mesh_io.set_matrix(obj, placed @ cached.mesh.transform)
        self._collection(context, record.job_id if per_stage else "").objects.link(obj)
        for other in context.view_layer.objects:
            other.select_set(False)
        obj.select_set(True)
        context.view_layer.objects.active = obj
        return obj

    @staticmethod
    def _collection(context, job_id: str) -> bpy.types.Collection:
        if not job_id:
            return context.scene.collection
        name = f"DreamPolish {job_id}"
        coll = bpy.data.collections.get(name)
        if coll is None:
            coll = bpy.data.collections.new(name)
        if coll.name not in context.scene.collection.children:
            context.scene.collection.children.link(coll)
        return coll


class DREAMPOLISH_OT_bake_to_material(bpy.types.Operator):
    """Store the received textures in the .blend (or beside it), so the file is self-contained"""

    bl_idname = "dreampolish.bake_to_material"
    bl_label = "Bake to Material"
    bl_options = {"REGISTER", "UNDO"}

    save_beside: BoolProperty(
        name="Save Beside .blend", default=False,
        description="Save the textures in a textures/ folder beside the saved .blend instead of packing them",
    )

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        if obj is None or obj.type != "MESH":
            cls.poll_message_set("Select a mesh object with a DreamPolish material")
            return False
        if not any(materials.material_images(m) for m in obj.data.materials if m):
            cls.poll_message_set(f"{obj.name!r} has no image textures to bake")
            return False
        return True

    def execute(self, context):
        obj = context.active_object
        images = [img for m in obj.data.materials if m for img in materials.material_images(m)]
        save_dir = None
        if self.save_beside:
            if not bpy.data.filepath:
                report_error(self, "Save the .blend first, or pack the textures instead")
                return {"CANCELLED"}
            save_dir = Path(bpy.data.filepath).parent / "textures"
        n = materials.bake_images(images, save_dir)
        self.report({"INFO"}, f"{n} textures stored {'beside the file' if save_dir else 'in the file'}")
        return {"FINISHED"}


class DREAMPOLISH_OT_export_glb(bpy.types.Operator):
    """Save the selected DreamPolish object as a .glb through Blender's glTF exporter (your edits,
    modifiers and material included)"""

    bl_idname = "dreampolish.export_glb"
    bl_label = "Export GLB"

    filepath: StringProperty(name="File", subtype="FILE_PATH", default="")
    filter_glob: StringProperty(default="*.glb", options={"HIDDEN"})

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        if obj is None or obj.type != "MESH" or JOB_PROP not in obj:
            cls.poll_message_set("Select an object DreamPolish made")
            return False
        if not hasattr(bpy.ops.export_scene, "gltf"):
            cls.poll_message_set("Enable Blender's glTF 2.0 add-on (File > Export > glTF 2.0)")
            return False
        return True

    def invoke(self, context, event):
        if not self.filepath:
            self.filepath = bpy.path.clean_name(context.active_object.name) + ".glb"
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        if not self.filepath:
            report_error(self, "Choose where to save the .glb")
            return {"CANCELLED"}
        path = bpy.path.ensure_ext(bpy.path.abspath(self.filepath), ".glb")
        obj = context.active_object
        if obj.mode == "EDIT":
            obj.update_from_editmode()
        selected = [o for o in context.view_layer.objects if o.select_get()]
        try:
            for other in selected:
                other.select_set(False)
            obj.select_set(True)
            # The exporter converts Blender's Z-up to glTF's Y-up and applies the modifiers.
            bpy.ops.export_scene.gltf(filepath=path, export_format="GLB", use_selection=True,
                                      export_apply=True)
        finally:
            obj.select_set(False)
            for other in selected:
                other.select_set(True)
        self.report({"INFO"}, f"Saved {path}")
        return {"FINISHED"}


classes = (
    DREAMPOLISH_OT_import_result,
    DREAMPOLISH_OT_bake_to_material,
    DREAMPOLISH_OT_export_glb,
)
