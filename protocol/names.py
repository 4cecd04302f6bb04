"""The one check for names that come from the wire and end up naming a file or folder.

Nothing a peer sends may choose *where* something is written: a job id names a folder of the job
store, an option such as `export.glb_name` names a file inside the job's folder. Such a name must be
a single plain path component, so that joining it to its folder can never leave that folder: no
separator of any platform ("/", "\\"), no drive or stream colon (":"), no ".." (nor a name that is
only dots), no NUL or other control characters, not empty and not longer than MAX_FILE_NAME_CHARS.
"""

from __future__ import annotations

from typing import Any

from .errors import ValidationError
from .wire_types import wire_type

MAX_FILE_NAME_CHARS = 128
"""Longest accepted name; well under the 255-byte component limit of common file systems even in UTF-8."""

_FORBIDDEN = frozenset("/\\:")


def check_file_name(value: Any, field: str, suffix: str | None = None) -> str:
    """`value` if it is a safe single file or folder name, else ValidationError naming `field`.
    With `suffix` (e.g. ".glb") the name must also end with it, so that it cannot take the name of
    another kind of file in the same folder."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a file name (a string), got {wire_type(value)}")
    problem = _problem(value)
    if problem is None and suffix is not None and (not value.endswith(suffix) or value == suffix):
        problem = f"must end with {suffix!r}"
    if problem is not None:
        raise ValidationError(f"{field} must be a plain file name inside its folder: {problem}, got {value[:80]!r}")
    return value


def _problem(value: str) -> str | None:
    if not value:
        return "it is empty"
    if len(value) > MAX_FILE_NAME_CHARS:
        return f"it has {len(value)} characters, the limit is {MAX_FILE_NAME_CHARS}"
    if any(ch in _FORBIDDEN for ch in value):
        return "no path separators or drive colons"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return "no NUL or control characters"
    if ".." in value or value.strip(".") == "":
        return "no '..'"
    if value != value.strip():
        return "no leading or trailing spaces"
    return None
