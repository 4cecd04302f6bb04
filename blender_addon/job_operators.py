"""The job operators: Generate (and its seed variants), Refine Selected, Resume, Cancel, and the
panel's helpers for them (reference image, seed). They build the request (job_request.py), queue it
and return at once; what the backend answers arrives later (job_follow.py, job_events.py)."""

from __future__ import annotations

import random
import secrets

import bpy
import numpy as np
from bpy.props import BoolProperty, StringProperty
from mathutils import Vector

from . import (
    camera_rig,
    job_request,
    materials,
    mesh_io,
    reference_image,
    reference_views,
    refine_mask,
    refine_target,
    stage_choices,
    udim,
)
from .connection import ensure_connected
from .job_cache import JobRecord
from .job_follow import GOING_STATES, follow_paused, job_cache
from .job_request import backend_limits, job_record, job_spec, over_limits, stage_plan
from .protocol.errors import ProtocolError, ValidationError
from .protocol.job import variant_specs
from .reporting import report_error
from .scene_operators import job_object


class DREAMPOLISH_OT_generate(bpy.types.Operator):
    """Make a new object from the prompt, or from the reference image seen by the active camera"""

    bl_idname = "dreampolish.generate"
    bl_label = "Generate"

    @classmethod
    def poll(cls, context):
        s = context.scene.dreampolish
        if s.reference_source == "CAMERAS":
            found = reference_views.problems(context.scene)
            if found:
                cls.poll_message_set(found[0])
                return False
        elif s.reference_source != "NONE" and reference_image.chosen_image(context.scene) is None:
            cls.poll_message_set("Choose a reference image first" if s.reference_source == "IMAGE"
                                 else "The active camera has no background image")
            return False
        if s.reference_source == "NONE" and not s.prompt.strip():
            cls.poll_message_set("Write a prompt first (or choose a reference image)")
            return False
        if context.window_manager.dreampolish.job_state == "submitting":
            cls.poll_message_set("Sending the last job: wait for the backend's answer")
            return False
        return True

    def execute(self, context):
        ensure_connected(context)
        s = context.scene.dreampolish
        placement = (reference_views.placement(context.scene) if s.reference_source == "CAMERAS"
                     else camera_rig.placement_point(context.scene, s.placement))
        try:
            spec = job_spec(context, "generate", placement=placement)
        except ProtocolError as exc:
            report_error(self, str(exc))
            return {"CANCELLED"}
        return job_request.submit(context, spec, job_record(spec, placement=placement))


class DREAMPOLISH_OT_open_reference_image(bpy.types.Operator):
    """Open a picture of the object as the reference view (seen from the active camera)"""

    bl_idname = "dreampolish.open_reference_image"
    bl_label = "Open Reference Image"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(subtype="FILE_PATH")
    filter_image: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        try:
            image = bpy.data.images.load(self.filepath, check_existing=True)
        except RuntimeError as exc:  # Blender's message names the file and why it cannot be read
            report_error(self, str(exc))
            return {"CANCELLED"}
        image.preview_ensure()
        s = context.scene.dreampolish
        s.reference_image, s.reference_source = image, "IMAGE"
        return {"FINISHED"}


VARIANT_SPACING = 1.5
"""Gap between variants placed side by side, in units of the first one's distance from the camera
divided by 4 (a generated object is sized by that distance: camera_rig.rig_about)."""


def _variant_places(context, first, count: int) -> list:
    """Where the variants go: in a row along the active camera's right axis (world X without one),
    so that they stand side by side in the camera's view."""
    cam = context.scene.camera
    right = cam.matrix_world.to_3x3().col[0].normalized() if cam is not None else Vector((1.0, 0.0, 0.0))
    distance = (first - cam.matrix_world.translation).length if cam is not None else 4.0
    step = right * (VARIANT_SPACING * distance / 4.0)
    return [first + step * i for i in range(count)]


class DREAMPOLISH_OT_generate_variants(bpy.types.Operator):
    """Try several seeds of the prompt side by side; each stops after Stop After for you to pick one"""

    bl_idname = "dreampolish.generate_variants"
    bl_label = "Generate Variants"

    @classmethod
    def poll(cls, context):
        why = stage_choices.why_no_choice()  # Stop After is one of the stages the backend lists
        if why:
            cls.poll_message_set(why)
            return False
        return DREAMPOLISH_OT_generate.poll(context)

    def execute(self, context):
        s = context.scene.dreampolish
        ensure_connected(context)
        first = camera_rig.placement_point(context.scene, s.placement)
        try:
            base = job_spec(context, "generate")
            # Each variant's size (and the surface it rests on) is the first one's.
            base.options = {**camera_rig.placement_options(context.scene, first), **base.options}
            plan = stage_plan("generate", s.run_until)
            if s.variants_up_to not in plan[:-1]:
                raise ValidationError(f"Stop After ({s.variants_up_to}) must be a stage before Run Up To "
                                      f"({s.run_until}): the variants would have nothing left to continue")
            variants = variant_specs(base, s.variants, s.variants_up_to)
        except ProtocolError as exc:
            report_error(self, str(exc))
            return {"CANCELLED"}
        group = secrets.token_hex(4)
        jobs = []
        for spec, place in zip(variants, _variant_places(context, first, len(variants))):
            spec.cameras = camera_rig.rig_about(base.cameras, place)
            jobs.append((spec, job_record(spec, placement=place, variant_group=group)))
        return job_request.submit_variants(context, jobs)


def _variant_siblings(rt, job_id: str) -> tuple[str, list[str]]:
    """The variant group of job_id ("" if none) and its other jobs still going."""
    cache = job_cache()
    record = cache.load_record(job_id)
    group = record.variant_group if record is not None else ""
    if not group:
        return "", []
    others = [item.job_id for item in rt.jobs if item.job_id != job_id and item.state in GOING_STATES]
    return group, [j for j in others if (cache.load_record(j) or JobRecord(job_id=j)).variant_group == group]


class DREAMPOLISH_OT_pick_variant(bpy.types.Operator):
    """Continue the selected variant through its remaining stages and cancel the other variants"""

    bl_idname = "dreampolish.pick_variant"
    bl_label = "Continue This Variant"

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        job_id = obj.get(materials.JOB_PROP) if obj is not None and obj.select_get() else None
        rt = context.window_manager.dreampolish
        item = next((i for i in rt.jobs if i.job_id == job_id), None) if job_id else None
        if item is None or not _variant_siblings(rt, job_id)[0]:
            cls.poll_message_set("Select one of the variants' objects")
            return False
        if item.state != "paused":
            cls.poll_message_set("That variant has not reached its stop yet")
            return False
        return True

    def execute(self, context):
        rt = context.window_manager.dreampolish
        job_id = context.active_object[materials.JOB_PROP]
        _, others = _variant_siblings(rt, job_id)
        # The picked variant becomes the job this window follows (its progress, its Resume/Cancel).
        follow_paused(rt, job_id)
        if not job_request.resume(job_id, cancel_others=tuple(others)):
            report_error(self, "Not connected to the backend")
            return {"CANCELLED"}
        rt.message = f"Continuing variant {job_id}" + (f"; cancelling {len(others)} others" if others else "")
        return {"FINISHED"}


class DREAMPOLISH_OT_refine_selected(bpy.types.Operator):
    """Polish and texture the selected mesh, or only texture it on its own UVs (greyed out while the
    mesh is over the backend's vertex or face limit)"""

    bl_idname = "dreampolish.refine_selected"
    bl_label = "Refine Selected"

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        if obj is None or not obj.select_get():
            cls.poll_message_set("Nothing selected: select a mesh object to refine")
            return False
        if obj.type != "MESH":
            cls.poll_message_set(f"{obj.name!r} is a {obj.type.lower()}, not a mesh")
            return False
        if context.window_manager.dreampolish.job_state == "submitting":
            cls.poll_message_set("Sending the last job: wait for the backend's answer")
            return False
        try:
            job_request.planned_stages(context.scene.dreampolish.refine_mode, context.scene.dreampolish)
        except ValidationError as exc:
            cls.poll_message_set(str(exc))
            return False
        # The mesh as sent: with its modifiers (the evaluated object the depsgraph already holds).
        too_large = over_limits(obj.evaluated_get(context.evaluated_depsgraph_get()), backend_limits())
        if too_large:
            cls.poll_message_set(too_large)
            return False
        return True

    def invoke(self, context, event):
        if not context.scene.dreampolish.prompt.strip():
            # Ask, rather than guess the object from its name ("Cube.001" makes a poor prompt).
            return context.window_manager.invoke_props_dialog(self, title="What is this object?",
                                                              confirm_text="Refine")
        return self.execute(context)

    def draw(self, context):
        self.layout.label(text="The refine follows the prompt: describe the selected object")
        self.layout.prop(context.scene.dreampolish, "prompt")

    def execute(self, context):
        obj = context.active_object
        s = context.scene.dreampolish
        ensure_connected(context)
        try:
            mesh = mesh_io.payload_from_object(
                obj, context.evaluated_depsgraph_get(), world_space=True, limits=backend_limits())
            if s.refine_mode == "texture" and mesh.uvs is None:
                report_error(self, f"{obj.name!r} has no UV map: unwrap it, or use Geometry + Texture")
                return {"CANCELLED"}
            mask = refine_mask.request_mask(context, obj, mesh, s.refine_mode)
            spec = job_spec(context, s.refine_mode, input_mesh=mesh, mask=mask,
                            udim_tiles=udim.request_tiles(mesh, s.refine_mode))
        except ProtocolError as exc:
            report_error(self, str(exc))
            return {"CANCELLED"}
        if not spec.prompt.strip():
            report_error(self, "Prompt is empty: Refine Selected needs one; describe the selected object "
                        f"(e.g. 'a wooden crate'), as its name {obj.name!r} may not")
            return {"CANCELLED"}
        return job_request.submit(context, spec, _refine_record(spec, obj, s.texture_faces))


def _refine_record(spec, obj: bpy.types.Object, texture_faces: str) -> JobRecord:
    """The record of a refine of `obj`: the object found again by its key, not its name
    (refine_target.py); a texture-only refine's slot; a geometry refine's frame (scene_operators.py
    gives the result the original's transform and origin)."""
    record = job_record(spec, target_object=obj.name)
    record.target_key = refine_target.mark(obj)
    if spec.mode == "texture" and texture_faces == "ACTIVE_SLOT" and len(obj.material_slots):
        record.target_slot = obj.active_material_index
    matrix = np.array(obj.matrix_world, dtype=np.float64)
    if spec.mode == "geometry" and abs(np.linalg.det(matrix[:3, :3])) > 1e-12:
        record.origin_matrix = [float(x) for x in matrix.ravel()]
    return record


class DREAMPOLISH_OT_cancel(bpy.types.Operator):
    """Cancel the running job"""

    bl_idname = "dreampolish.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        rt = context.window_manager.dreampolish
        if not rt.job_id or rt.job_state not in ("queued", "running", "paused"):
            cls.poll_message_set("No job to cancel")
            return False
        return True

    def execute(self, context):
        rt = context.window_manager.dreampolish
        job_id = rt.job_id
        if not job_request.cancel(job_id):
            report_error(self, "Not connected to the backend")
            return {"CANCELLED"}
        rt.message = "Cancelling…"
        return {"FINISHED"}


class DREAMPOLISH_OT_resume(bpy.types.Operator):
    """Continue the paused job from the job's object as it is now (your edits included)"""

    bl_idname = "dreampolish.resume"
    bl_label = "Resume"

    @classmethod
    def poll(cls, context):
        if context.window_manager.dreampolish.job_state != "paused":
            cls.poll_message_set("The job is not paused")
            return False
        return True

    def execute(self, context):
        rt = context.window_manager.dreampolish
        obj = job_object(context, rt.job_id, rt.paused_stage)
        mesh = None
        if obj is not None:
            if obj.mode == "EDIT":
                obj.update_from_editmode()  # resume from what the artist sees, without leaving Edit Mode
            try:
                # The object's transform is the artist's: the mesh goes back in the backend's frame, the
                # mesh's own, or for a geometry refine the world as the original was sent (its frame at submit).
                # after the finish stage the artist edits the game-ready quads: they go back as quads
                mesh = mesh_io.payload_from_object(
                    obj, context.evaluated_depsgraph_get(), world_space=False, limits=backend_limits(),
                    polygons=rt.paused_stage == "finish")
                record = job_cache().load_record(rt.job_id)
                if record is not None and record.origin_matrix:
                    mesh.transform = np.array(record.origin_matrix, dtype=np.float32).reshape(4, 4)
                    mesh = mesh.in_world()
                else:  # the mesh data is the stage result's, in the job's frame: send that frame with it
                    mesh.transform = job_request.job_frame(rt.job_id, rt.paused_stage)
            except ProtocolError as exc:
                report_error(self, str(exc))
                return {"CANCELLED"}
        job_id = rt.job_id
        if not job_request.resume(job_id, mesh):
            report_error(self, "Not connected to the backend")
            return {"CANCELLED"}
        rt.message = "Resuming" + (f" from {obj.name!r}" if obj is not None else "")
        return {"FINISHED"}


class DREAMPOLISH_OT_randomize_seed(bpy.types.Operator):
    """Pick a new random seed"""

    bl_idname = "dreampolish.randomize_seed"
    bl_label = "Randomise Seed"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        context.scene.dreampolish.seed = random.randrange(0, 2**31 - 1)
        return {"FINISHED"}


classes = (
    DREAMPOLISH_OT_generate,
    DREAMPOLISH_OT_open_reference_image,
    DREAMPOLISH_OT_generate_variants,
    DREAMPOLISH_OT_pick_variant,
    DREAMPOLISH_OT_refine_selected,
    DREAMPOLISH_OT_cancel,
    DREAMPOLISH_OT_resume,
    DREAMPOLISH_OT_randomize_seed,
)
