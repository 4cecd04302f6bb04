"""Reconnection through requests made while the backend is down: the artist presses a button while
the add-on waits to try again, the backend comes back (by itself, or the artist presses Connect),
and the job the panel followed still lands in its object."""

from __future__ import annotations

from tests.support.blender_env import MODULE, backend_process, bpy, connect_when_up, pump

STAGES = ["nerf", "neus", "dmtet", "polish", "texture"]


def _rt():
    return bpy.context.window_manager.dreampolish


def _job_objects(job_id: str) -> list[bpy.types.Object]:
    return [o for o in bpy.context.scene.objects if o.get("dreampolish_job") == job_id]


def _job_running_then_backend_stopped(addon, tmp_path) -> tuple[str, str]:
    """A job followed in the panel, its first stage in the scene, then its backend stopped (by its PID)
    and the loss noticed; returns (address, job id)."""
    from tests.support.ports import free_tcp_port

    prefs = bpy.context.preferences.addons[MODULE].preferences
    address = f"tcp://127.0.0.1:{free_tcp_port()}"
    prefs.backend_address, prefs.timeout_s = address, 2.0
    with backend_process(address=address, store=tmp_path / "store"):
        connect_when_up()
        s = bpy.context.scene.dreampolish
        s.prompt, s.overrides = "a teapot", "test.steps=12, test.step_s=0.15"
        assert bpy.ops.dreampolish.generate() == {"FINISHED"}
        pump(addon, lambda: bool(_job_objects(_rt().job_id)), what="the first stage's object")
        job_id = _rt().job_id
    # Between two reconnection tries (nothing is connecting): a button pressed now connects on its way.
    pump(addon, addon.bridge.reconnecting, timeout_s=30, what="the loss to be noticed")
    return address, job_id


def _generate_while_down(addon) -> None:
    s = bpy.context.scene.dreampolish
    s.prompt, s.overrides = "a second teapot", "test.steps=1"
    assert bpy.ops.dreampolish.generate() == {"FINISHED"}
    pump(addon, lambda: _rt().job_state != "submitting", what="the submit to fail")
    assert "Submit was not sent" in _rt().failure, _rt().failure


def _assert_job_landed(job_id: str) -> None:
    (obj,) = _job_objects(job_id)
    assert obj.get("dreampolish_stage") in ("texture", "export")
    assert len(obj.data.polygons) == 8


def test_a_request_made_while_the_backend_is_down_does_not_end_reconnection(addon, fresh_scene, tmp_path):
    address, job_id = _job_running_then_backend_stopped(addon, tmp_path)
    _generate_while_down(addon)
    with backend_process(address=address, store=tmp_path / "store"):
        # Nobody presses Connect: the add-on keeps trying, and the job followed carries on.
        pump(addon, lambda: _rt().connection == "connected" and _rt().job_id == job_id and _rt().job_state == "done",
             timeout_s=60, what="the add-on to reconnect by itself and the job to finish")
    _assert_job_landed(job_id)


def test_after_a_manual_connect_the_followed_job_is_attached_again_and_lands(addon, fresh_scene, tmp_path,
                                                                            monkeypatch):
    address, job_id = _job_running_then_backend_stopped(addon, tmp_path)
    monkeypatch.setattr(addon.bridge, "RECONNECT_INTERVAL_S", 600.0)  # the artist is quicker than the next try
    _generate_while_down(addon)
    with backend_process(address=address, store=tmp_path / "store"):
        connect_when_up()
        pump(addon, lambda: _rt().job_id == job_id and _rt().job_state == "done", timeout_s=60,
             what="the followed job to finish after Connect (not 'running' for ever)")
    _assert_job_landed(job_id)
