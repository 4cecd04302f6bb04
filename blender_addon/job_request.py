"""What the job operators send: the JobSpec built from the panel (its stage plan, preset, cameras,
reference image), the JobRecord kept for it on disk, and the job requests with their handlers
(submit, cancel, resume). Requests are queued on the connection (bridge.py) and return at once."""

from __future__ import annotations

import dataclasses
import logging

import bpy
import numpy as np

from . import bridge, camera_rig, reference_image, reference_views, stage_choices
from .job_cache import JobRecord
from .job_follow import follow, job_cache, refresh_history, shown_job_state
from .protocol.client import RequestRejected
from .protocol.errors import ValidationError
from .protocol.job import JobSpec, parse_options, validate_spec
from .protocol.limits import Limits
from .protocol.refine_mask import masked_chain
from .reporting import button_request_failed, runtime

log = logging.getLogger(__name__)

_submitting: bridge.Request | None = None
"""The last submit queued: while it has no answer, Generate and Refine wait for it."""

stage_plan = stage_choices.stage_plan


def planned_stages(mode: str, settings) -> list[str] | None:
    """The `stages` of the request: the run the artist chose from the backend's chain of `mode`
    (stage_choices.py), or None for the whole chain. Nothing chosen is the whole chain, also before the
    backend has listed its stages; a choice needs its list (ValidationError saying so)."""
    if stage_choices.why_no_choice() and not settings.run_until_name and not settings.pause_after_names:
        return None
    plan = stage_plan(mode, settings.run_until)
    return None if plan == stage_choices.mode_chain(mode) else plan


def parse_overrides(text: str) -> dict[str, bool | int | float | str]:
    """The panel's "Overrides" field: "nerf.steps=500, texture.guidance.objective=sds" -> options of the JobSpec."""
    return parse_options(text)


def backend_limits() -> Limits:
    """The limits the connected backend announced (the protocol's defaults before a welcome)."""
    welcome = bridge.current_welcome()
    if welcome is None:
        return Limits()
    known = {k: v for k, v in welcome.limits.items() if k in Limits.__dataclass_fields__}
    return Limits(**known)


def preset_for(welcome) -> str:
    """The preset the artist chose, or the backend's announced default."""
    chosen = bpy.context.scene.dreampolish.preset_name
    if welcome is None:
        return chosen  # still connecting: an empty name is filled in once the backend has answered
    if chosen and chosen not in welcome.presets:
        # The dropdown shows "Backend Default" for a preset this backend does not offer: send that.
        log.info("preset %r is not offered by this backend; using its default %r", chosen, welcome.default_preset)
        return welcome.default_preset
    return chosen or welcome.default_preset


def job_spec(context, mode: str, input_mesh=None, placement=None, mask=None, udim_tiles=()) -> JobSpec:
    """The request; a generate job's cameras are sent about `placement`, where its object will be; `mask` and
    `udim_tiles`, a refine's (refine_mask.py, udim.py)."""
    s = context.scene.dreampolish
    plan = planned_stages(mode, s)
    if mask is not None and plan is not None:  # a masked refine skips the stages that re-mesh
        if not masked_chain(plan):
            raise ValidationError(f"a masked refine keeps the mesh and does not run {', '.join(plan)}: set Run Up "
                                  "To to a later stage, or clear Mask")
        plan = masked_chain(plan)
    cameras = camera_rig.scene_rig(context.scene, s.camera_collection, camera_rig.OrbitSettings(views=s.orbit_views))
    if placement is not None:
        cameras = camera_rig.rig_about(cameras, placement)
    picture = reference_image.chosen_image(context.scene) if mode == "generate" else None
    views = (reference_views.views_payload(context.scene, backend_limits())
             if mode == "generate" and s.reference_source == "CAMERAS" else [])
    if placement is not None:  # the pictures' cameras about the placement too, as the rig's are
        views = [dataclasses.replace(v, camera=camera_rig.rig_about([v.camera], placement)[0]) for v in views]
    spec = JobSpec(
        prompt=s.prompt,
        negative_prompt=s.negative_prompt,
        seed=s.seed,
        preset=preset_for(bridge.current_welcome()),
        mode=mode,
        stages=plan,
        # A pause after the last stage run would never be resumed into anything.
        pause_after=[] if plan is None and not s.pause_after_names else
        [st for st in (plan or stage_choices.mode_chain(mode))[:-1] if st in s.pause_after
         and (mask is None or st in masked_chain([st]))],
        # The object's size (camera_rig.placement_options) goes with its placement; the artist's overrides win.
        options={**({} if placement is None else camera_rig.placement_options(context.scene, placement)),
                 **game_ready_options(s, mode, masked=mask is not None), **parse_overrides(s.overrides)},
        cameras=cameras,  # the active camera first: the reference view, and the image's view
        input_mesh=input_mesh,
        image=None if picture is None else reference_image.reference_payload(picture, backend_limits()),
        mask=mask,
        udim_tiles=list(udim_tiles),
        views=views,
    )
    # The backend's own first check, before anything is sent (an empty preset, still connecting, is the
    # backend's default once it has answered).
    validate_spec(dataclasses.replace(spec, preset=spec.preset or "default"))
    return spec


def game_ready_options(settings, mode: str, masked: bool = False) -> dict[str, bool | int]:
    """The panel's Game-ready box as the backend's finish options (a texture-only job and a masked refine keep
    their mesh's topology: the backend refuses a budget with a mask)."""
    if not settings.game_ready or mode == "texture" or masked:
        return {}
    return {"finish.faces": int(settings.game_faces), "finish.quads": bool(settings.game_quads),
            "finish.lods": int(settings.game_lods)}


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


def _announced_chain(mode: str) -> list[str]:
    """The mode's whole chain as announced; [] before a welcome (the submit fills it in:
    _with_default_preset)."""
    try:
        return stage_choices.mode_chain(mode)
    except ValidationError:
        return []


def job_record(spec: JobSpec, target_object: str = "", placement=None, variant_group: str = "") -> JobRecord:
    """What the history keeps of the job (its id is filled in once the backend has answered)."""
    return JobRecord(job_id="", prompt=spec.prompt, seed=spec.seed, preset=spec.preset,
                     mode=spec.mode, target_object=target_object,
                     placement=[0.0, 0.0, 0.0] if placement is None else [float(x) for x in placement],
                     plan=list(spec.stages) if spec.stages else (
                         _announced_chain(spec.mode) if spec.mask is None else masked_chain(_announced_chain(spec.mode))),
                     variant_group=variant_group)


# --- the requests -------------------------------------------------------------------------------


def submit_pending() -> bool:
    """A submit queued on the current connection has no answer yet."""
    return bridge.is_pending(_submitting)


def _submit_failed(exc: BaseException) -> None:
    rt = runtime()
    rt.job_state = shown_job_state(rt)  # the job followed before the submit is still going
    button_request_failed(exc)


def _with_default_preset(client, spec: JobSpec, record: JobRecord) -> None:
    # Sent after the handshake: an empty preset is the default that backend announced, and a job built
    # before it answered runs its mode's whole chain, as announced.
    if not spec.preset and client.welcome is not None:
        spec.preset = record.preset = client.welcome.default_preset
    if not record.plan and client.welcome is not None:
        chain = list(client.welcome.stage_chains.get(spec.mode, []))
        record.plan = chain if spec.mask is None else masked_chain(chain)


def submit(context, spec: JobSpec, record: JobRecord) -> set[str]:
    """Queue the submit on the connection; the job is followed once the backend has named it."""
    global _submitting
    rt = context.window_manager.dreampolish
    rt.job_state = "submitting"
    rt.message = "Submitting…"

    def submit_flow(client):
        _with_default_preset(client, spec, record)
        return (yield from client.submit_flow(spec))

    def submitted(job_id: str) -> None:
        record.job_id = job_id
        job_cache().save_record(record)
        rt = runtime()
        follow(rt, job_id, "queued", target=record.target_object)
        refresh_history(rt)
        rt.message = f"Job {job_id} queued"

    _submitting = bridge.request("Submit", submit_flow, on_reply=submitted, on_error=_submit_failed)
    return {"FINISHED"}


def submit_variants(context, jobs: list[tuple[JobSpec, JobRecord]], what: str = "variants") -> set[str]:
    """Queue the seed variants' submits (or texture sets': `what`) as one request: a refusal (e.g. queue_full)
    after the first leaves those queued so far going."""
    global _submitting
    rt = context.window_manager.dreampolish
    rt.job_state = "submitting"
    rt.message = f"Submitting {len(jobs)} {what}…"

    def submit_flow(client):
        answers = []
        for spec, record in jobs:
            _with_default_preset(client, spec, record)
            try:
                answers.append(((yield from client.submit_flow(spec)), record))
            except RequestRejected as exc:
                if not answers:
                    raise
                return answers, str(exc)
        return answers, ""

    def submitted(outcome: tuple[list[tuple[str, JobRecord]], str]) -> None:
        answers, refused = outcome
        rt = runtime()
        cache = job_cache()
        for job_id, record in answers:
            record.job_id = job_id
            cache.save_record(record)
            follow(rt, job_id, "queued")  # the last one stays the job shown in full; all are followed
        refresh_history(rt)
        rt.message = (f"{len(answers)} variants queued: pick one when they pause" if what == "variants" else
                      f"{len(answers)} {what} queued")
        if refused:
            rt.message = f"Only {len(answers)} {what} queued; the next was refused: {refused}"

    _submitting = bridge.request("Submit variants", submit_flow, on_reply=submitted, on_error=_submit_failed)
    return {"FINISHED"}


def _resumed(_: object) -> None:
    rt = runtime()
    rt.job_state = "running"
    rt.paused_stage = ""


def job_frame(job_id: str, stage: str):
    """The job's object-to-world transform, as its stage result carried it (the frame its object's mesh
    data is in): what an edited mesh sent back with resume carries, so that the backend takes it from
    there into the job's frame (protocol/README.md, mesh). Identity when nothing is cached."""
    cached = job_cache().load_stage(job_id, stage)
    return np.eye(4, dtype=np.float32) if cached is None else np.asarray(cached.mesh.transform, np.float32)


def resume(job_id: str, mesh=None, cancel_others: tuple[str, ...] = ()) -> bool:
    """Continue the paused job (from `mesh`, the artist's edit, when given), then cancel the jobs in
    cancel_others (a picked variant's siblings). False when not connected."""
    def resume_flow(client):
        yield from client.resume_flow(job_id, mesh)
        for other in cancel_others:
            yield from client.cancel_flow(other)

    return bridge.request("Resume", resume_flow, on_reply=_resumed, on_error=button_request_failed) is not None


def cancel(job_id: str) -> bool:
    """Cancel the job; its end arrives as an event. False when not connected."""
    return bridge.request("Cancel", lambda client: client.cancel_flow(job_id),
                          on_reply=lambda _: None, on_error=button_request_failed) is not None
