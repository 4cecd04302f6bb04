"""The sidebar panels and the preferences draw, in every job state, only what Blender can draw.

Headless Blender never calls draw(), so each draw() runs here against a layout that checks every
call against Blender's own description of UILayout (function, argument names, enum values such as
icons) and checks that each property and operator it names exists.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.blender_env import MODULE, bpy
from tests.support.blender_ui import CheckingLayout, Drawable, PreferencesView

PANELS = ("DREAMPOLISH_PT_main", "DREAMPOLISH_PT_prompt", "DREAMPOLISH_PT_stages", "DREAMPOLISH_PT_refine",
          "DREAMPOLISH_PT_job", "DREAMPOLISH_PT_history")


def _draw_all() -> list[str]:
    drawn: list[str] = []
    for name in PANELS:
        getattr(bpy.types, name).draw(Drawable(drawn), bpy.context)
    rt = bpy.context.window_manager.dreampolish
    for i, item in enumerate(rt.history):
        bpy.types.DREAMPOLISH_UL_history.draw_item(
            None, bpy.context, CheckingLayout(drawn), rt, item, 0, rt, "history_index", i)
    prefs = bpy.context.preferences.addons[MODULE].preferences
    type(prefs).draw(PreferencesView(prefs, drawn), bpy.context)
    return drawn


@pytest.mark.parametrize("state", ["", "queued", "running", "paused", "done", "failed", "cancelled"])
def test_panels_draw_in_every_job_state(addon, fresh_scene, state):
    rt = bpy.context.window_manager.dreampolish
    if state:
        rt.job_id, rt.job_state = "job-1", state
        rt.stage, rt.step, rt.total, rt.progress = "neus", 3, 10, 0.3
        rt.message = "Something happened"
        rt.connection = "error" if state == "failed" else "connected"
        img = bpy.data.images.new("preview", 4, 4)
        img.pixels.foreach_set(np.ones(64, np.float32))
        rt.preview = img
        item = rt.history.add()
        item.job_id, item.prompt, item.status = "job-1", "a teapot", state
    drawn = _draw_all()
    assert "dreampolish.generate" in drawn and "dreampolish.refine_selected" in drawn
    assert ("dreampolish.resume" in drawn) == (state == "paused")
    if not state:
        assert "No job yet" in drawn


def test_the_checking_layout_rejects_what_blender_would_refuse(addon, fresh_scene):
    layout = CheckingLayout([])
    s = bpy.context.scene.dreampolish
    with pytest.raises(AssertionError, match="icon"):
        layout.label(text="x", icon="NO_SUCH_ICON")
    with pytest.raises(AssertionError, match="no property"):
        layout.prop(s, "no_such_setting")
    with pytest.raises(AssertionError, match="no operator"):
        layout.operator("dreampolish.no_such_operator")
    with pytest.raises(AssertionError, match="no argument"):
        layout.row(aligned=True)
    with pytest.raises(AssertionError, match="no attribute"):
        layout.alerted = True
