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

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import bpy
import numpy as np
from bpy.props import BoolProperty, StringProperty

from . import materials, mesh_io, refine_target, texture_sets
from .job_cache import CachedStage, JobRecord
from .job_follow import job_cache
from .reporting import report_error, report_failure

log = logging.getLogger(__name__)

JOB_PROP = materials.JOB_PROP
STAGE_PROP = "dreampolish_stage"
LOD_PROP = "dreampolish_lod"
"""On a level-of-detail object: its level (1 for LOD1)."""
"""Custom property naming the stage an object shows."""

_handed_over: dict[tuple[str, str], tuple[CachedStage, JobRecord]] = {}
"""(job id, stage) -> the stage result just stored and its record, for the import operator that runs now."""


def job_object(context, job_id: str, stage: str = "") -> bpy.types.Object | None:
    """The scene object holding a job's result (of `stage`, when given; else the latest)."""
    found = [o for o in context.scene.objects if o.get(JOB_PROP) == job_id]
    if stage:
        found = [o for o in found if o.get(STAGE_PROP) == stage] or found
    return found[-1] if found else None


def _origin(record: JobRecord) -> np.ndarray:
    return np.array(record.origin_matrix, dtype=np.float64).reshape(4, 4)


def _in_object_frame(mesh, record: JobRecord):
    """The stage mesh in the frame of the object it fills. A geometry refine's mesh comes back in
    world space (the original was sent so): it is brought into the original's frame at submit, so
    that the result keeps the original's transform and origin. Other jobs' meshes are in theirs."""
    if not record.origin_matrix:
        return mesh
    to_local = (np.linalg.inv(_origin(record)) @ mesh.transform).astype(np.float32)
    return dataclasses.replace(mesh, transform=to_local).in_world()


def _has_materials(obj: bpy.types.Object) -> bool:
    return any(m is not None for m in getattr(obj.data, "materials", ()))


def _job_material(obj: bpy.types.Object, job_id: str) -> bpy.types.Material | None:
    """The material this job gave the object at an earlier stage (rewired in place by the next)."""
    return next((m for m in obj.data.materials if m is not None and m.get(JOB_PROP) == job_id), None)


def _stand_in_for(result: bpy.types.Object, original: bpy.types.Object, context) -> None:
    """A geometry refine's result takes the original's place: the original's materials in its slots
    (every face on the first, as the re-made mesh has no face to match the original's), and the
    original hidden in the viewport and in renders, not deleted: it stays in the file, and Ctrl+Z
    of the import shows it again."""
    if isinstance(original.data, bpy.types.Mesh):
        for mat in original.data.materials:
            result.data.materials.append(mat)
    original.hide_render = True
    if original.name in context.view_layer.objects:
        original.hide_set(True)


@contextlib.contextmanager
def _out_of_edit_mode(context, obj: bpy.types.Object | None) -> Iterator[None]:
    """Update an object the artist has in Edit Mode (e.g. resumed from Edit Mode): Edit Mode keeps
    its own copy of the mesh and writes it back on leaving, over any change made meanwhile, so the
    object leaves Edit Mode for the update and is put back in it, showing the new stage."""
    if obj is None or obj.mode != "EDIT":
        yield
        return
    with context.temp_override(active_object=obj, object=obj, selected_objects=[obj],
                               selected_editable_objects=[obj]):
        bpy.ops.object.mode_set(mode="OBJECT")
    try:
        yield
    finally:
        with context.temp_override(active_object=obj, object=obj, selected_objects=[obj],
                                   selected_editable_objects=[obj]):
            bpy.ops.object.mode_set(mode="EDIT")


@contextlib.contextmanager
def _mesh_named_as(obj: bpy.types.Object) -> Iterator[None]:
    """The glTF exporter names a mesh by its mesh data, which keeps the name of the stage that made it
    ("… nerf"): for the export the data carries the object's current name, then gets its own back. A
    mesh already holding that name steps aside meanwhile (Blender's names are unique)."""
    mesh, wanted = obj.data, obj.name
    own = mesh.name
    other = bpy.data.meshes.get(wanted)
    other_name = other.name if other is not None and other != mesh else None
    if other_name is not None:
        other.name = other_name + " (exporting)"
    mesh.name = wanted
    try:
        yield
    finally:
        mesh.name = own
        if other_name is not None:
            other.name = other_name


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
        if cached.lods and record.mode != "texture":
            self._levels_of_detail(context, obj, cached, record)
        if record.variant_group:  # a texture set arrived (or came back from the history): glTF's variants too
            texture_sets.sync_gltf_variants()
        return {"FINISHED"}

    def _levels_of_detail(self, context, obj, cached, record: JobRecord) -> None:
        """The finish stage's LOD1... as objects `<name>_LOD1`..., children of the object at its place (the
        same frame), each with its own UVs and material, hidden (they stand where the object stands)."""
        lods = _in_object_frame(cached.mesh, record).lods
        for i, (lod, stored) in enumerate(zip(lods, cached.lods), start=1):
            child = next((c for c in obj.children if c.get(LOD_PROP) == i and c.get(JOB_PROP) == self.job_id), None)
            if child is None:
                child = bpy.data.objects.new(f"{obj.name}_LOD{i}", mesh_io.new_mesh(f"{obj.name}_LOD{i}", lod))
                for collection in obj.users_collection:
                    collection.objects.link(child)
                child.parent = obj
                child[JOB_PROP], child[LOD_PROP] = self.job_id, i
            else:
                mesh_io.fill_mesh(child.data, lod)
            child.matrix_parent_inverse.identity()
            child.matrix_basis.identity()
            if stored.texture_files:
                mat = self._textured(child, stored, child.name, _job_material(child, self.job_id))
                mat[JOB_PROP] = self.job_id
                materials.assign_material(child, mat)
            child.hide_set(True)
            child.hide_render = True

    def _import(self, context, cached, record: JobRecord) -> bpy.types.Object:
        label = (record.prompt or "DreamPolish")[:40]
        refined = refine_target.find(record) if record.mode in ("texture", "geometry") else None
        if record.mode == "texture" and not self.new_object:
            if refined is None:
                self._say(f"{record.target_object!r}, the object the texture was made for, is gone: "
                          "the textured mesh is a new object")
            else:
                return self._texture_onto(refined, cached, record, label)
        # A geometry refine's result stands in for the original (not a re-import from the history).
        original = refined if record.mode == "geometry" and not self.new_object else None
        obj = self._existing(context)
        with _out_of_edit_mode(context, obj):
            obj = self._mesh_object(context, cached, record, label, obj, original)
            mine = _job_material(obj, self.job_id)
            if cached.texture_files:
                mat = self._textured(obj, cached, label, mine)
            elif cached.mesh.colors is not None and not (original is not None and _has_materials(original)):
                # A geometry refine of a mesh with materials keeps showing them until the texture arrives.
                mat = materials.color_attribute_material(f"{label} material", mine)
            else:
                return obj
            mat[JOB_PROP] = self.job_id
            materials.assign_material(obj, mat)
        return obj

    def _texture_onto(self, obj, cached, record: JobRecord, label: str) -> bpy.types.Object:
        """Texture-only: the artist's object keeps its own topology, UVs and materials; the texture goes
        on the faces of the slot chosen at submit (or on every face)."""
        if not cached.texture_files:
            return obj
        slot = record.target_slot
        slots = obj.data.materials
        held = slots[slot] if 0 <= slot < len(slots) else None
        mine = held if held is not None and held.get(JOB_PROP) == self.job_id else None
        mat = self._textured(obj, cached, label, mine)
        mat[JOB_PROP] = self.job_id
        materials.show_in_slot(obj, mat, slot)
        return obj

    def _textured(self, obj, cached, label: str, mine) -> bpy.types.Material:
        images = {
            role: materials.load_image(role, path, f"{label} {cached.stage} {role}")
            for role, path in cached.texture_files.items()
            if role in ("base_color", "normal", "roughness_metallic")
        }
        # The textures were baked on the UV map the payload carried: the mesh's active one.
        uv = obj.data.uv_layers.active
        return materials.textured_material(f"{label} material", images, mine,
                                           uv_map=uv.name if uv is not None else mesh_io.UV_LAYER_NAME)

    def _say(self, text: str) -> None:
        """In the status bar and in the panel's box, where the job's end ("done") does not cover it."""
        self.report({"WARNING"}, text)
        report_failure(text, status_bar=False)

    def _existing(self, context) -> bpy.types.Object | None:
        """The job's object a stage result updates in place, or None for a new object."""
        if self.new_object or context.scene.dreampolish.import_mode == "per_stage":
            return None
        obj = job_object(context, self.job_id)
        return obj if obj is not None and obj.type == "MESH" else None

    def _mesh_object(self, context, cached, record: JobRecord, label: str, obj, original) -> bpy.types.Object:
        mesh = _in_object_frame(cached.mesh, record)
        if obj is not None:
            mesh_io.fill_mesh(obj.data, mesh)  # in place: the artist's transform stays
            return obj
        per_stage = context.scene.dreampolish.import_mode == "per_stage"
        data = mesh_io.new_mesh(f"{label} {cached.stage}", mesh)
        obj = bpy.data.objects.new(f"{label} {cached.stage}" if per_stage else label, data)
        if record.origin_matrix:
            mesh_io.set_matrix(obj, _origin(record))
        else:
            # The backend's transform is relative to the frame the cameras were sent in.
            placed = np.eye(4, dtype=np.float32)
            placed[:3, 3] = record.placement
            mesh_io.set_matrix(obj, placed @ cached.mesh.transform)
        collections = [self._collection(context, record.job_id if per_stage else "")]
        if original is not None and not per_stage:
            collections = list(original.users_collection) or collections
        for collection in collections:
            collection.objects.link(obj)
        if original is not None:
            _stand_in_for(obj, original, context)
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
        if n == 0 and save_dir is None:
            self.report({"INFO"}, "The textures are in the file already (packed as they arrived)")
        else:
            self.report({"INFO"}, f"{n} textures stored {'beside the file' if save_dir else 'in the file'}")
        return {"FINISHED"}


def _drops_variants(obj: bpy.types.Object) -> bool:
    """The glTF exporter will drop obj's texture sets: before Blender 5.3 (5.0 checked) it reads the variant
    data from the mesh it makes with the modifiers applied, which has none (io_scene_gltf2 5.0,
    blender/exp/nodes.py: the copy made by to_mesh; 5.3 reads the object's own mesh)."""
    return (bpy.app.version < (5, 3) and any(m.show_viewport for m in obj.modifiers)
            and bool(texture_sets.set_materials(obj)[1]))


class DREAMPOLISH_OT_export_glb(bpy.types.Operator):
    """Save the selected DreamPolish object as a .glb through Blender's glTF exporter (your edits,
    modifiers and material included; its texture sets as glTF material variants)"""

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
        # The texture sets as glTF's own variant data, up to date (a set's material renamed or deleted since),
        # with the exporter's Material Variants on: its switch for writing KHR_materials_variants.
        texture_sets.sync_gltf_variants()
        if _drops_variants(obj):
            text = (f"Blender {bpy.app.version_string}'s glTF exporter leaves the texture sets (material variants) "
                    f"out of an object whose modifiers it applies: apply {obj.name!r}'s modifiers (Ctrl+A) to "
                    "export its sets")
            self.report({"WARNING"}, text)
            report_failure(text, status_bar=False)
        try:
            for other in selected:
                other.select_set(False)
            obj.select_set(True)
            with _mesh_named_as(obj):
                # The exporter converts Blender's Z-up to glTF's Y-up and applies the modifiers. Vertex
                # colours go only where the material uses them: an earlier stage's colours, left on the
                # mesh, are not written as a stale COLOR_1 (beside a made-up white COLOR_0).
                bpy.ops.export_scene.gltf(filepath=path, export_format="GLB", use_selection=True,
                                          export_apply=True, export_vertex_color="MATERIAL",
                                          export_all_vertex_colors=False)
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
