"""DreamPolish for Blender: text or a selected mesh to a polished, textured, editable object.

This module only registers: the classes in dependency order, and in reverse on unregister (and it names the
glTF exporter's callback, which the exporter looks for on an add-on's own module).
Where things are: backend_operators (connect, the local backend), job_operators (Generate, Refine,
Resume, Cancel) building their requests in job_request, scene_operators (import, bake, export),
history; what the backend sends is applied by connection (the connection's own events), job_follow
(the jobs followed) and job_events (a job's events, by message class); bridge carries it all.
"""

from __future__ import annotations

import logging

import bpy

from . import (
    backend_operators,
    bridge,
    connection,
    history,
    job_operators,
    panel,
    preferences,
    properties,
    reporting,
    scene_operators,
    texture_sets,
)

log = logging.getLogger(__name__)

_classes = (
    *properties.classes,
    *preferences.classes,
    backend_operators.DREAMPOLISH_OT_connect,
    backend_operators.DREAMPOLISH_OT_disconnect,
    job_operators.DREAMPOLISH_OT_generate,
    job_operators.DREAMPOLISH_OT_open_reference_image,
    job_operators.DREAMPOLISH_OT_generate_variants,
    job_operators.DREAMPOLISH_OT_pick_variant,
    job_operators.DREAMPOLISH_OT_refine_selected,
    job_operators.DREAMPOLISH_OT_cancel,
    job_operators.DREAMPOLISH_OT_resume,
    scene_operators.DREAMPOLISH_OT_import_result,
    scene_operators.DREAMPOLISH_OT_bake_to_material,
    scene_operators.DREAMPOLISH_OT_export_glb,
    reporting.DREAMPOLISH_OT_report,
    backend_operators.DREAMPOLISH_OT_copy_client_key,
    job_operators.DREAMPOLISH_OT_randomize_seed,
    history.DREAMPOLISH_OT_reimport,
    history.DREAMPOLISH_OT_attach,
    history.DREAMPOLISH_OT_refresh_history,
    backend_operators.DREAMPOLISH_OT_backend_start,
    backend_operators.DREAMPOLISH_OT_backend_stop,
    *texture_sets.classes,
    *panel.classes,
)


def glTF2_pre_export_callback(export_settings) -> None:
    """Blender's glTF exporter calls this (a function of this name on an enabled add-on's module,
    io_scene_gltf2/__init__.py) before it reads the scene: the texture sets become its variant data, up to
    date, so that File > Export > glTF 2.0 writes them as KHR_materials_variants (gltf_variants.py). A failure
    here is logged and the export goes on without them: the artist's export must not fail for the sets."""
    try:
        texture_sets.sync_gltf_variants()
    except Exception:  # noqa: BLE001 - inside Blender's exporter, which would fail the whole export
        log.exception("the texture sets could not be written as glTF variants")


def register() -> None:
    for cls in _classes:
        bpy.utils.register_class(cls)
    properties.register_properties()
    bridge.set_listener(connection.listener())
    bridge.register()
    history.register()


def unregister() -> None:
    history.unregister()
    bridge.unregister()
    backend_operators.stop_backend()
    properties.unregister_properties()
    for cls in reversed(_classes):
        bpy.utils.unregister_class(cls)
