"""The backend operators: connect to the backend set in the preferences and disconnect, copy this
Blender's public client key, and start or stop a backend on this machine (a child process of Blender).
"""

from __future__ import annotations

import subprocess

import bpy

from . import bridge, client_key
from .connection import start_connecting
from .job_follow import refresh_history
from .preferences import prefs, user_dir
from .protocol.client import ClientError, load_server_public_key
from .reporting import report_error

_backend_process: subprocess.Popen | None = None
"""The backend this add-on started, or None."""


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
                report_error(self, str(exc))
                return {"CANCELLED"}
        # Returns at once: the handshake's outcome shows in the panel when it arrives.
        start_connecting(context)
        refresh_history()
        return {"FINISHED"}


class DREAMPOLISH_OT_disconnect(bpy.types.Operator):
    """Close the connection to the backend (jobs keep running there)"""

    bl_idname = "dreampolish.disconnect"
    bl_label = "Disconnect"

    def execute(self, context):
        bridge.disconnect()
        context.window_manager.dreampolish.connection = "disconnected"
        return {"FINISHED"}


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


# --- the local backend ----------------------------------------------------------------------------


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
            report_error(self, f"Could not start {exe}: {exc}")
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
    DREAMPOLISH_OT_copy_client_key,
    DREAMPOLISH_OT_backend_start,
    DREAMPOLISH_OT_backend_stop,
)
