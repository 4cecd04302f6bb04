"""The add-on's operators (bpy.ops.dreampolish.*). Scene changes are undo steps ({'REGISTER', 'UNDO'});
requests to the backend are queued on the connection (bridge.py) and return at once."""

from __future__ import annotations

import dataclasses
import logging
import random
import secrets
import subprocess
from pathlib import Path

import bpy
import numpy as np
from bpy.props import BoolProperty, StringProperty
from mathutils import Vector

from . import bridge, camera_rig, client_key, job_events, materials, mesh_io, reference_image
from .job_cache import JobRecord
from .preferences import prefs, user_dir
from .protocol.client import ClientError, RequestRejected, load_server_public_key
from .protocol.errors import ProtocolError, ValidationError
from .protocol.job import JobSpec, parse_options, validate_spec, variant_specs
from .protocol.limits import Limits

log = logging.getLogger(__name__)

JOB_PROP = materials.JOB_PROP
STAGE_PROP = job_events.STAGE_PROP

_backend_process: subprocess.Popen | None = None


# --- shared checks ---------------------------------------------------------------------------------


def _settings(context) -> bridge.ConnectionSettings:
    p = prefs(context)
    key = ""
    if p.server_key:
        # The add-on's own key pair goes with every CURVE connection (made here on first use).
        try:
            key = str(client_key.ensure().secret_file)
        except OSError as exc:
            # Still connect: a backend without an allow-list serves a key made for this connection.
            job_events.report_failure(f"Could not make this Blender's client key: {exc}")
    return bridge.ConnectionSettings(address=p.backend_address, server_key=p.server_key, timeout_s=p.timeout_s,
                                     client_key=key)


def _ensure_connected(op: bpy.types.Operator, context) -> bool:
    """Start connecting unless connected or connecting, without waiting: requests queued now run
    once the handshake succeeds (a failed one is reported by job_events)."""
    if bridge.is_connected() or bridge.is_connecting():
        return True
    start_connecting(context)
    return True


def start_connecting(context) -> None:
    rt = context.window_manager.dreampolish
    rt.connection = "connecting"
    rt.message = f"Connecting to {prefs(context).backend_address}…"
    bridge.connect(_settings(context))


def _backend_limits() -> Limits:
    welcome = bridge.current_welcome()
    if welcome is None:
        return Limits()
    known = {k: v for k, v in welcome.limits.items() if k in Limits.__dataclass_fields__}
    return Limits(**known)


def parse_overrides(text: str) -> dict[str, bool | int | float | str]:
    """The panel's "Overrides" field: "nerf.steps=500, texture.guidance.objective=sds" -> options of the JobSpec."""
    return parse_options(text)


MODE_CHAINS: dict[str, tuple[str, ...]] = {
    "generate": ("reference", "nerf", "neus", "dmtet", "polish", "texture"),
    "geometry": ("dmtet", "polish", "texture"),
    "texture": ("texture",),
}
"""The stages each job mode runs, in order, without export (which follows texture by itself): the
backend's MODE_STAGES (backend/pipeline.py). It accepts an unbroken run from the mode's first stage."""


def stage_plan(mode: str, run_until: str) -> list[str]:
    """The stages a job of `mode` runs when the artist asks to run up to `run_until`."""
    chain = MODE_CHAINS[mode]
    if run_until not in chain:
        raise ValidationError(
            f"Run Up To is {run_until.capitalize()}, before a {mode} refine's first stage "
            f"({chain[0].capitalize()}): pick {chain[0].capitalize()} or a later stage")
    return list(chain[: chain.index(run_until) + 1])


def _preset_for(welcome) -> str:
    """The preset the artist chose, or the backend's announced default."""
    chosen = bpy.context.scene.dreampolish.preset_name
    if welcome is None:
        return chosen  # still connecting: an empty name is filled in once the backend has answered
    if chosen and chosen not in welcome.presets:
        # The dropdown shows "Backend Default" for a preset this backend does not offer: send that.
        log.info("preset %r is not offered by this backend; using its default %r", chosen, welcome.default_preset)
        return welcome.default_preset
    return chosen or welcome.default_preset


def _job_spec(context, mode: str, input_mesh=None, placement=None) -> JobSpec:
    """The request; a generate job's cameras are sent about `placement`, where its object will be."""
    s = context.scene.dreampolish
    plan = stage_plan(mode, s.run_until)
    cameras = camera_rig.scene_rig(context.scene, s.camera_collection, camera_rig.OrbitSettings(views=s.orbit_views))
    if placement is not None:
        cameras = camera_rig.rig_about(cameras, placement)
    picture = reference_image.chosen_image(context.scene) if mode == "generate" else None
    spec = JobSpec(
        prompt=s.prompt,
        negative_prompt=s.negative_prompt,
        seed=s.seed,
        preset=_preset_for(bridge.current_welcome()),
        mode=mode,
        stages=None if plan == list(MODE_CHAINS[mode]) else plan,
        # A pause after the last stage run would never be resumed into anything.
        pause_after=[st for st in plan[:-1] if st in s.pause_after],
        options=parse_overrides(s.overrides),
        cameras=cameras,  # the active camera first: the reference view, and the image's view
        input_mesh=input_mesh,
        image=None if picture is None else reference_image.reference_payload(picture, _backend_limits()),
    )
    # The backend's own first check, before anything is sent (an empty preset, still connecting, is the
    # backend's default once it has answered).
    validate_spec(dataclasses.replace(spec, preset=spec.preset or "default"))
    return spec


def triangle_count(mesh: bpy.types.Mesh) -> int:
    """Triangles of a mesh once triangulated: a polygon of k corners makes k - 2 (no per-face loop)."""
    return len(mesh.loops) - 2 * len(mesh.polygons)


def over_limits(obj: bpy.types.Object, limits: Limits) -> str:
    """Why the object is too large for the backend, or ""."""
    mesh = obj.data
    n_tris = triangle_count(mesh)
    if len(mesh.vertices) > limits.max_vertices:
        return f"mesh too large: {len(mesh.vertices)} vertices; the backend accepts at most {limits.max_vertices}"
    if n_tris > limits.max_faces:
        return f"mesh too large: {n_tris} triangles; the backend accepts at most {limits.max_faces}"
    return ""


def _record(spec: JobSpec, target_object: str = "", placement=None, variant_group: str = "") -> JobRecord:
    return JobRecord(job_id="", prompt=spec.prompt, seed=spec.seed, preset=spec.preset,
                     mode=spec.mode, target_object=target_object,
                     placement=[0.0, 0.0, 0.0] if placement is None else [float(x) for x in placement],
                     plan=list(spec.stages) if spec.stages else list(MODE_CHAINS[spec.mode]),
                     variant_group=variant_group)


def _submit(context, spec: JobSpec, target_object: str = "", placement=None) -> set[str]:
    """Queue the submit on the connection; the job id arrives as a reply (job_events)."""
    record = _record(spec, target_object, placement)
    rt = context.window_manager.dreampolish
    rt.job_state = "submitting"
    rt.message = "Submitting…"

    def submit(client):
        # Sent after the handshake: an empty preset is the default that backend announced.
        if not spec.preset and client.welcome is not None:
            spec.preset = record.preset = client.welcome.default_preset
        job_id = yield from client.submit_flow(spec)
        return job_id, record

    bridge.request("submit", submit)
    return {"FINISHED"}


def job_object(context, job_id: str, stage: str = "") -> bpy.types.Object | None:
    """The scene object holding a job's result (of `stage`, when given; else the latest)."""
    found = [o for o in context.scene.objects if o.get(JOB_PROP) == job_id]
    if stage:
        found = [o for o in found if o.get(STAGE_PROP) == stage] or found
    return found[-1] if found else None


# --- connection ----------------------------------------------------------------------------------


class DREAMPOLISH_OT_connect(bpy.types.Operator):
    """Connect to the backend set in the preferences"""

    bl_idname = "dreampolish.connect"
    bl_label = "Connect"

    def execute(self, context):
        key = prefs(context).server_key
        if key:
            try:
                load_server_public_key(key)  # a malformed key is said at once, not after a handshake
            except ClientError as exc:
                self.report({"ERROR"}, str(exc))
                return {"CANCELLED"}
        # Returns at once: the handshake's outcome shows in the panel when it arrives.
        start_connecting(context)
        job_events.refresh_history()
        return {"FINISHED"}


class DREAMPOLISH_OT_disconnect(bpy.types.Operator):
    """Close the connection to the backend (jobs keep running there)"""

    bl_idname = "dreampolish.disconnect"
    bl_label = "Disconnect"

    def execute(self, context):
        bridge.disconnect()
        context.window_manager.dreampolish.connection = "disconnected"
        return {"FINISHED"}


# --- jobs ----------------------------------------------------------------------------------------


class DREAMPOLISH_OT_generate(bpy.types.Operator):
    """Make a new object from the prompt, or from the reference image seen by the active camera"""

    bl_idname = "dreampolish.generate"
    bl_label = "Generate"

    @classmethod
    def poll(cls, context):
        s = context.scene.dreampolish
        if s.reference_source != "NONE" and reference_image.chosen_image(context.scene) is None:
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
        if not _ensure_connected(self, context):
            return {"CANCELLED"}
        placement = camera_rig.placement_point(context.scene, context.scene.dreampolish.placement)
        try:
            spec = _job_spec(context, "generate", placement=placement)
        except ProtocolError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return _submit(context, spec, placement=placement)


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
            self.report({"ERROR"}, str(exc))
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
        return DREAMPOLISH_OT_generate.poll(context)

    def execute(self, context):
        s = context.scene.dreampolish
        if not _ensure_connected(self, context):
            return {"CANCELLED"}
        first = camera_rig.placement_point(context.scene, s.placement)
        try:
            base = _job_spec(context, "generate")
            plan = stage_plan("generate", s.run_until)
            if s.variants_up_to not in plan[:-1]:
                raise ValidationError(f"Stop After ({s.variants_up_to}) must be a stage before Run Up To "
                                      f"({s.run_until}): the variants would have nothing left to continue")
            variants = variant_specs(base, s.variants, s.variants_up_to)
        except ProtocolError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        group = secrets.token_hex(4)
        jobs = []
        for spec, place in zip(variants, _variant_places(context, first, len(variants))):
            spec.cameras = camera_rig.rig_about(base.cameras, place)
            jobs.append((spec, _record(spec, placement=place, variant_group=group)))
        rt = context.window_manager.dreampolish
        rt.job_state = "submitting"
        rt.message = f"Submitting {len(jobs)} variants…"

        def submit(client):
            answers = []
            for spec, record in jobs:
                if not spec.preset and client.welcome is not None:
                    spec.preset = record.preset = client.welcome.default_preset
                try:
                    answers.append(((yield from client.submit_flow(spec)), record))
                except RequestRejected as exc:  # e.g. queue_full: the variants queued so far go on
                    if not answers:
                        raise
                    return answers, str(exc)
            return answers, ""

        bridge.request("submit_variants", submit)
        return {"FINISHED"}


def _variant_siblings(rt, job_id: str) -> tuple[str, list[str]]:
    """The variant group of job_id ("" if none) and its other jobs still going."""
    cache = job_events.job_cache()
    record = cache.load_record(job_id)
    group = record.variant_group if record is not None else ""
    if not group:
        return "", []
    others = [item.job_id for item in rt.jobs if item.job_id != job_id and item.state in job_events.GOING_STATES]
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

        def pick(client):
            yield from client.resume_flow(job_id)
            for other in others:
                yield from client.cancel_flow(other)

        # The picked variant becomes the job this window follows (its progress, its Resume/Cancel).
        job_events.follow_paused(rt, job_id)
        if not bridge.request("resume", pick):
            self.report({"ERROR"}, "Not connected to the backend")
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
            stage_plan(context.scene.dreampolish.refine_mode, context.scene.dreampolish.run_until)
        except ValidationError as exc:
            cls.poll_message_set(str(exc))
            return False
        # The mesh as sent: with its modifiers (the evaluated object the depsgraph already holds).
        too_large = over_limits(obj.evaluated_get(context.evaluated_depsgraph_get()), _backend_limits())
        if too_large:
            cls.poll_message_set(too_large)
            return False
        return True

    def execute(self, context):
        obj = context.active_object
        s = context.scene.dreampolish
        if not _ensure_connected(self, context):
            return {"CANCELLED"}
        try:
            mesh = mesh_io.payload_from_object(
                obj, context.evaluated_depsgraph_get(), world_space=True, limits=_backend_limits())
            if s.refine_mode == "texture" and mesh.uvs is None:
                self.report({"ERROR"}, f"{obj.name!r} has no UV map: unwrap it, or use Geometry + Texture")
                return {"CANCELLED"}
            spec = _job_spec(context, s.refine_mode, input_mesh=mesh)
        except ProtocolError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if not spec.prompt:
            spec.prompt = obj.name
        return _submit(context, spec, target_object=obj.name if s.refine_mode == "texture" else "")


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
        if not bridge.request("cancel", lambda client: client.cancel_flow(job_id)):
            self.report({"ERROR"}, "Not connected to the backend")
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
                # The backend's frame is the mesh's own: the object's transform is the artist's.
                mesh = mesh_io.payload_from_object(
                    obj, context.evaluated_depsgraph_get(), world_space=False, limits=_backend_limits())
                mesh.transform = np.eye(4, dtype=np.float32)
            except ProtocolError as exc:
                self.report({"ERROR"}, str(exc))
                return {"CANCELLED"}
        job_id = rt.job_id
        if not bridge.request("resume", lambda client: client.resume_flow(job_id, mesh)):
            self.report({"ERROR"}, "Not connected to the backend")
            return {"CANCELLED"}
        rt.message = "Resuming" + (f" from {obj.name!r}" if obj is not None else "")
        return {"FINISHED"}


# --- scene changes -------------------------------------------------------------------------------


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
        cache = job_events.job_cache()
        cached = cache.load_stage(self.job_id, self.stage)
        record = cache.load_record(self.job_id)
        if cached is None or record is None:
            self.report({"ERROR"}, f"No stored result for job {self.job_id!r}: fetch it from the backend")
            return {"CANCELLED"}
        try:
            obj = self._import(context, cached, record)
        except Exception as exc:  # noqa: BLE001 - the artist is told, the add-on goes on
            log.exception("importing %s of job %s failed", cached.stage, self.job_id)
            self.report({"ERROR"}, f"Could not import the {cached.stage} result of job {self.job_id}: {exc}")
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
                self.report({"ERROR"}, "Save the .blend first, or pack the textures instead")
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
            self.report({"ERROR"}, "Choose where to save the .glb")
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


class DREAMPOLISH_OT_report(bpy.types.Operator):
    """Show a failure in the status bar and the Info log"""

    bl_idname = "dreampolish.report"
    bl_label = "Report"
    bl_options = {"INTERNAL"}

    message: StringProperty(name="Message")

    def execute(self, context):
        self.report({"ERROR"}, self.message)
        return {"CANCELLED"}


class DREAMPOLISH_OT_copy_client_key(bpy.types.Operator):
    """Copy this Blender's public client key, to send to the backend's administrator"""

    bl_idname = "dreampolish.copy_client_key"
    bl_label = "Copy Public Key"
    bl_options = {"INTERNAL"}

    def execute(self, context):
        key = client_key.ensure().public_key
        context.window_manager.clipboard = key
        self.report({"INFO"}, f"Copied the public client key {key[:8]}…")
        return {"FINISHED"}


class DREAMPOLISH_OT_randomize_seed(bpy.types.Operator):
    """Pick a new random seed"""

    bl_idname = "dreampolish.randomize_seed"
    bl_label = "Randomise Seed"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        context.scene.dreampolish.seed = random.randrange(0, 2**31 - 1)
        return {"FINISHED"}


# --- history -------------------------------------------------------------------------------------


def _history_picked(operator: type, rt) -> bool:
    """A job of the history list is picked (else the operator's poll message says to pick one)."""
    if 0 <= rt.history_index < len(rt.history):
        return True
    operator.poll_message_set("Pick a job in the history list")
    return False


def _fetch_result(rt, job_id: str) -> None:
    """Ask for every stage of the job; the reply (job_events) stores them and imports the latest."""
    bridge.request("fetch_result", lambda client: client.fetch_result_flow(job_id))
    rt.message = f"Fetching job {job_id} from the backend…"


class DREAMPOLISH_OT_reimport(bpy.types.Operator):
    """Import the selected history job's latest result again, as a new object: fetched from the backend
    when connected (it may have newer stages than the cache), else from the cache"""

    bl_idname = "dreampolish.reimport"
    bl_label = "Re-import"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        rt = context.window_manager.dreampolish
        if not _history_picked(cls, rt):
            return False
        return True

    def execute(self, context):
        rt = context.window_manager.dreampolish
        job_id = rt.history[rt.history_index].job_id
        if bridge.is_connected():
            # The reply (job_events) stores every stage and imports the latest one; the job this
            # window follows stays followed.
            _fetch_result(rt, job_id)
            return {"FINISHED"}
        if job_events.job_cache().load_stage(job_id) is not None:
            return bpy.ops.dreampolish.import_result(job_id=job_id, new_object=True)
        if not _ensure_connected(self, context):
            return {"CANCELLED"}
        _fetch_result(rt, job_id)
        return {"FINISHED"}


class DREAMPOLISH_OT_attach(bpy.types.Operator):
    """Follow the selected history job again: it is still going on the backend, and its remaining
    stages land in its objects"""

    bl_idname = "dreampolish.attach"
    bl_label = "Follow Job"

    @classmethod
    def poll(cls, context):
        rt = context.window_manager.dreampolish
        if not _history_picked(cls, rt):
            return False
        if rt.history[rt.history_index].status not in job_events.GOING_STATES:
            cls.poll_message_set("That job is not running on the backend")
            return False
        if not bridge.is_connected():
            cls.poll_message_set("Connect to the backend first")
            return False
        return True

    def execute(self, context):
        rt = context.window_manager.dreampolish
        job_events.attach(rt, rt.history[rt.history_index].job_id)
        return {"FINISHED"}


class DREAMPOLISH_OT_refresh_history(bpy.types.Operator):
    """Reload the job history (and the states the backend knows)"""

    bl_idname = "dreampolish.refresh_history"
    bl_label = "Refresh History"

    def execute(self, context):
        job_events.refresh_history()
        if bridge.is_connected():
            bridge.request("list_jobs", lambda client: client.list_jobs_flow())
        return {"FINISHED"}


# --- local backend -------------------------------------------------------------------------------


def backend_running() -> bool:
    return _backend_process is not None and _backend_process.poll() is None


class DREAMPOLISH_OT_backend_start(bpy.types.Operator):
    """Start the backend executable set in the preferences on this machine"""

    bl_idname = "dreampolish.backend_start"
    bl_label = "Start Backend"

    @classmethod
    def poll(cls, context):
        if backend_running():
            cls.poll_message_set("The local backend is already running")
            return False
        if not prefs(context).backend_executable:
            cls.poll_message_set("Set the path of the backend executable in the preferences")
            return False
        return True

    def execute(self, context):
        global _backend_process
        p = prefs(context)
        exe = bpy.path.abspath(p.backend_executable)
        cmd = [exe, "serve", "--bind", p.backend_address, "--store", str(user_dir("store"))]
        if p.backend_pipeline:
            cmd += ["--pipeline", p.backend_pipeline]
        try:
            _backend_process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        except OSError as exc:
            self.report({"ERROR"}, f"Could not start {exe}: {exc}")
            return {"CANCELLED"}
        context.window_manager.dreampolish.backend_running = True
        self.report({"INFO"}, f"Backend started on {p.backend_address}")
        return {"FINISHED"}


def stop_backend(timeout_s: float = 10.0) -> None:
    global _backend_process
    proc, _backend_process = _backend_process, None
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class DREAMPOLISH_OT_backend_stop(bpy.types.Operator):
    """Stop the backend this add-on started"""

    bl_idname = "dreampolish.backend_stop"
    bl_label = "Stop Backend"

    @classmethod
    def poll(cls, context):
        if not backend_running():
            cls.poll_message_set("No local backend started by DreamPolish is running")
            return False
        return True

    def execute(self, context):
        bridge.disconnect()
        stop_backend()
        rt = context.window_manager.dreampolish
        rt.backend_running = False
        rt.connection = "disconnected"
        return {"FINISHED"}


classes = (
    DREAMPOLISH_OT_connect,
    DREAMPOLISH_OT_disconnect,
    DREAMPOLISH_OT_generate,
    DREAMPOLISH_OT_open_reference_image,
    DREAMPOLISH_OT_generate_variants,
    DREAMPOLISH_OT_pick_variant,
    DREAMPOLISH_OT_refine_selected,
    DREAMPOLISH_OT_cancel,
    DREAMPOLISH_OT_resume,
    DREAMPOLISH_OT_import_result,
    DREAMPOLISH_OT_bake_to_material,
    DREAMPOLISH_OT_export_glb,
    DREAMPOLISH_OT_report,
    DREAMPOLISH_OT_copy_client_key,
    DREAMPOLISH_OT_randomize_seed,
    DREAMPOLISH_OT_reimport,
    DREAMPOLISH_OT_attach,
    DREAMPOLISH_OT_refresh_history,
    DREAMPOLISH_OT_backend_start,
    DREAMPOLISH_OT_backend_stop,
)
