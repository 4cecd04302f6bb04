"""The sidebar panels and the preferences draw, in every job state, only what Blender can draw.

Headless Blender never calls draw(), so each draw() runs here against a layout that checks every
call against Blender's own description of UILayout (function, argument names, enum values such as
icons) and checks that each property and operator it names exists.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.addon.blender_env import MODULE, bpy

UI_FUNCTIONS = bpy.types.UILayout.bl_rna.functions
UI_PROPERTIES = bpy.types.UILayout.bl_rna.properties


class CheckingLayout:
    """Stands in for bpy.types.UILayout; records the labels and operators drawn."""

    def __init__(self, drawn: list[str]):
        object.__setattr__(self, "drawn", drawn)

    def __setattr__(self, name, value):
        assert name in UI_PROPERTIES, f"UILayout has no attribute {name!r}"
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        assert name in UI_FUNCTIONS, f"UILayout has no function {name!r}"
        fn = UI_FUNCTIONS[name]
        params = [p for p in fn.parameters if not p.is_output]

        def call(*args, **kwargs):
            names = [p.identifier for p in params]
            assert len(args) <= len(names), f"{name}() takes {len(names)} arguments"
            bound = dict(zip(names, args))
            for key, value in kwargs.items():
                assert key in names, f"{name}() has no argument {key!r}"
                bound[key] = value
            for p in params:
                if p.is_required:
                    assert p.identifier in bound, f"{name}() needs {p.identifier!r}"
                value = bound.get(p.identifier)
                if p.type == "ENUM" and isinstance(value, str) and len(p.enum_items):
                    assert value in p.enum_items.keys(), f"{name}({p.identifier}={value!r}) is not valid"
            self._check_refs(name, bound)
            if name in ("label", "operator"):
                self.drawn.append(bound.get("text") or bound.get("operator", ""))
            if name == "icon":
                return 0
            return CheckingLayout(self.drawn)

        return call

    @staticmethod
    def _check_refs(name: str, bound: dict) -> None:
        if name in ("prop", "prop_enum"):
            data, prop = bound["data"], bound["property"]
            assert prop in data.bl_rna.properties, f"{data.bl_rna.identifier} has no property {prop!r}"
            if name == "prop_enum":
                assert bound["value"] in data.bl_rna.properties[prop].enum_items.keys()
        elif name == "operator":
            category, op = bound["operator"].split(".")
            assert op in dir(getattr(bpy.ops, category)), f"no operator {bound['operator']}"
        elif name == "template_list":
            assert hasattr(bpy.types, bound["listtype_name"])
            assert bound["propname"] in bound["dataptr"].bl_rna.properties
            assert bound["active_propname"] in bound["active_dataptr"].bl_rna.properties
        elif name == "progress":
            assert 0.0 <= bound["factor"] <= 1.0


class _Drawable:
    def __init__(self, drawn: list[str]):
        self.layout = CheckingLayout(drawn)


PANELS = ("DREAMPOLISH_PT_main", "DREAMPOLISH_PT_prompt", "DREAMPOLISH_PT_stages", "DREAMPOLISH_PT_refine",
          "DREAMPOLISH_PT_job", "DREAMPOLISH_PT_history")


def _draw_all() -> list[str]:
    drawn: list[str] = []
    for name in PANELS:
        getattr(bpy.types, name).draw(_Drawable(drawn), bpy.context)
    rt = bpy.context.window_manager.dreampolish
    for i, item in enumerate(rt.history):
        bpy.types.DREAMPOLISH_UL_history.draw_item(
            None, bpy.context, CheckingLayout(drawn), rt, item, 0, rt, "history_index", i)
    prefs = bpy.context.preferences.addons[MODULE].preferences
    type(prefs).draw(_PreferencesView(prefs, drawn), bpy.context)
    return drawn


class _PreferencesView:
    """The add-on's preferences with a checking layout (draw() reads both from self)."""

    def __init__(self, prefs, drawn: list[str]):
        self.layout = CheckingLayout(drawn)
        self._prefs = prefs

    def __getattr__(self, name):
        return getattr(self._prefs, name)


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
