"""The add-on's stages are the backend's (welcome.stage_chains): a stage added to the pipeline's runners,
and nowhere else, is in the panel's Run Up To and Pause After and runs from there; before the backend has
answered there is no stage to choose, and the panel says why."""

from __future__ import annotations

import pytest

from tests.support.addon_jobs import generate, job_objects, rt
from tests.support.blender_env import MODULE, bpy, pump
from tests.support.blender_ui import Drawable, enum_identifiers

DREAMPOLISH_GENERATE = ["reference", "nerf", "neus", "dmtet", "polish", "finish", "texture"]


@pytest.fixture(scope="module")
def toy_backend_address():
    """A real backend whose pipeline is DreamPolish's with one more runner (tests/support/toy_stage.py)."""
    from tests.support import blender_env

    with blender_env.backend_process("--preset", "tiny", "--device", "cpu",
                                     pipeline="tests.support.toy_stage:pipeline") as address:
        yield address


def _stages_panel() -> list[str]:
    drawn: list[str] = []
    bpy.types.DREAMPOLISH_PT_stages.draw(Drawable(drawn), bpy.context)
    return drawn


def test_before_a_welcome_there_is_no_stage_to_choose_and_the_panel_says_why(addon, fresh_scene):
    s = bpy.context.scene.dreampolish
    assert enum_identifiers(s, "run_until") == []
    assert _stages_panel()[0] == "Connect to the backend to choose stages: it lists its own"
    assert not bpy.ops.dreampolish.generate_variants.poll()


def test_a_stage_added_to_the_runners_is_in_run_up_to_and_runs_from_there(addon, fresh_scene, toy_backend_address):
    from tests.support import blender_env

    bpy.context.preferences.addons[MODULE].preferences.backend_address = toy_backend_address
    blender_env.connect_when_up()
    s = bpy.context.scene.dreampolish
    assert enum_identifiers(s, "run_until") == ["toy", *DREAMPOLISH_GENERATE]
    assert s.run_until == "texture"  # nothing chosen: the whole chain
    drawn = _stages_panel()
    assert [d for d in drawn if d.startswith("pause_after:")] == [
        f"pause_after:{stage}" for stage in ["toy", *DREAMPOLISH_GENERATE[:-1]]]

    job_id = generate(addon, prompt="a toy", run_until="toy")
    pump(addon, lambda: rt().job_state == "done", timeout_s=120, what="the toy stage's job")
    (obj,) = job_objects(job_id)
    assert obj["dreampolish_stage"] == "toy" and len(obj.data.vertices) == 6
