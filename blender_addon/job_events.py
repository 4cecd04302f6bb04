"""What each backend event does to Blender, applied on the main thread by bridge.drain().

Progress and state go to the window manager's runtime properties (the panel draws them);
stage results are written to the job cache and imported by the dreampolish.import_result
operator, so that every scene change is an undo step.
"""

from __future__ import annotations

import logging
import time

import bpy
import numpy as np

from . import bridge
from .job_cache import JobCache, JobRecord
from .materials import JOB_PROP
from .preferences import user_dir
from .progress import JobClock
from .protocol.client import AccessRefused, BackendUnreachable, UnknownJobError
from .protocol.errors import VersionMismatch
from .protocol.messages import (
    DEVICE_MEMORY_GB,
    FINAL_EVENTS,
    MEMORY_NEEDED_GB,
    JobList,
    Result,
    StageResult,
    Welcome,
)

log = logging.getLogger(__name__)

STAGE_PROP = "dreampolish_stage"
"""Custom property naming the stage an object shows."""
PREVIEW_IMAGE_NAME = "DreamPolish Preview"
GOING_STATES = ("queued", "running", "paused")
"""Backend job states of a job that is still going."""
PREVIEW_MIN_INTERVAL_S = 0.5
"""Reload the preview image at most this often (a reload is a file read and a GPU upload)."""

_last_preview = 0.0
_clocks: dict[str, JobClock] = {}
"""The followed jobs' progress clocks, by job id."""


def job_cache() -> JobCache:
    return JobCache(user_dir("jobs"))


def runtime(context: bpy.types.Context | None = None):
    return (context or bpy.context).window_manager.dreampolish


REFUSED_PREFIX = "Refused: "
"""Starts the message of a refused connection (AccessRefused), which a later welcome clears."""


def describe_error(exc: BaseException) -> str:
    """A message an artist can act on, naming what failed."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, AccessRefused):
        # The backend answered, and said why: not "unreachable", and nothing to add to its line but
        # where the key is.
        if "client key" in text:
            return (f"{REFUSED_PREFIX}{text}. "
                    "Send the public key in the add-on's preferences to the backend's administrator.")
        return f"{REFUSED_PREFIX}{text}."
    if isinstance(exc, BackendUnreachable):
        return f"Backend unreachable: {text}. Is it running, and is the address in the preferences right?"
    if isinstance(exc, VersionMismatch):
        return f"Version mismatch: {text}. Update the add-on or the backend so that both match."
    return text


def report_failure(text: str, status_bar: bool = True) -> None:
    """Tell the artist: in the panel (a red box) and in the status bar (an operator report; pass
    status_bar=False when an operator has reported it already)."""
    rt = runtime()
    rt.message = rt.failure = text
    log.error("%s", text)
    if not status_bar:
        return
    wm = bpy.context.window_manager
    window = bpy.context.window or (wm.windows[0] if wm.windows else None)
    try:
        with bpy.context.temp_override(window=window):
            bpy.ops.dreampolish.report("EXEC_DEFAULT", message=text)
    except RuntimeError:
        pass  # headless Blender raises the reported error back at the caller: it is already shown


def on_apply_failed(event: bridge.BridgeEvent, exc: BaseException) -> None:
    """bridge.drain() calls this when applying an event raised: the artist hears of it."""
    report_failure(f"Could not apply the backend's {event.request or event.kind}: {exc}")


def handle_event(event: bridge.BridgeEvent) -> None:
    rt = runtime()
    if event.kind == "welcome":
        _on_welcome(rt, event.payload)
    elif event.kind == "error":
        _on_error(rt, event.request, event.payload)
    elif event.kind == "reply":
        _on_reply(rt, event.request, event.payload)
    elif event.kind == "message":
        _on_message(rt, event.payload)
    elif event.kind == "closed" and rt.connection == "connected":
        rt.connection = "connecting" if bridge.reconnecting() else "disconnected"
    _redraw()


def _on_welcome(rt, welcome: Welcome) -> None:
    rt.connection = "connected"
    rt.device = ", ".join(welcome.devices) or "unknown"
    rt.message = f"Connected (backend {welcome.backend_version})"
    if rt.failure.startswith(REFUSED_PREFIX):
        rt.failure = ""  # the refusal is over; a job's failure stays until the next job
    if rt.job_state == "submitting" and "submit" not in bridge.pending_requests():
        # The submit went with an earlier connection, closed (Disconnect, Connect again) before the
        # backend answered; waiting for its answer would keep Generate greyed out for good.
        rt.job_state = ""
    # Carry on following a job that was running before the reconnect; the backend's job list then
    # brings the history up to date and, after a restart of Blender, re-attaches a job still going.
    if rt.job_id and rt.job_state in GOING_STATES:
        _attach_request(rt.job_id, rt.last_seq)
    cache = job_cache()
    for item in rt.jobs:
        if item.job_id != rt.job_id and item.state in GOING_STATES:
            record = cache.load_record(item.job_id)
            _attach_request(item.job_id, record.last_seq if record is not None else 0)
    bridge.request("list_jobs", lambda c: c.list_jobs_flow())


def _attach_request(job_id: str, last_seq: int) -> None:
    def attach_flow(client):
        try:
            yield from client.attach_flow(job_id, last_seq)
        except UnknownJobError:
            return job_id  # deleted or expired on the backend: the reply says which job is gone
        return None

    bridge.request("attach", attach_flow)


def _on_job_gone(rt, job_id: str) -> None:
    """A job this Blender followed that the backend no longer has (deleted, expired, another store):
    it is not shown as going on for ever."""
    job_cache().update_record(job_id, status="failed")
    item = _job_item(rt, job_id)
    if item is not None:
        item.state = "failed"
    if rt.job_id == job_id:
        rt.job_state = "failed"
        report_failure(f"Job {job_id} is no longer on the backend (deleted, or expired there); "
                       "its stages already imported stay in the scene.")
    refresh_history(rt)


def attach(rt, job_id: str) -> None:
    """Follow a job of the history that is still going on the backend, from the last stage result
    this Blender stored (its later events are replayed): its stages land in the job's objects."""
    record = job_cache().load_record(job_id)
    item = _job_item(rt, job_id)
    # A job still going in the list is followed on this connection already (submitted, or attached
    # with the welcome): attaching it again from its last stage would replay what it sent since then,
    # and a stage result among that would be imported twice.
    followed = item is not None and item.state in GOING_STATES and bridge.is_connected()
    _follow(rt, job_id, record.status if record is not None else "queued",
            target=record.target_object if record is not None else "")
    rt.last_seq = record.last_seq if record is not None else 0
    if not followed:
        _attach_request(job_id, rt.last_seq)
    rt.message = f"Following job {job_id} again"


ARTIST_REQUESTS = ("submit", "cancel", "resume", "fetch_result")
"""Requests an artist's button sent; the others (attach, list_jobs) are made again after each welcome."""


def _on_error(rt, request: str, exc: BaseException) -> None:
    rt.message = describe_error(exc)
    if request in ("connect", "connection"):
        rt.connection = "error"
        if rt.job_state == "submitting":
            rt.job_state = ""  # the submit queued behind the handshake was never sent
        if request == "connection":
            rt.message = f"Connection lost: {rt.message} Reconnecting…"
        elif bridge.keeps_connected():
            rt.message += f" Trying again every {bridge.RECONNECT_INTERVAL_S:g} s."
        if isinstance(exc, AccessRefused):
            report_failure(rt.message)  # a refusal needs the artist (or the administrator): say it loudly
    elif request in ("submit", "submit_variants"):
        rt.job_state = ""
    if isinstance(exc, bridge.RequestLost) and request in ARTIST_REQUESTS:
        report_failure(rt.message)  # the artist pressed a button that did nothing: say so
    log.warning("%s failed: %s", request, rt.message)


def _on_reply(rt, request: str, payload) -> None:
    if request == "submit":
        job_id, record = payload
        record.job_id = job_id
        job_cache().save_record(record)
        _follow(rt, job_id, "queued", target=record.target_object)
        refresh_history(rt)
        rt.message = f"Job {job_id} queued"
    elif request == "submit_variants":
        answers, refused = payload
        cache = job_cache()
        for job_id, record in answers:
            record.job_id = job_id
            cache.save_record(record)
            _follow(rt, job_id, "queued")  # the last one stays the job shown in full; all are followed
        refresh_history(rt)
        rt.message = f"{len(answers)} variants queued: pick one when they pause"
        if refused:
            rt.message = f"Only {len(answers)} variants queued; the next was refused: {refused}"
    elif request == "attach" and payload:
        _on_job_gone(rt, payload)
    elif request == "resume":
        rt.job_state = "running"
        rt.paused_stage = ""
    elif request == "fetch_result" and isinstance(payload, Result):
        _on_fetched(rt, payload)
    elif request == "list_jobs":
        # BackendClient.list_jobs() answers the JobList's rows.
        infos = payload.jobs if isinstance(payload, JobList) else payload
        cache = job_cache()
        ours = [info for info in infos if cache.load_record(info.job_id) is not None]
        for info in ours:
            cache.update_record(info.job_id, status=info.state)
        refresh_history(rt)
        going = [i for i in ours if i.state in GOING_STATES]
        if going and not (rt.job_id and rt.job_state in GOING_STATES + ("submitting",)):
            attach(rt, max(going, key=lambda i: i.created_unix).job_id)


def _follow(rt, job_id: str, state: str, target: str = "") -> None:
    rt.failure = ""
    rt.job_id = job_id
    rt.job_state = state
    rt.last_seq = 0
    rt.stage = ""
    rt.step = rt.total = 0
    rt.progress = rt.overall = 0.0
    rt.eta_s = -1.0
    rt.paused_stage = ""
    rt.target_object = target
    record = job_cache().load_record(job_id)
    for i in reversed(range(len(rt.jobs))):  # the list shows jobs still going
        if rt.jobs[i].state in FINAL_EVENTS:
            rt.jobs.remove(i)
    item = _job_item(rt, job_id) or rt.jobs.add()
    item.job_id, item.state, item.stage, item.progress, item.paused_stage = job_id, state, "", 0.0, ""
    item.prompt = record.prompt if record is not None else ""
    _clocks[job_id] = JobClock(plan=list(record.plan) if record is not None and record.plan else [])


def follow_paused(rt, job_id: str) -> None:
    """Show a paused job already in the list in full (a picked seed variant), keeping what it reported."""
    item = _job_item(rt, job_id)
    rt.job_id, rt.job_state = job_id, "paused"
    rt.paused_stage = item.paused_stage if item is not None else ""
    rt.stage, rt.step, rt.total, rt.progress = "", 0, 0, 0.0
    record = job_cache().load_record(job_id)
    rt.target_object = record.target_object if record is not None else ""


def _job_item(rt, job_id: str):
    return next((item for item in rt.jobs if item.job_id == job_id), None)


def _update_item(item, msg) -> None:
    kind = msg.TYPE
    if kind == "progress":
        item.state, item.stage = "running", msg.stage
        item.progress = min(1.0, msg.step / msg.total) if msg.total else 0.0
    elif kind == "paused":
        item.state, item.paused_stage = "paused", msg.stage
    elif kind == "resumed":
        item.state, item.paused_stage = "running", ""
    elif kind in FINAL_EVENTS:
        item.state, item.paused_stage = kind, ""


def _on_other_job(rt, msg) -> None:
    """An event of a followed job other than the one shown in full: its stages still land in its
    own objects, and its end is recorded."""
    if msg.TYPE == "stage_result":
        _on_stage_result(rt, msg, follow=False)
    elif msg.TYPE in FINAL_EVENTS:
        job_cache().update_record(msg.job_id, status=msg.TYPE)
        refresh_history(rt)


def _on_message(rt, msg) -> None:
    item = _job_item(rt, msg.job_id) if msg.job_id else None
    if item is not None:
        _update_item(item, msg)
    if msg.job_id and msg.job_id != rt.job_id:
        if item is not None:
            _on_other_job(rt, msg)
        return  # else: an event of a job this window does not follow
    if getattr(msg, "IS_EVENT", False):
        rt.last_seq = max(rt.last_seq, msg.seq)
    kind = msg.TYPE
    if kind == "progress":
        rt.job_state = "running"
        rt.stage, rt.step, rt.total = msg.stage, msg.step, msg.total
        rt.progress = min(1.0, msg.step / msg.total) if msg.total else 0.0
        _clock_progress(rt, msg)
        _warn_memory(msg)
        if msg.preview_png is not None:
            _show_preview(rt, msg.job_id, msg.preview_png)
    elif kind == "stage_result":
        _on_stage_result(rt, msg, follow=True)
    elif kind == "paused":
        rt.job_state = "paused"
        rt.paused_stage = msg.stage
        rt.message = f"Paused after {msg.stage}: edit the mesh if you like, then Resume"
    elif kind == "resumed":
        rt.job_state = "running"
        rt.paused_stage = ""
    elif kind in FINAL_EVENTS:
        rt.job_state = kind
        rt.paused_stage = ""
        if kind == "failed":
            rt.message = f"Job failed ({msg.code}): {msg.message}"
        elif kind == "done":
            rt.progress = rt.overall = 1.0
            rt.eta_s = 0.0
            rt.message = f"Job {msg.job_id} done"
        else:
            rt.message = f"Job {msg.job_id} cancelled"
        job_cache().update_record(msg.job_id, status=kind)
        refresh_history(rt)
    elif kind == "error":
        rt.message = f"Backend refused a request ({msg.code}): {msg.message}"


def _warn_memory(msg) -> None:
    """The backend's warning, before a job starts on its card, that the preset will not fit
    (backend/memory_check.py: the job's first progress event carries these two losses)."""
    needed, have = msg.losses.get(MEMORY_NEEDED_GB), msg.losses.get(DEVICE_MEMORY_GB)
    if needed is not None and have is not None:
        report_failure(f"This preset needs about {needed:.1f} GB of GPU memory and the backend's card has "
                       f"{have:.1f} GB: the job will probably run out of memory. Cancel it and choose a smaller "
                       "preset, or let it run to see.")


def _clock_progress(rt, msg) -> None:
    clock = _clocks.get(msg.job_id)
    if clock is None or not clock.plan:
        return
    rt.overall, eta = clock.progress(msg.stage, msg.step, msg.total, time.monotonic())
    rt.eta_s = -1.0 if eta is None else eta


def _on_fetched(rt, result: Result) -> None:
    """A re-import from the history: store every stage the backend has, then show the latest one with
    a mesh in a new object. The job this window follows is left as it is."""
    cache = job_cache()
    latest = ""
    for sr in result.stage_results:
        if _repeats_texture(cache, sr):
            continue
        cache.save_stage(sr.job_id, sr.stage, sr.mesh)
        if sr.mesh.num_faces:
            latest = sr.stage
    cache.update_record(result.job_id, status=result.state)
    refresh_history(rt)
    if not latest:
        rt.message = f"Job {result.job_id} has no mesh yet ({result.state})"
        return
    if _call_import(result.job_id, latest, new_object=True):
        rt.message = f"Imported the {latest} result of job {result.job_id} ({result.state})"


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


def _mark_exported(cache: JobCache, job_id: str) -> None:
    """The export stage ended with the mesh already shown: say so on the job's objects and in the history."""
    record = cache.load_record(job_id)
    if record is not None and "export" not in record.stages:
        record.stages.append("export")
        cache.save_record(record)
    for obj in bpy.context.scene.objects:
        if obj.get(JOB_PROP) == job_id and obj.get(STAGE_PROP) == "texture":
            obj[STAGE_PROP] = "export"
    refresh_history()


def _on_stage_result(rt, msg: StageResult, follow: bool) -> None:
    cache = job_cache()
    cache.update_record(msg.job_id, status="running", last_seq=msg.seq)
    if follow:
        rt.stage = msg.stage
    if _repeats_texture(cache, msg):
        _mark_exported(cache, msg.job_id)
        return
    cache.save_stage(msg.job_id, msg.stage, msg.mesh)
    if msg.mesh.num_faces == 0:
        return  # the reference stage sends only an image
    _call_import(msg.job_id, msg.stage)
    refresh_history(rt)


def _call_import(job_id: str, stage: str, new_object: bool = False) -> bool:
    """Run the import operator with an undo step, from a timer as well as from a script; a failure
    is reported to the artist. True when the result was imported."""
    wm = bpy.context.window_manager
    window = bpy.context.window or (wm.windows[0] if wm.windows else None)
    try:
        with bpy.context.temp_override(window=window):
            result = bpy.ops.dreampolish.import_result(
                "EXEC_DEFAULT", True, job_id=job_id, stage=stage, new_object=new_object)
    except RuntimeError as exc:  # the operator reported an error (Blender raises it at the caller)
        report_failure(str(exc).removeprefix("Error: ").strip(), status_bar=False)
        return False
    return "FINISHED" in result


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


def refresh_history(rt=None) -> None:
    """Mirror the job records on disk into the panel's history list."""
    rt = rt or runtime()
    records: list[JobRecord] = job_cache().history()
    rt.history.clear()
    for r in records:
        item = rt.history.add()
        item.job_id, item.prompt, item.seed = r.job_id, r.prompt, r.seed
        item.preset, item.mode, item.status = r.preset, r.mode, r.status
        item.last_stage = r.stages[-1] if r.stages else ""
    rt.history_index = min(rt.history_index, max(len(records) - 1, 0))


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


def _refresh_once() -> float | None:
    refresh_history()
    return None  # a one-shot timer


@bpy.app.handlers.persistent
def _on_load_post(*_args) -> None:
    # A loaded file may bring its own window manager: show the history again.
    refresh_history()


def register() -> None:
    """Show past jobs as soon as Blender is idle (the registration context cannot write to the window manager)."""
    if _on_load_post not in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.append(_on_load_post)
    bpy.app.timers.register(_refresh_once, first_interval=0.1)


def unregister() -> None:
    if _on_load_post in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load_post)
    if bpy.app.timers.is_registered(_refresh_once):
        bpy.app.timers.unregister(_refresh_once)

