"""Field declarations for the typed configs: the range of a numeric setting and the rule for a setting
that names a file, kept beside the field's default and docstring.

    steps: int = ranged(5000, 1, 200_000)
    # docstring of the field on the next line, as everywhere

The metadata is read by config_values.apply_options / from_json_dict, which refuse a request's value outside
it with a ValidationError naming the field and the range. For a tuple field the range holds for each
item. Ranges bound what a real run needs (every built-in preset lies well inside) and keep a request
from holding the GPU for ever or allocating more memory than any card has.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.names import check_file_name

RANGE_KEY = "range"
FILE_NAME_KEY = "file_name"


def ranged(default: Any, lo: float, hi: float) -> Any:
    """A dataclass field with `default` whose values (each item, for a tuple) must lie in [lo, hi]."""
    return dataclasses.field(default=default, metadata={RANGE_KEY: (lo, hi)})


def file_name(default: str, suffix: str) -> Any:
    """A dataclass field naming a file inside the job's folder: a plain name ending with `suffix`
    (protocol/names.py's check)."""
    return dataclasses.field(default=default, metadata={FILE_NAME_KEY: suffix})


def check_field(f: dataclasses.Field, value: Any, path: str) -> Any:
    """`value` if it satisfies `f`'s declared range or file-name rule; ValidationError naming `path`."""
    bounds = f.metadata.get(RANGE_KEY)
    if bounds is not None:
        lo, hi = bounds
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue  # the type check has already spoken
            if not (math.isfinite(item) and lo <= item <= hi):
                raise ValidationError(f"{path} must be in [{lo}, {hi}], got {item!r}")
    suffix = f.metadata.get(FILE_NAME_KEY)
    if suffix is not None:
        check_file_name(value, path, suffix=suffix)
    return value


def ranged_required(lo: float, hi: float) -> Any:
    """A dataclass field without a default whose values must lie in [lo, hi]."""
    return dataclasses.field(metadata={RANGE_KEY: (lo, hi)})
