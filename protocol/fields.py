"""Checked readers for the fields of a wire map (a message body, a header, a nested map).

Each reader takes the map, the key and an optional default; a missing or null field gives the
default, or a ValidationError when the field is required. Values of the wrong type or outside
their bounds raise ValidationError or LimitExceeded naming the field: wire input is never trusted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import LimitExceeded, ValidationError
from .job import JOB_MODES, MAX_STAGES, check_stage_name, check_stage_names
from .wire_types import wire_type

MAX_ID_CHARS = 64
MAX_NAME_CHARS = 256
MAX_MESSAGE_CHARS = 4096
MAX_OPTIONS = 256
MAX_LIST_ITEMS = 10_000

_MISSING = object()


def _get(body: dict[str, Any], key: str, default: Any) -> Any:
    value = body.get(key, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise ValidationError(f"field {key!r} is required")
        return default
    return value


def read_str(body: dict[str, Any], key: str, default: Any = _MISSING, max_chars: int = MAX_NAME_CHARS) -> Any:
    value = _get(body, key, default)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, str):
        raise ValidationError(f"field {key!r} must be a string, got {wire_type(value)}")
    if len(value) > max_chars:
        raise LimitExceeded(f"field {key!r} has {len(value)} characters; the limit is {max_chars}")
    return value


def read_int(
    body: dict[str, Any], key: str, default: Any = _MISSING, lo: int = 0, hi: int = 2**63 - 1
) -> Any:
    value = _get(body, key, default)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"field {key!r} must be an integer, got {wire_type(value)}")
    if not lo <= value <= hi:
        raise ValidationError(f"field {key!r} must be in [{lo}, {hi}], got {value}")
    return value


def read_float(body: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    value = _get(body, key, default)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
        raise ValidationError(f"field {key!r} must be a finite number, got {value!r}")
    return float(value)


def read_bool(body: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    value = _get(body, key, default)
    if not isinstance(value, bool):
        raise ValidationError(f"field {key!r} must be true or false, got {wire_type(value)}")
    return value


def read_map(body: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    value = _get(body, key, default)
    if not isinstance(value, dict):
        raise ValidationError(f"field {key!r} must be a map, got {wire_type(value)}")
    return value


def read_list(
    body: dict[str, Any], key: str, default: Any = _MISSING, max_items: int = MAX_LIST_ITEMS
) -> Any:
    value = _get(body, key, default)
    if not isinstance(value, list):
        raise ValidationError(f"field {key!r} must be a list, got {wire_type(value)}")
    if len(value) > max_items:
        raise LimitExceeded(f"field {key!r} has {len(value)} items; the limit is {max_items}")
    return value


def read_str_list(body: dict[str, Any], key: str, default: Any = _MISSING, max_items: int = 256) -> list[str]:
    items = read_list(body, key, default, max_items)
    for item in items:
        if not isinstance(item, str) or len(item) > MAX_NAME_CHARS:
            raise ValidationError(f"field {key!r} must be a list of short strings")
    return list(items)


def read_stage(body: dict[str, Any], key: str) -> str:
    return check_stage_name(read_str(body, key), f"field {key!r}")


def refuse_unknown_fields(d: dict[str, Any], known: tuple[str, ...] | frozenset[str], where: str) -> None:
    """A request's map may hold only the fields this protocol version defines: a field the backend does
    not know (a typo, or a newer client's) is refused by name rather than silently ignored."""
    for key in d:
        if key not in known:
            raise ValidationError(f"{where} has a field this backend does not know: {str(key)[:64]!r} (its "
                                  f"fields: {', '.join(sorted(known)) or 'none'})")


def read_stage_chains(body: dict[str, Any], key: str) -> dict[str, list[str]]:
    """welcome's map of job mode -> stage names in order ({} when absent: a 1.0 backend). A mode this
    reader does not know is kept (a later minor version may add one)."""
    chains = read_map(body, key, {})
    if len(chains) > len(JOB_MODES) * 4:
        raise LimitExceeded(f"field {key!r} has {len(chains)} modes")
    out: dict[str, list[str]] = {}
    for mode in chains:
        if not isinstance(mode, str) or len(mode) > MAX_ID_CHARS:
            raise ValidationError(f"field {key!r} must be keyed by mode names")
        out[mode] = check_stage_names(f"{key}[{mode!r}]", read_str_list(chains, mode, max_items=MAX_STAGES))
    return out


def read_required(body: dict[str, Any], key: str) -> Any:
    """The value of `key`, of any type (a nested map or a frame reference the caller checks)."""
    return _get(body, key, _MISSING)
