"""DreamPolish for Blender: text or a selected mesh to a polished, textured, editable object.

This module only registers: the classes in dependency order, and in reverse on unregister.
"""

from __future__ import annotations

import bpy

from . import bridge, job_events, operators, panel, preferences, properties

_classes = (
    *properties.classes,
    *preferences.classes,
    *operators.classes,
    *panel.classes,
)


def register() -> None:
    for cls in _classes:
        bpy.utils.register_class(cls)
    properties.register_properties()
    bridge.set_handler(job_events.handle_event, job_events.on_apply_failed)
    bridge.register()
    job_events.register()


def unregister() -> None:
    job_events.unregister()
    bridge.unregister()
    operators.stop_backend()
    properties.unregister_properties()
    for cls in reversed(_classes):
        bpy.utils.unregister_class(cls)
