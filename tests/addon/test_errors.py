"""The errors an artist meets say what went wrong and what to do."""

from __future__ import annotations

import importlib
import re
import threading

import msgpack
import pytest
import zmq

from tests.support.blender_env import MODULE, bpy, connect_and_wait, pump


def _prefs():
    return bpy.context.preferences.addons[MODULE].preferences


def _rt():
    return bpy.context.window_manager.dreampolish


def test_backend_unreachable(addon, fresh_scene):
    from tests.support.ports import free_tcp_port

    _prefs().backend_address = f"tcp://127.0.0.1:{free_tcp_port()}"
    _prefs().timeout_s = 1.0
    assert connect_and_wait() == "error"
    assert "Backend unreachable" in _rt().message
    bpy.context.scene.dreampolish.prompt = "a teapot"
    assert bpy.ops.dreampolish.generate() == {"FINISHED"}  # connects on the way, without waiting
    pump(addon, lambda: _rt().connection == "error", what="the failed handshake")
    assert "Backend unreachable" in _rt().message
    assert not _rt().job_id and _rt().job_state == "", "the queued submit was never sent"


class _FutureBackend(threading.Thread):
    """A ROUTER that answers every message as a backend of protocol 2.0 would."""

    def __init__(self):
        super().__init__(daemon=True)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            if not self.sock.poll(50):
                continue
            identity, head, *_ = self.sock.recv_multipart()
            request = msgpack.unpackb(head)
            reply = {"v": "2.0", "type": "welcome", "id": "future-1", "re": request.get("id", ""),
                     "job": "", "seq": 0, "body": {}}
            self.sock.send_multipart([identity, msgpack.packb(reply)])
        self.sock.close()
        self.ctx.term()


def test_version_mismatch(addon, fresh_scene):
    server = _FutureBackend()
    server.start()
    try:
        _prefs().backend_address = server.address
        _prefs().timeout_s = 2.0
        assert connect_and_wait() == "error"
        assert re.search("Version mismatch.*protocol 2.0", _rt().message), _rt().message
    finally:
        server.stop.set()
        server.join(5)
    assert _rt().connection == "error"


def test_refine_needs_a_selected_mesh(addon, fresh_scene):
    with pytest.raises(RuntimeError, match="Nothing selected"):
        bpy.ops.dreampolish.refine_selected()
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    bpy.context.scene.collection.objects.link(cam)
    cam.select_set(True)
    bpy.context.view_layer.objects.active = cam
    with pytest.raises(RuntimeError, match="'Camera' is a camera, not a mesh"):
        bpy.ops.dreampolish.refine_selected()


def test_mesh_too_large_for_the_backend(addon, connected):
    # The backend's published limits come with its welcome message; this one accepts 10 triangles.
    addon.bridge.current_welcome().limits["max_faces"] = 10
    bpy.ops.mesh.primitive_cube_add()
    with pytest.raises(RuntimeError, match="mesh too large: 12 triangles; the backend accepts at most 10"):
        bpy.ops.dreampolish.refine_selected()
    assert not _rt().job_id


def test_failed_job_shows_the_backends_reason(addon, connected):
    s = bpy.context.scene.dreampolish
    s.prompt = "a teapot"
    s.overrides = "test.fail_stage=neus, test.fail_kind=job_failed"
    bpy.ops.dreampolish.generate()
    pump(addon, lambda: _rt().job_state == "failed", what="the job to fail")
    assert "model_missing" in _rt().message and "the neus model is not installed" in _rt().message
    assert bpy.ops.dreampolish.generate.poll(), "a failed job does not block the next one"


def test_refused_request_is_reported(addon, connected):
    s = bpy.context.scene.dreampolish
    s.prompt = "a teapot"
    s.overrides = "nerf.no_such_field=3"
    bpy.ops.dreampolish.generate()
    pump(addon, lambda: _rt().job_state != "submitting", what="the backend's answer")
    assert "nerf.no_such_field" in _rt().message
    assert not _rt().job_id


def test_malformed_overrides_are_refused_before_sending(addon, connected):
    s = bpy.context.scene.dreampolish
    s.prompt = "a teapot"
    s.overrides = "nerf.steps"
    with pytest.raises(RuntimeError, match="must read stage.field=value"):
        bpy.ops.dreampolish.generate()


def test_refine_selected_is_greyed_out_over_the_face_limit(addon, connected):
    addon.bridge.current_welcome().limits["max_faces"] = 10
    bpy.ops.mesh.primitive_cube_add()  # 12 triangles
    assert not bpy.ops.dreampolish.refine_selected.poll()
    addon.bridge.current_welcome().limits["max_faces"] = 12
    assert bpy.ops.dreampolish.refine_selected.poll()
    # Modifiers count: the backend receives the evaluated mesh (a subdivided cube: 48 triangles).
    bpy.context.active_object.modifiers.new("Subdivide", "SUBSURF").levels = 1
    bpy.context.view_layer.update()
    assert not bpy.ops.dreampolish.refine_selected.poll()


def test_a_failed_import_is_reported_in_the_panel(addon, connected, monkeypatch):
    def broken_fill(mesh, payload):
        raise MemoryError("out of memory while building the mesh")

    monkeypatch.setattr(addon.mesh_io, "fill_mesh", broken_fill)
    monkeypatch.setattr(addon.mesh_io, "new_mesh", lambda name, payload: broken_fill(None, payload))
    s = bpy.context.scene.dreampolish
    s.prompt = "a teapot"
    bpy.ops.dreampolish.generate()
    pump(addon, lambda: _rt().job_state == "done", what="the job to finish")
    # The failure stays in the panel after the job's later events (here: done).
    assert "Could not import" in _rt().failure and "out of memory while building the mesh" in _rt().failure


def test_connect_returns_at_once_and_the_handshake_ends_later(addon, fresh_scene):
    import time

    from tests.support.ports import free_tcp_port

    _prefs().backend_address = f"tcp://127.0.0.1:{free_tcp_port()}"
    _prefs().timeout_s = 6.0
    started = time.monotonic()
    assert bpy.ops.dreampolish.connect() == {"FINISHED"}
    # Far below the handshake's timeout (what waiting for it would take), with room for a loaded machine.
    assert time.monotonic() - started < 3.0, "Connect held Blender up"
    assert _rt().connection == "connecting"
    pump(addon, lambda: _rt().connection == "error", what="the handshake to give up")
    assert "Backend unreachable" in _rt().message


def test_the_connection_comes_back_after_the_backend_restarts(addon, fresh_scene, tmp_path):
    from tests.support.blender_env import backend_process, connect_when_up
    from tests.support.ports import free_tcp_port

    address = f"tcp://127.0.0.1:{free_tcp_port()}"
    store = tmp_path / "store"
    _prefs().backend_address = address
    _prefs().timeout_s = 1.0  # the client gives a silent backend up after max(4, timeout) s
    with backend_process(address=address, store=store):
        connect_when_up()
        s = bpy.context.scene.dreampolish
        s.prompt, s.overrides = "a teapot", "test.steps=10, test.step_s=0.2"
        bpy.ops.dreampolish.generate()
        pump(addon, lambda: _rt().job_state == "running", what="the job to start")
    # The backend is gone: the add-on notices, then keeps trying.
    pump(addon, lambda: _rt().connection != "connected", timeout_s=15, what="the lost connection")
    assert addon.bridge.reconnecting() or addon.bridge.is_connecting()
    with backend_process(address=address, store=store):
        pump(addon, lambda: _rt().connection == "connected", timeout_s=60, what="the connection to come back")
        # The job resumed on the restarted backend and is followed again.
        pump(addon, lambda: _rt().job_state == "done", timeout_s=60, what="the job to finish")


def test_the_backends_memory_warning_reaches_the_panel(addon, fresh_scene):
    # backend/memory_check.py: before a job starts on a card too small for its preset, the job's
    # first progress event carries the estimate and the card's memory.
    messages = importlib.import_module(f"{MODULE}.protocol.messages")
    rt = bpy.context.window_manager.dreampolish
    rt.job_id, rt.job_state, rt.failure = "20261201-000000-abcdef", "queued", ""
    warning = messages.Progress(job_id=rt.job_id, seq=1, stage="nerf", step=0, total=0,
                                losses={messages.MEMORY_NEEDED_GB: 22.68, messages.DEVICE_MEMORY_GB: 15.9})
    addon.job_events.on_message(warning)
    assert "needs about 22.7 GB of GPU memory" in rt.failure and "has 15.9 GB" in rt.failure, rt.failure
    rt.job_id, rt.job_state, rt.failure = "", "", ""


def test_the_backends_slow_rasteriser_note_reaches_the_panel_without_failing_the_job(addon, fresh_scene):
    # backend/render/rasterize.py: nvdiffrast failed its probe on the backend's card; the job runs on.
    messages = importlib.import_module(f"{MODULE}.protocol.messages")
    rt = bpy.context.window_manager.dreampolish
    rt.job_id, rt.job_state, rt.failure, rt.message = "20261201-000000-abcdef", "queued", "", ""
    note = messages.Progress(job_id=rt.job_id, seq=1, stage="nerf", step=0, total=0,
                             losses={messages.SLOW_RASTERIZER: 1.0})
    addon.job_events.on_message(note)
    assert "nvdiffrast" in rt.message and "slower" in rt.message, rt.message
    assert rt.failure == "" and rt.job_state == "running"
    rt.job_id, rt.job_state, rt.message = "", "", ""


def test_the_backends_offloading_note_reaches_the_panel_without_failing_the_job(addon, fresh_scene):
    # backend/memory_check.py: the preset fits the backend's card only with its idle priors in host
    # memory; the job runs so, and its first progress event says it.
    messages = importlib.import_module(f"{MODULE}.protocol.messages")
    rt = bpy.context.window_manager.dreampolish
    rt.job_id, rt.job_state, rt.failure, rt.message = "20261201-000000-abcdef", "queued", "", ""
    note = messages.Progress(job_id=rt.job_id, seq=1, stage="reference", step=0, total=0,
                             losses={messages.PRIORS_OFFLOADED: 1.0})
    addon.job_events.on_message(note)
    assert "fits the backend's GPU only with" in rt.message, rt.message
    assert rt.failure == "" and rt.job_state == "running"
    rt.job_id, rt.job_state, rt.message = "", "", ""
