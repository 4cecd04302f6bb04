"""Telling the artist: the panel's message and red failure box, the status bar (through the report
operator), and a failed request put in words they can act on."""

from __future__ import annotations

import logging
import re

import bpy
from bpy.props import StringProperty

from .bridge import RequestLost
from .protocol.client import AccessRefused, BackendUnreachable
from .protocol.errors import OUT_OF_MEMORY, VersionMismatch

log = logging.getLogger(__name__)

REFUSED_PREFIX = "Refused: "
"""Starts the message of a refused connection (AccessRefused), which a later welcome clears."""


def runtime(context: bpy.types.Context | None = None):
    """The window manager's runtime properties (properties.DreamPolishRuntime): what the panel shows."""
    return (context or bpy.context).window_manager.dreampolish


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


_BYTES_ASKED = re.compile(r"allocate (?P<n>\d+) bytes")
_GIB_ASKED = re.compile(r"allocate (?P<n>[\d.]+) GiB")
_RAW_MARKERS = ("enforce fail", "DefaultCPUAllocator", "CUDA out of memory", "Tried to allocate")
_ADVICE_STARTS = ("The GPU ran out of memory", "The computer ran out of memory")
"""How the backend's own advice for an out-of-memory failure begins (backend/failures.py OOM_HINT, CPU_OOM_HINT):
what comes before it is the allocator's raw message."""


def failure_text(code: str, message: str) -> str:
    """A job's failure as the panel says it: an out-of-memory failure without the allocator's raw message
    ("[enforce fail at alloc_cpu.cpp:127] ... DefaultCPUAllocator ..."), with the size it asked for in GB."""
    if code != OUT_OF_MEMORY or not any(raw in message for raw in _RAW_MARKERS):
        return message  # the backend said it in its own words
    starts = [i for i in (message.find(a) for a in _ADVICE_STARTS) if i >= 0]
    advice = message[min(starts):] if starts else ("The backend ran out of memory. Try a smaller preset or fewer "
                                                   "or smaller cameras, then submit again.")
    asked = _BYTES_ASKED.search(message)
    gigabytes = int(asked["n"]) / 1e9 if asked else None
    if asked is None and (asked := _GIB_ASKED.search(message)):
        gigabytes = float(asked["n"]) * 2**30 / 1e9
    if gigabytes is not None:
        advice = advice.replace(" ran out of memory.", f" ran out of memory (a step asked for {gigabytes:.1f} GB "
                                                       "more).", 1)
    return advice


_connection_failure = ""
"""The red box's text when the connection caused it (a refusal, a request the connection took along):
a later welcome ends it (connection_restored)."""


def connection_restored(rt) -> None:
    """A welcome: the failures that the connection caused are over (a job's failure stays until the next job)."""
    global _connection_failure
    if rt.failure and (rt.failure == _connection_failure or rt.failure.startswith(REFUSED_PREFIX)):
        rt.failure = ""
    _connection_failure = ""


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


def report_error(operator: bpy.types.Operator, text: str) -> None:
    """An operator's error: in the panel's red box as well as the status bar (an artist with the sidebar
    open does not look at the status bar)."""
    report_failure(text, status_bar=False)
    operator.report({"ERROR"}, text)


def button_request_failed(exc: BaseException) -> None:
    """on_error of a request an artist's button sent (submit, cancel, resume, fetch): the panel says
    why, and a request the connection took along is said loudly (the button did nothing)."""
    global _connection_failure
    rt = runtime()
    rt.message = describe_error(exc)
    if isinstance(exc, RequestLost):
        report_failure(rt.message)
        _connection_failure = rt.message
    log.warning("request failed: %s", rt.message)


def background_request_failed(exc: BaseException) -> None:
    """on_error of a request the add-on makes by itself (attach, list jobs; made again after each
    welcome): the panel's message says why."""
    rt = runtime()
    rt.message = describe_error(exc)
    log.warning("request failed: %s", rt.message)


def redraw() -> None:
    """Redraw the areas that show DreamPolish (the 3D view's sidebar, the preferences)."""
    wm = bpy.context.window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


class DREAMPOLISH_OT_report(bpy.types.Operator):
    """Show a failure in the status bar and the Info log"""

    bl_idname = "dreampolish.report"
    bl_label = "Report"
    bl_options = {"INTERNAL"}

    message: StringProperty(name="Message")

    def execute(self, context):
        self.report({"ERROR"}, self.message)
        return {"CANCELLED"}
