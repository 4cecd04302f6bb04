"""Preferences can start a backend on this machine and stop it again."""

from __future__ import annotations

import time

import pytest

from tests.support.blender_env import BACKEND_EXE, MODULE, REPO_ROOT, TEST_PIPELINE, bpy, connect_and_wait


def test_start_connect_and_stop_a_local_backend(addon, fresh_scene, monkeypatch):
    if not BACKEND_EXE.exists():
        pytest.skip("the backend environment .venv is absent: run `make venv`")
    from tests.support.ports import free_tcp_port

    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))  # the test pipeline lives in tests/
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.backend_executable = str(BACKEND_EXE)
    prefs.backend_pipeline = TEST_PIPELINE
    prefs.backend_address = f"tcp://127.0.0.1:{free_tcp_port()}"
    prefs.timeout_s = 2.0
    assert not bpy.ops.dreampolish.backend_stop.poll()
    try:
        assert bpy.ops.dreampolish.backend_start() == {"FINISHED"}
        assert not bpy.ops.dreampolish.backend_start.poll(), "one local backend at a time"
        process = addon.backend_operators._backend_process
        deadline = time.monotonic() + 60.0
        while connect_and_wait() != "connected":
            assert process.poll() is None, "the backend exited"
            assert time.monotonic() < deadline, "the local backend did not answer"
            time.sleep(0.5)
        rt = bpy.context.window_manager.dreampolish
        assert rt.connection == "connected" and rt.device == "cpu"
        assert bpy.ops.dreampolish.backend_stop() == {"FINISHED"}
        assert process.poll() is not None, "the backend process is still running"
        assert rt.connection == "disconnected" and not rt.backend_running
    finally:
        addon.backend_operators.stop_backend()
    # The job store of a local backend lives under the extension's user directory.
    assert addon.preferences.user_dir("store").is_dir()
