"""The history: the panel's list of every job on disk (job_cache.py), kept up to date from the
records and the backend's job list, and its operators (re-import a job, follow it again, refresh)."""

from __future__ import annotations

import bpy

from . import bridge, job_events
from .connection import ensure_connected
from .job_follow import GOING_STATES, attach, job_cache, refresh_history, request_job_list
from .reporting import button_request_failed


def _history_picked(operator: type, rt) -> bool:
    """A job of the history list is picked (else the operator's poll message says to pick one)."""
    if 0 <= rt.history_index < len(rt.history):
        return True
    operator.poll_message_set("Pick a job in the history list")
    return False


def _fetch_result(rt, job_id: str) -> None:
    """Ask for every stage of the job; the answer is stored and its latest stage imported (job_events)."""
    bridge.request("Fetch result", lambda client: client.fetch_result_flow(job_id),
                   on_reply=job_events.apply_result, on_error=button_request_failed)
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
            # The answer (job_events.apply_result) stores every stage and imports the latest one;
            # the job this window follows stays followed.
            _fetch_result(rt, job_id)
            return {"FINISHED"}
        if job_cache().load_stage(job_id) is not None:
            return bpy.ops.dreampolish.import_result(job_id=job_id, new_object=True)
        ensure_connected(context)
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
        if rt.history[rt.history_index].status not in GOING_STATES:
            cls.poll_message_set("That job is not running on the backend")
            return False
        if not bridge.is_connected():
            cls.poll_message_set("Connect to the backend first")
            return False
        return True

    def execute(self, context):
        rt = context.window_manager.dreampolish
        attach(rt, rt.history[rt.history_index].job_id)
        return {"FINISHED"}


class DREAMPOLISH_OT_refresh_history(bpy.types.Operator):
    """Reload the job history (and the states the backend knows)"""

    bl_idname = "dreampolish.refresh_history"
    bl_label = "Refresh History"

    def execute(self, context):
        refresh_history()
        if bridge.is_connected():
            request_job_list()
        return {"FINISHED"}


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


classes = (
    DREAMPOLISH_OT_reimport,
    DREAMPOLISH_OT_attach,
    DREAMPOLISH_OT_refresh_history,
)
