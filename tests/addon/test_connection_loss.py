"""What the artist sees when the link to the backend is interrupted (the backend restarted while a
job streams, Blender busy for longer than the timeout, the add-on disabled), and that a request
that cannot be sent does not interrupt it."""

from __future__ import annotations

import importlib
import time

from tests.support.blender_env import MODULE, backend_process, bpy, connect_when_up, pump

STAGES = ["nerf", "neus", "dmtet", "polish", "texture"]


def _rt():
    return bpy.context.window_manager.dreampolish


def _job_objects(job_id: str) -> list[bpy.types.Object]:
    return [o for o in bpy.context.scene.objects if o.get("dreampolish_job") == job_id]


def test_a_backend_restarted_at_once_mid_job_is_noticed_and_the_job_lands_in_its_object(addon, fresh_scene, tmp_path):
    # A supervisor restarts the backend within a second: ZeroMQ reconnects by itself and the new
    # backend answers pings, so silence never tells; the job's events must still come back.
    from tests.support.ports import free_tcp_port

    prefs = bpy.context.preferences.addons[MODULE].preferences
    address = f"tcp://127.0.0.1:{free_tcp_port()}"
    store = tmp_path / "store"
    prefs.backend_address, prefs.timeout_s = address, 5.0
    with backend_process(address=address, store=store):
        connect_when_up()
        s = bpy.context.scene.dreampolish
        s.prompt, s.overrides = "a teapot", "test.steps=10, test.step_s=0.1"
        bpy.ops.dreampolish.generate()
        pump(addon, lambda: bool(_job_objects(_rt().job_id)), what="the first stage's object")
        job_id = _rt().job_id
    messages: list[str] = []
    with backend_process(address=address, store=store):
        def back_and_done() -> bool:
            messages.append(_rt().message)
            return _rt().connection == "connected" and _rt().job_state == "done"

        pump(addon, back_and_done, timeout_s=60, what="the job to finish after the restart")
    assert any(text.startswith("Connection lost") for text in messages), sorted(set(messages))
    (obj,) = _job_objects(job_id)
    assert obj.get("dreampolish_stage") in ("texture", "export")
    assert len(obj.data.polygons) == 8


def test_blender_busy_for_longer_than_the_timeout_loses_neither_the_submit_nor_the_job(addon, connected):
    # The submit is sent, then Blender renders for longer than the timeout and than dead_after_s
    # (no timer runs): the backend's reply and the job's events wait in the socket meanwhile.
    s = bpy.context.scene.dreampolish
    s.prompt, s.overrides = "a teapot", "test.steps=5, test.step_s=0.05"
    assert bpy.ops.dreampolish.generate() == {"FINISHED"}
    addon.bridge.drain()  # sends the submit
    assert _rt().job_state == "submitting"
    time.sleep(bpy.context.preferences.addons[MODULE].preferences.timeout_s + 1.5)
    pump(addon, lambda: _rt().job_state == "done", what="the job to finish")
    assert _rt().connection == "connected", _rt().message
    (obj,) = _job_objects(_rt().job_id)
    assert obj.get("dreampolish_stage") in ("texture", "export")


def test_disabling_the_add_on_with_a_request_in_flight_and_enabling_it_follows_the_job_again(addon, connected):
    import threading

    from tests.support.blender_env import addon_utils, connect_when_up

    threads_before = set(threading.enumerate())
    s = bpy.context.scene.dreampolish
    s.prompt, s.overrides = "a teapot", "test.steps=10, test.step_s=0.1"
    bpy.ops.dreampolish.generate()
    pump(addon, lambda: _rt().job_state == "running", what="the job to start")
    job_id = _rt().job_id
    assert addon.job_follow.request_job_list()
    addon.bridge.drain()  # the list request is sent; its reply and the job's events are on their way
    addon_utils.disable(MODULE, default_set=True)
    try:
        assert not addon.bridge.is_connected() and not addon.bridge.is_connecting()
        assert not bpy.app.timers.is_registered(addon.bridge._timer)
        assert addon.bridge.drain() == 0, "events of the closed connection were applied"
    finally:
        addon_utils.enable(MODULE, default_set=True)
    assert set(threading.enumerate()) == threads_before, "the add-on left a thread"
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.backend_address, prefs.timeout_s = connected, 5.0
    connect_when_up()
    # The job list that comes with the welcome finds the job still going: it is followed again.
    pump(addon, lambda: _rt().job_id == job_id and _rt().job_state == "done", what="the job to be followed to its end")
    (obj,) = _job_objects(job_id)
    assert obj.get("dreampolish_stage") in ("texture", "export")


def test_an_override_that_cannot_be_sent_fails_the_submit_and_keeps_the_connection(addon, connected):
    s = bpy.context.scene.dreampolish
    s.prompt, s.overrides = "a teapot", "nerf.steps=99999999999999999999999"
    assert bpy.ops.dreampolish.generate() == {"FINISHED"}
    pump(addon, lambda: _rt().job_state != "submitting", what="the submit to fail")
    assert "cannot send submit" in _rt().message, _rt().message
    assert _rt().connection == "connected" and not _rt().job_id
    for _ in range(10):  # nothing follows: no lost connection, no reconnect
        addon.bridge.drain()
        time.sleep(0.02)
    assert _rt().connection == "connected" and "cannot send submit" in _rt().message, _rt().message


def test_after_a_restart_a_second_job_still_going_is_shown_and_no_stage_lands_twice(addon, fresh_scene, tmp_path,
                                                                                     monkeypatch):
    # Job A runs; B, queued after it, is cancelled: the panel shows B, A goes on beside it. After
    # the restart the add-on attaches A again from its last stage, and the job list (A still going,
    # B ended) makes A the job shown: that must not attach A a second time, which replayed the
    # stages A made while the backend was away once more (each imported twice).
    from tests.support.ports import free_tcp_port

    applied: list[tuple[str, int]] = []
    stage_result = importlib.import_module(f"{MODULE}.protocol.messages").StageResult
    real = addon.job_events.HANDLERS[stage_result]

    def recording(rt, msg, item, shown):
        applied.append((msg.job_id, msg.seq))
        real(rt, msg, item, shown)

    monkeypatch.setitem(addon.job_events.HANDLERS, stage_result, recording)
    # The add-on comes back after A has made a stage or two on the restarted backend.
    monkeypatch.setattr(addon.bridge, "RECONNECT_INTERVAL_S", 6.0)
    prefs = bpy.context.preferences.addons[MODULE].preferences
    address = f"tcp://127.0.0.1:{free_tcp_port()}"
    store = tmp_path / "store"
    prefs.backend_address, prefs.timeout_s = address, 5.0
    s = bpy.context.scene.dreampolish
    with backend_process(address=address, store=store):
        connect_when_up()
        s.prompt, s.overrides = "job a", "test.steps=14, test.step_s=0.25"
        bpy.ops.dreampolish.generate()
        pump(addon, lambda: _rt().job_state == "running", what="job A to start")
        job_a = _rt().job_id
        s.prompt, s.overrides = "job b", "test.steps=1"
        bpy.ops.dreampolish.generate()
        pump(addon, lambda: _rt().job_id != job_a and _rt().job_state == "queued", what="job B to be queued")
        assert bpy.ops.dreampolish.cancel() == {"FINISHED"}
        pump(addon, lambda: _rt().job_state == "cancelled", what="job B to be cancelled")
        pump(addon, lambda: any(j == job_a for j, _ in applied), what="job A's first stage")
    with backend_process(address=address, store=store):
        pump(addon, lambda: _rt().job_id == job_a and _rt().job_state == "done", timeout_s=60,
             what="job A to be shown and finish after the restart")
    stages_a = [seq for job, seq in applied if job == job_a]
    assert len(stages_a) == len(set(stages_a)), f"stage results applied twice: {stages_a}"
    assert len(stages_a) == len(STAGES)


def test_disconnect_with_a_submit_unanswered_does_not_keep_generate_greyed_out(addon, connected):
    from tests.support.blender_env import connect_and_wait

    s = bpy.context.scene.dreampolish
    s.prompt = "a teapot"
    assert bpy.ops.dreampolish.generate() == {"FINISHED"}
    assert _rt().job_state == "submitting"
    assert bpy.ops.dreampolish.disconnect() == {"FINISHED"}  # before the submit's answer came
    assert connect_and_wait() == "connected"
    assert _rt().job_state != "submitting" and bpy.ops.dreampolish.generate.poll(), _rt().job_state
    # A submit queued behind the handshake of a new connection is still awaited, and answered.
    assert bpy.ops.dreampolish.disconnect() == {"FINISHED"}
    assert bpy.ops.dreampolish.generate() == {"FINISHED"}  # connects on the way
    pump(addon, lambda: bool(_rt().job_id) and _rt().job_state not in ("submitting", ""),
         what="the submit sent after the handshake to be answered")


def test_a_cancel_queued_behind_a_failing_handshake_is_said_not_to_have_been_sent(addon, fresh_scene):
    # The artist presses Cancel while a reconnection's handshake is still under way; the handshake
    # fails: the cancel must not vanish without a word (the job would go on while the artist thinks
    # it stopped).
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.backend_address, prefs.timeout_s = "tcp://127.0.0.1:9", 1.0  # nothing listens there
    addon.bridge.connect(addon.connection.settings(bpy.context), wait=False)
    assert addon.job_request.cancel("20261201-000000-abcdef")
    pump(addon, lambda: _rt().connection == "error", what="the handshake to fail")
    assert _rt().failure == "Cancel was not sent: the connection was lost", _rt().failure
    assert "no answer from tcp://127.0.0.1:9" in _rt().message


def test_a_followed_job_the_backend_no_longer_has_stops_showing_as_running(addon, connected):
    # The job was deleted or expired on the backend (or the store was wiped) while this Blender
    # still had it as running: following it again must end, not wait for ever.
    job_id = "20261201-000000-abcdef"
    cache = addon.job_follow.job_cache()
    cache.save_record(addon.job_cache.JobRecord(job_id=job_id, prompt="gone", status="running"))
    addon.job_follow.attach(_rt(), job_id)
    assert _rt().job_state in ("queued", "running")
    pump(addon, lambda: _rt().job_state == "failed", what="the job to be found gone")
    assert "no longer on the backend" in _rt().failure, _rt().failure
    assert cache.load_record(job_id).status == "failed"
    _rt().failure = ""
