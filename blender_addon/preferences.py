"""Add-on preferences: where the backend is, how to authenticate, and an optional local backend."""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import FloatProperty, StringProperty

from . import client_key

ADDON_ID = __package__
"""The extension's module name (bl_ext.<repository>.dreampolish), which is also its preferences key."""


class DreamPolishPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    backend_address: StringProperty(
        name="Backend Address", default="tcp://127.0.0.1:5557",
        description="ZeroMQ address of the DreamPolish backend (tcp://host:port)",
    )
    server_key: StringProperty(
        name="Server Key", subtype="PASSWORD", default="",
        description="The backend's CURVE public key (Z85, 40 characters); required for a remote backend",
    )
    timeout_s: FloatProperty(
        name="Timeout", default=5.0, min=0.5, max=120.0, unit="TIME_ABSOLUTE",
        description="How long to wait for the backend to answer before giving up",
    )
    backend_executable: StringProperty(
        name="Local Backend", subtype="FILE_PATH", default="",
        description="Path of a dreampolish-backend executable to start on this machine (optional)",
    )
    backend_pipeline: StringProperty(
        name="Pipeline", default="",
        description="Optional module:Class of the pipeline the local backend runs (empty: the default)",
    )

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "backend_address")
        layout.prop(self, "server_key")
        layout.prop(self, "timeout_s")
        _draw_client_key(layout.box())
        box = layout.box()
        box.label(text="Local backend")
        box.prop(self, "backend_executable")
        box.prop(self, "backend_pipeline")
        row = box.row()
        running = context.window_manager.dreampolish.backend_running
        row.operator("dreampolish.backend_start", icon="PLAY")
        row.operator("dreampolish.backend_stop", icon="PAUSE")
        box.label(text="Running" if running else "Not running", icon="CHECKMARK" if running else "BLANK1")
        layout.label(text=f"Cache: {user_dir()}", icon="FILE_FOLDER")


def _draw_client_key(box) -> None:
    """This Blender's public key, for the administrator of a backend that serves only known keys."""
    box.label(text="Client key (send the public key to the backend's administrator)")
    try:
        key = client_key.ensure()  # the first draw makes the pair: the artist can send it at once
    except OSError as exc:
        box.alert = True
        box.label(text=f"Could not make a client key: {exc}", icon="ERROR")
        return
    row = box.row(align=True)
    row.label(text=key.public_key)
    row.operator("dreampolish.copy_client_key", text="Copy", icon="COPYDOWN")
    box.label(text=f"Public certificate: {key.public_file}", icon="FILE")


def prefs(context: bpy.types.Context | None = None) -> DreamPolishPreferences:
    context = context or bpy.context
    return context.preferences.addons[ADDON_ID].preferences


def user_dir(*parts: str) -> Path:
    """A folder under the extension's user directory (cache, history), created on demand;
    never inside the add-on's own folder, which is replaced on update."""
    path = Path(bpy.utils.extension_path_user(ADDON_ID, create=True))
    for part in parts:
        path = path / part
    path.mkdir(parents=True, exist_ok=True)
    return path


classes = (DreamPolishPreferences,)
