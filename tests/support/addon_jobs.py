"""Jobs through the add-on's own operators, for the add-on's tests (inside the bpy module only)."""

from __future__ import annotations

from tests.support.blender_env import bpy, pump


def rt():
    return bpy.context.window_manager.dreampolish


def job_objects(job_id: str) -> list[bpy.types.Object]:
    return [o for o in bpy.context.scene.objects if o.get("dreampolish_job") == job_id]


def submit(addon, operator, **settings) -> str:
    s = bpy.context.scene.dreampolish
    for key, value in settings.items():
        setattr(s, key, value)
    assert operator() == {"FINISHED"}
    pump(addon, lambda: rt().job_state != "submitting", what="the backend's answer to the submit")
    assert rt().job_id, f"the backend refused the job: {rt().message}"
    return rt().job_id


def generate(addon, prompt: str = "a small wooden stool", **settings) -> str:
    return submit(addon, bpy.ops.dreampolish.generate, prompt=prompt, **settings)
