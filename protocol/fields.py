"""Checked readers for the fields of a wire map (a message body, a header, a nested map).

Each reader takes the map, the key and an optional default; a missing or null field gives the
default, or a ValidationError when the field is required. Values of the wrong type or outside
their bounds raise ValidationError or LimitExceeded naming the field: wire input is never trusted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import LimitExceeded, ValidationError
from .job import STAGES

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
        raise ValidationError(f"field {key!r} must be a string, got {type(value).__name__}")
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
        raise ValidationError(f"field {key!r} must be an integer, got {type(value).__name__}")
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
        raise ValidationError(f"field {key!r} must be true or false, got {type(value).__name__}")
    return value


def read_map(body: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    value = _get(body, key, default)
    if not isinstance(value, dict):
        raise ValidationError(f"field {key!r} must be a map, got {type(value).__name__}")
    return value


def read_list(
    body: dict[str, Any], key: str, default: Any = _MISSING, max_items: int = MAX_LIST_ITEMS
) -> Any:
    value = _get(body, key, default)
    if not isinstance(value, list):
        raise ValidationError(f"field {key!r} must be a list, got {type(value).__name__}")
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
    stage = read_str(body, key)
    if stage not in STAGES:
        raise ValidationError(f"field {key!r} must be one of {STAGES}, got {stage!r}")
    return stage


def read_required(body: dict[str, Any], key: str) -> Any:
    """The value of `key`, of any type (a nested map or a frame reference the caller checks)."""
    return _get(body, key, _MISSING)
