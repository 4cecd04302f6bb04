"""A typed config's values from outside, checked: plain JSON of its fields, and a request's options
that override fields by dotted path ("nerf.steps": 200, "texture.field.grid.n_levels": 12).

Every value is checked against the field's annotation (`coerce`: Literal, unions, tuples, lists, dicts,
nested dataclasses, bool/int/float/str) and against its declared range or file-name rule
(config_fields.py); a wrong one raises ValidationError naming the field. Configs are never pickled:
`to_json_dict` writes their fields as plain JSON, `from_json_dict` reads them back.
"""

from __future__ import annotations

import copy
import dataclasses
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from dreampolish.protocol.errors import ValidationError

from .config_fields import check_field

T = TypeVar("T")


def _describe(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against annotation `tp` and return it in that type (ints widen to floats, lists to
    tuples). Raises ValidationError naming `path`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp) and type(value) in {type(a) for a in get_args(tp)}:
            return value
        raise ValidationError(f"{path} must be {_describe(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ValidationError(f"{path} must not be null")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, path)
            except ValidationError as e:
                errors.append(str(e))
        raise ValidationError(errors[0] if len(errors) == 1 else f"{path} has the wrong type: {value!r}")
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValidationError(f"{path} must be a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValidationError(f"{path} must have {len(args)} items, got {len(value)}")
        return tuple(coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        (arg,) = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValidationError(f"{path} must be a list, got {type(value).__name__}")
        return [coerce(v, arg, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = get_args(tp)
        if not isinstance(value, dict):
            raise ValidationError(f"{path} must be a mapping, got {type(value).__name__}")
        return {coerce(k, kt, path): coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValidationError(f"{path} must be a mapping of {tp.__name__} fields")
        return from_json_dict(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValidationError(f"{path} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValidationError(f"{path} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValidationError(f"{path} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValidationError(f"{path} must be a string, got {value!r}")
    raise ValidationError(f"{path}: unsupported field type {_describe(tp)}")


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=False)


def to_json_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON of a dataclass's fields (tuples become lists)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def from_json_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Rebuild a dataclass from plain JSON; missing fields keep their defaults, unknown ones are errors."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {path}" if path else ""
        raise ValidationError(f"unknown field(s) {', '.join(unknown)}{where}; known: {', '.join(sorted(names))}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        where = f"{path}.{k}" if path else k
        kwargs[k] = check_field(fields[k], coerce(v, hints[k], where), where)
    return cls(**kwargs)


def field_paths(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf field of a nested dataclass as {"a.b.c": type annotation}."""
    out: dict[str, Any] = {}
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        name = f"{prefix}{f.name}"
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(field_paths(value, name + "."))
        else:
            out[name] = hints[f.name]
    return out


def apply_options(cfg: T, options: dict[str, Any]) -> T:
    """A deep copy of `cfg` with fields overridden by dotted paths ("nerf.steps": 200)."""
    out = copy.deepcopy(cfg)
    for key, value in options.items():
        if not isinstance(key, str) or not key:
            raise ValidationError(f"option names must be non-empty strings, got {key!r}")
        parts = key.split(".")
        node = out
        for depth, part in enumerate(parts):
            if not dataclasses.is_dataclass(node):
                raise ValidationError(f"unknown option {key!r}: {'.'.join(parts[:depth])} has no fields")
            fields = {f.name: f for f in dataclasses.fields(node)}
            names = set(fields)
            if part not in names:
                where = ".".join(parts[:depth]) or "the preset"
                raise ValidationError(
                    f"unknown option {key!r}: {where} has no field {part!r} (known: {', '.join(sorted(names))})"
                )
            if depth == len(parts) - 1:
                tp = _hints(type(node))[part]
                if dataclasses.is_dataclass(getattr(node, part)) and not isinstance(value, dict):
                    raise ValidationError(f"option {key!r} names a group of settings; set one of its fields")
                setattr(node, part, check_field(fields[part], coerce(value, tp, key), key))
            else:
                node = getattr(node, part)
    return out
