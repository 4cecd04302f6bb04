"""What each backend event does to Blender, applied on the main thread by bridge.drain().

Events are dispatched by their message class through one table, HANDLERS. Each handler updates
the jobs list's item of a followed job, and the panel's own fields when the job is the one shown in
full; events of jobs this window does not follow are dropped.

Progress and state go to the window manager's runtime properties (the panel draws them). A stage
result goes to the job cache on disk and into the scene through the import operator
(scene_operators.py says why both).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import bpy
import numpy as np

from . import camera_rig
from .job_cache import JobCache
from .job_follow import clock, job_cache, job_item, refresh_history
from .materials import JOB_PROP
from .protocol.messages import (
    BUDGET_CAPPED,
    DEVICE_MEMORY_GB,
    MEMORY_NEEDED_GB,
    PRIORS_OFFLOADED,
    REMESH_FALLBACK,
    SLOW_RASTERIZER,
    Cancelled,
    Done,
    Error,
    Failed,
    Message,
    Paused,
    Progress,
    Result,
    Resumed,
    StageResult,
)
from .reporting import failure_text, report_failure, runtime
from .scene_operators import STAGE_PROP, import_stage

log = logging.getLogger(__name__)

PREVIEW_IMAGE_NAME = "DreamPolish Preview"
PREVIEW_MIN_INTERVAL_S = 0.5
"""Reload the preview image at most this often (a reload is a file read and a GPU upload)."""

_last_preview = 0.0


def on_message(msg: Message) -> None:
    """Apply a backend event (the connection's Listener.on_message)."""
    rt = runtime()
    item = job_item(rt, msg.job_id) if msg.job_id else None
    shown = not msg.job_id or msg.job_id == rt.job_id
    if not shown and item is None:
        return  # an event of a job this window does not follow
    if shown and msg.IS_EVENT:
        rt.last_seq = max(rt.last_seq, msg.seq)
    handler = HANDLERS.get(type(msg))
    if handler is not None:
        handler(rt, msg, item, shown)


def _on_progress(rt, msg: Progress, item, shown: bool) -> None:
    fraction = min(1.0, msg.step / msg.total) if msg.total else 0.0
    if item is not None:
        item.state, item.stage, item.progress = "running", msg.stage, fraction
    if not shown:
        return
    rt.job_state = "running"
    rt.stage, rt.step, rt.total = msg.stage, msg.step, msg.total
    rt.progress = fraction
    _clock_progress(rt, msg)
    _warn_memory(msg)
    _note_offloaded(rt, msg)
    _note_slow_rasterizer(rt, msg)
    _note_finish(rt, msg)
    if msg.preview_png is not None:
        _show_preview(rt, msg.job_id, msg.preview_png)


def _on_stage_result(rt, msg: StageResult, item, shown: bool) -> None:
    """Stored, then imported into the job's object (a job not shown in full too: its stages still
    land in its own objects)."""
    if shown:
        rt.stage = msg.stage
    cache = job_cache()
    msg = _scale_applied(cache, msg)
    if _repeats_texture(cache, msg):
        cache.record_stage(msg.job_id, msg.stage, status="running", last_seq=msg.seq)
        _relabel_exported(msg.job_id)
        refresh_history(rt)
        return
    stored, record = cache.save_stage(msg.job_id, msg.stage, msg.mesh, status="running", last_seq=msg.seq)
    if msg.mesh.num_faces == 0:
        return  # the reference stage sends only an image
    import_stage(stored, record)
    refresh_history(rt)


def _scale_applied(cache: JobCache, msg: StageResult) -> StageResult:
    """A generated object's stage mesh as it is stored and imported: its frame's scale in its vertices
    (camera_rig.scale_applied), so that the object's scale reads 1."""
    record = cache.load_record(msg.job_id)
    if record is None or record.mode != "generate" or msg.mesh.num_vertices == 0:
        return msg
    return dataclasses.replace(msg, mesh=camera_rig.scale_applied(msg.mesh))


def _on_paused(rt, msg: Paused, item, shown: bool) -> None:
    if item is not None:
        item.state, item.paused_stage = "paused", msg.stage
    # The history shows the record's state: a paused job says so there too (and after a restart).
    job_cache().update_record(msg.job_id, status="paused")
    refresh_history(rt)
    if shown:
        rt.job_state = "paused"
        rt.paused_stage = msg.stage
        rt.message = f"Paused after {msg.stage}: edit the mesh if you like, then Resume"


def _on_resumed(rt, msg: Resumed, item, shown: bool) -> None:
    if item is not None:
        item.state, item.paused_stage = "running", ""
    job_cache().update_record(msg.job_id, status="running")
    refresh_history(rt)
    if shown:
        rt.job_state = "running"
        rt.paused_stage = ""


def _ended(rt, msg: Done | Failed | Cancelled, item, shown: bool) -> None:
    """What every final event does; the handlers below add their own message."""
    state = msg.TYPE  # the job's final state is named as its event
    if item is not None:
        item.state, item.paused_stage = state, ""
    if shown:
        rt.job_state = state
        rt.paused_stage = ""
    job_cache().update_record(msg.job_id, status=state)
    refresh_history(rt)


def _on_done(rt, msg: Done, item, shown: bool) -> None:
    _ended(rt, msg, item, shown)
    if shown:
        rt.progress = rt.overall = 1.0
        rt.eta_s = 0.0
        rt.message = f"Job {msg.job_id} done"


def _on_failed(rt, msg: Failed, item, shown: bool) -> None:
    _ended(rt, msg, item, shown)
    if shown:
        rt.message = f"Job failed ({msg.code}): {failure_text(msg.code, msg.message)}"


def _on_cancelled(rt, msg: Cancelled, item, shown: bool) -> None:
    _ended(rt, msg, item, shown)
    if shown:
        rt.message = f"Job {msg.job_id} cancelled"


def _on_refused(rt, msg: Error, item, shown: bool) -> None:
    if shown:
        rt.message = f"Backend refused a request ({msg.code}): {msg.message}"


HANDLERS: dict[type[Message], Callable[[Any, Any, Any, bool], None]] = {
    Progress: _on_progress,
    StageResult: _on_stage_result,
    Paused: _on_paused,
    Resumed: _on_resumed,
    Done: _on_done,
    Failed: _on_failed,
    Cancelled: _on_cancelled,
    Error: _on_refused,
}
"""Message class -> handler(runtime, message, the jobs list's item or None, shown in full)."""


def apply_result(result: Result) -> None:
    """A re-import from the history (the answer to Fetch result): store every stage the backend has,
    then show the latest one with a mesh in a new object. The job this window follows is left as it is."""
    if not isinstance(result, Result):
        return
    rt = runtime()
    cache = job_cache()
    latest = None
    for sr in result.stage_results:
        if _repeats_texture(cache, sr):
            continue
        stored = cache.save_stage(sr.job_id, sr.stage, sr.mesh)
        if sr.mesh.num_faces:
            latest = stored
    cache.update_record(result.job_id, status=result.state)
    refresh_history(rt)
    if latest is None:
        rt.message = f"Job {result.job_id} has no mesh yet ({result.state})"
        return
    stored, record = latest
    if import_stage(stored, record, new_object=True):
        rt.message = f"Imported the {stored.stage} result of job {result.job_id} ({result.state})"


def _repeats_texture(cache: JobCache, msg: StageResult) -> bool:
    """The export stage's result is the final mesh the texture stage sent: an empty marker from this
    backend, the same textured mesh from an older one. Importing it again would double the scene's
    data for nothing (the exported GLB is a file on the backend)."""
    if msg.stage != "export":
        return False
    if msg.mesh.num_vertices == 0:
        return True  # the backend's export marker: the final mesh is the texture stage's
    textured = cache.load_stage(msg.job_id, "texture")
    return (textured is not None and textured.mesh.num_faces == msg.mesh.num_faces
            and textured.mesh.num_vertices == msg.mesh.num_vertices
            and np.array_equal(textured.mesh.vertices, msg.mesh.vertices)
            and np.array_equal(textured.mesh.faces, msg.mesh.faces))


def _relabel_exported(job_id: str) -> None:
    """The export stage ended with the mesh already shown: say so on the job's objects."""
    for obj in bpy.context.scene.objects:
        if obj.get(JOB_PROP) == job_id and obj.get(STAGE_PROP) == "texture":
            obj[STAGE_PROP] = "export"


def _warn_memory(msg: Progress) -> None:
    """The backend's warning, before a job starts on its card, that the preset will not fit
    (backend/memory_check.py: the job's first progress event carries these two losses)."""
    needed, have = msg.losses.get(MEMORY_NEEDED_GB), msg.losses.get(DEVICE_MEMORY_GB)
    if needed is not None and have is not None:
        report_failure(f"This preset needs about {needed:.1f} GB of GPU memory and the backend's card has "
                       f"{have:.1f} GB: the job will probably run out of memory. Cancel it and choose a smaller "
                       "preset, or let it run to see.")


def _note_offloaded(rt, msg: Progress) -> None:
    """The backend's note, in the job's first progress event, that the preset fits its card only with the
    priors a stage does not use in host memory (backend/memory_check.py): the job runs, a little slower."""
    if msg.losses.get(PRIORS_OFFLOADED):
        rt.message = ("This preset fits the backend's GPU only with the models a stage does not use kept in "
                      "the computer's memory: the job runs, with a short pause at each stage change.")
        log.info("%s", rt.message)


def _note_slow_rasterizer(rt, msg: Progress) -> None:
    """The backend's note, in the job's first progress event, that its card cannot run nvdiffrast
    (backend/render/rasterize.py): the job runs, more slowly. Said in the panel, not as a failure."""
    if msg.losses.get(SLOW_RASTERIZER):
        rt.message = ("The backend's GPU cannot run nvdiffrast (its log says why): meshes are rasterised with "
                      "PyTorch, so the mesh stages run slower than they could.")
        log.warning("%s", rt.message)


def _note_finish(rt, msg: Progress) -> None:
    """The finish stage's notes (issue 30): the remesher could not deliver and decimation made the game-ready
    mesh, or the budget was more than the polished mesh has. Said in the panel, not as a failure."""
    notes = []
    if msg.losses.get(REMESH_FALLBACK):
        notes.append("The quad remesher could not meet the face budget (the backend's log says why): quadric "
                     "decimation made the game-ready mesh, with fewer quads.")
    if msg.losses.get(BUDGET_CAPPED):
        notes.append("The face budget is more than the polished object has: it keeps its own face count.")
    if notes:
        rt.message = " ".join(notes)
        log.warning("%s", rt.message)


def _clock_progress(rt, msg: Progress) -> None:
    job_clock = clock(msg.job_id)
    if job_clock is None or not job_clock.plan:
        return
    rt.overall, eta = job_clock.progress(msg.stage, msg.step, msg.total, time.monotonic())
    rt.eta_s = -1.0 if eta is None else eta


def _show_preview(rt, job_id: str, png: bytes) -> None:
    global _last_preview
    now = time.monotonic()
    if now - _last_preview < PREVIEW_MIN_INTERVAL_S and rt.preview is not None:
        return
    _last_preview = now
    path = job_cache().job_dir(job_id) / "preview.png"
    path.write_bytes(png)
    img = bpy.data.images.get(PREVIEW_IMAGE_NAME)
    if img is None:
        img = bpy.data.images.load(str(path), check_existing=False)
        img.name = PREVIEW_IMAGE_NAME
    else:
        img.filepath = str(path)
        img.reload()
    img.preview_ensure()
    rt.preview = img
