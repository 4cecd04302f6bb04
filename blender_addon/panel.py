"""The "DreamPolish" tab of the 3D viewport's sidebar (N-panel): one small panel per task."""

from __future__ import annotations

import bpy

from . import reference_views, refine_mask, stage_choices, texture_sets
from .progress import format_eta
from .reference_image import chosen_image


class _DreamPolishPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "DreamPolish"


class DREAMPOLISH_PT_main(_DreamPolishPanel, bpy.types.Panel):
    bl_idname = "DREAMPOLISH_PT_main"
    bl_label = "DreamPolish"

    def draw(self, context):
        layout = self.layout
        rt = context.window_manager.dreampolish
        row = layout.row(align=True)
        icon = {"connected": "LINKED", "error": "ERROR", "connecting": "SORTTIME"}.get(rt.connection, "UNLINKED")
        row.label(text=rt.bl_rna.properties["connection"].enum_items[rt.connection].name, icon=icon)
        if rt.connection == "connected":
            row.operator("dreampolish.disconnect", text="", icon="X")
        else:
            row.operator("dreampolish.connect", text="", icon="PLUGIN")
        if rt.device:
            layout.label(text=f"Device: {rt.device}", icon="DESKTOP")
        if rt.message:
            box = layout.box()
            box.alert = rt.connection == "error" or rt.job_state == "failed"
            box.label(text=rt.message)
        if rt.failure and rt.failure != rt.message:
            box = layout.box()
            box.alert = True
            box.label(text=rt.failure, icon="ERROR")


def draw_reference(layout, context) -> None:
    """The reference source, the image it names (shown), and the camera that sees it."""
    s = context.scene.dreampolish
    layout.prop(s, "reference_source", text="Reference")
    if s.reference_source == "NONE":
        return
    if s.reference_source == "CAMERAS":
        layout.prop(s, "camera_collection")
        reference_views.draw(layout, context.scene)
        return
    if s.reference_source == "IMAGE":
        row = layout.row(align=True)
        row.prop(s, "reference_image", text="")
        row.operator("dreampolish.open_reference_image", text="", icon="FILEBROWSER")
    image = chosen_image(context.scene)
    camera = context.scene.camera
    if image is None:
        layout.label(text="No image" if s.reference_source == "IMAGE" else "The active camera has no background image",
                     icon="ERROR")
        return
    layout.template_icon(icon_value=layout.icon(image), scale=6.0)
    layout.label(text=f"Seen from {camera.name}" if camera is not None else "Seen from the front (no active camera)",
                 icon="CAMERA_DATA")


class DREAMPOLISH_PT_prompt(_DreamPolishPanel, bpy.types.Panel):
    bl_idname = "DREAMPOLISH_PT_prompt"
    bl_label = "Generate"
    bl_parent_id = "DREAMPOLISH_PT_main"

    def draw(self, context):
        layout = self.layout
        s = context.scene.dreampolish
        layout.prop(s, "prompt", text="")
        layout.prop(s, "negative_prompt")
        draw_reference(layout, context)
        row = layout.row(align=True)
        row.prop(s, "seed")
        row.operator("dreampolish.randomize_seed", text="", icon="FILE_REFRESH")
        layout.prop(s, "preset")
        layout.prop(s, "placement")
        row = layout.row(align=True)
        row.prop(s, "size_mode", text="")
        if s.size_mode == "SET":
            row.prop(s, "object_size", text="")
        layout.prop(s, "rest_on_surface")
        layout.operator("dreampolish.generate", icon="PLAY")
        row = layout.row(align=True)
        row.prop(s, "variants")
        if stage_choices.announced_stages():  # else Generate Variants is greyed out, saying why
            row.prop(s, "variants_up_to", text="")
        layout.operator("dreampolish.generate_variants", icon="MOD_ARRAY")


class DREAMPOLISH_PT_stages(_DreamPolishPanel, bpy.types.Panel):
    bl_idname = "DREAMPOLISH_PT_stages"
    bl_label = "Stages"
    bl_parent_id = "DREAMPOLISH_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        s = context.scene.dreampolish
        # The backend runs an unbroken chain of stages, which it lists (stage_choices.py): the artist
        # picks where it ends, and where it pauses on the way (a refine starts at its own first stage).
        stages = stage_choices.announced_stages()
        if stages:
            self.layout.prop(s, "run_until")
            col = self.layout.column(align=True)
            col.label(text="Pause After")
            for stage in stages[: stages.index(s.run_until)]:
                col.prop_enum(s, "pause_after", stage)
        else:
            self.layout.label(text=stage_choices.why_no_choice(), icon="INFO")
        box = self.layout.box()
        box.prop(s, "game_ready")
        if s.game_ready:
            row = box.row(align=True)
            row.prop(s, "game_faces")
            row.prop(s, "game_quads", toggle=True)
            box.prop(s, "game_lods")
        self.layout.prop(s, "overrides")
        self.layout.prop(s, "import_mode")
        self.layout.prop(s, "camera_collection")
        if context.scene.camera is None and s.camera_collection is None:
            self.layout.prop(s, "orbit_views")


class DREAMPOLISH_PT_refine(_DreamPolishPanel, bpy.types.Panel):
    bl_idname = "DREAMPOLISH_PT_refine"
    bl_label = "Refine & Bake"
    bl_parent_id = "DREAMPOLISH_PT_main"

    def draw(self, context):
        layout = self.layout
        s = context.scene.dreampolish
        layout.prop(s, "refine_mode", expand=True)
        if s.refine_mode == "texture":
            layout.prop(s, "texture_faces")
        refine_mask.draw(layout, context)
        layout.operator("dreampolish.refine_selected", icon="MODIFIER")
        texture_sets.draw(layout, context)
        layout.operator("dreampolish.bake_to_material", icon="MATERIAL")
        layout.operator("dreampolish.export_glb", icon="EXPORT")


class DREAMPOLISH_PT_job(_DreamPolishPanel, bpy.types.Panel):
    bl_idname = "DREAMPOLISH_PT_job"
    bl_label = "Job"
    bl_parent_id = "DREAMPOLISH_PT_main"

    def draw(self, context):
        layout = self.layout
        rt = context.window_manager.dreampolish
        if not rt.job_id:
            layout.label(text="No job yet")
            return
        layout.label(text=f"{rt.job_id}: {rt.job_state or 'unknown'}")
        if rt.stage:
            text = f"{rt.stage} {rt.step}/{rt.total}" if rt.total else rt.stage
            layout.progress(factor=rt.progress, type="BAR", text=text)
            eta = format_eta(rt.eta_s if rt.eta_s >= 0 else None)
            layout.progress(factor=rt.overall, type="BAR",
                            text=f"All stages {round(100 * rt.overall)}%" + (f" · {eta}" if eta else ""))
        row = layout.row(align=True)
        if rt.job_state == "paused":
            row.operator("dreampolish.resume", icon="PLAY")
        row.operator("dreampolish.cancel", icon="CANCEL")
        if any(item.state == "paused" for item in rt.jobs):
            layout.operator("dreampolish.pick_variant", icon="CHECKMARK")
        if rt.preview is not None:
            layout.template_icon(icon_value=layout.icon(rt.preview), scale=8.0)
        others = [item for item in rt.jobs if item.job_id != rt.job_id]
        if others:
            col = layout.column(align=True)
            col.label(text="Other jobs")
            for item in others:
                text = f"{item.prompt or item.job_id}: {item.state}" + (f" ({item.stage})" if item.stage else "")
                col.progress(factor=item.progress, type="BAR", text=text)


class DREAMPOLISH_UL_history(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0):
        row = layout.row(align=True)
        row.label(text=item.prompt or item.job_id, icon={
            "done": "CHECKMARK", "failed": "ERROR", "cancelled": "CANCEL", "paused": "PAUSE",
        }.get(item.status, "SORTTIME"))
        row.label(text=f"{item.seed} · {item.preset} · {item.status}")


class DREAMPOLISH_PT_history(_DreamPolishPanel, bpy.types.Panel):
    bl_idname = "DREAMPOLISH_PT_history"
    bl_label = "History"
    bl_parent_id = "DREAMPOLISH_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        rt = context.window_manager.dreampolish
        row = self.layout.row()
        row.template_list("DREAMPOLISH_UL_history", "", rt, "history", rt, "history_index", rows=4)
        col = row.column(align=True)
        col.operator("dreampolish.refresh_history", text="", icon="FILE_REFRESH")
        col.operator("dreampolish.reimport", text="", icon="IMPORT")
        col.operator("dreampolish.attach", text="", icon="LINKED")


classes = (
    DREAMPOLISH_PT_main,
    DREAMPOLISH_PT_prompt,
    DREAMPOLISH_PT_stages,
    DREAMPOLISH_PT_refine,
    DREAMPOLISH_PT_job,
    DREAMPOLISH_UL_history,
    DREAMPOLISH_PT_history,
)
