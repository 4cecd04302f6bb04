"""A stand-in for Blender's UILayout that checks every call against Blender's own description of it, and
the panels' and preferences' draw() targets built on it (inside the bpy module only)."""

from __future__ import annotations

import re

from tests.support.blender_env import bpy

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
            if name == "prop_enum":  # one button of an enum, as "property:value" (Pause After's stages)
                self.drawn.append(f"{bound['property']}:{bound['value']}")
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
                assert bound["value"] in enum_identifiers(data, prop), f"{prop} has no item {bound['value']!r}"
        elif name == "operator":
            category, op = bound["operator"].split(".")
            assert op in dir(getattr(bpy.ops, category)), f"no operator {bound['operator']}"
        elif name == "template_list":
            assert hasattr(bpy.types, bound["listtype_name"])
            assert bound["propname"] in bound["dataptr"].bl_rna.properties
            assert bound["active_propname"] in bound["active_dataptr"].bl_rna.properties
        elif name == "progress":
            assert 0.0 <= bound["factor"] <= 1.0


def enum_identifiers(data, prop: str) -> list[str]:
    """The items an enum property of `data` offers now: its fixed ones, or, for items the add-on makes
    at run time (the backend's stages), those Blender lists when it refuses an assignment of a bad one."""
    fixed = list(data.bl_rna.properties[prop].enum_items.keys())
    if fixed:
        return fixed
    # A dynamic enum: Blender lists the items its callback returns in the error of a bad assignment.
    flag = data.bl_rna.properties[prop].is_enum_flag
    try:
        setattr(data, prop, {"\x01"} if flag else "\x01")
    except (TypeError, ValueError) as exc:  # "enum "x" not found in ('a', 'b')" (the wording varies)
        text = str(exc)
        return re.findall(r"'([^']*)'", text.split("not found in", 1)[1]) if "not found in" in text else []
    return []


class Drawable:
    def __init__(self, drawn: list[str]):
        self.layout = CheckingLayout(drawn)


class PreferencesView:
    """The add-on's preferences with a checking layout (draw() reads both from self)."""

    def __init__(self, prefs, drawn: list[str]):
        self.layout = CheckingLayout(drawn)
        self._prefs = prefs

    def __getattr__(self, name):
        return getattr(self._prefs, name)
