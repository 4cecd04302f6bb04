"""The object a refine was asked for, found again when its results arrive: by a custom property
set on it at submit, not by its name, which the artist may change while the job runs (a texture
would otherwise land in a new object at the world origin). A custom property is kept by a rename,
by undo and by saving and reopening the .blend, where a Python reference to the object is not."""

from __future__ import annotations

import secrets

import bpy

from .job_cache import JobRecord

TARGET_PROP = "dreampolish_refine_target"
"""Custom property holding a refined object's identity key (JobRecord.target_key)."""


def mark(obj: bpy.types.Object) -> str:
    """The object's identity key, made on its first refine. A copy made with Shift+D carries its
    original's key: the object refined now gets a key of its own, so the two are told apart."""
    key = obj.get(TARGET_PROP)
    if not isinstance(key, str) or not key or any(
            o is not obj and o.get(TARGET_PROP) == key for o in bpy.data.objects):
        key = secrets.token_hex(8)
        obj[TARGET_PROP] = key
    return key


def find(record: JobRecord) -> bpy.types.Object | None:
    """The refined object of `record`, or None when it is gone. A record from before keys were kept
    names its object only."""
    if not record.target_key:
        return bpy.data.objects.get(record.target_object) if record.target_object else None
    found = [o for o in bpy.data.objects if o.get(TARGET_PROP) == record.target_key]
    # Copies made after the submit carry the key too: the one still named as at submit, else the first.
    named = [o for o in found if o.name == record.target_object]
    if named or found:
        return (named or found)[0]
    # The key is set outside an undo step (the submit is none): a Ctrl+Z past the submit takes it away,
    # and the object keeps only its name.
    return bpy.data.objects.get(record.target_object) if record.target_object else None
