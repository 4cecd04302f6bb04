"""A backend that requires CURVE authentication: the server key from the preferences lets the add-on in;
another server's key gets a clear "unreachable" (ZeroMQ answers a wrong key with silence)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.blender_env import (
    BACKEND_EXE,
    MODULE,
    REPO_ROOT,
    backend_process,
    bpy,
    connect_and_wait,
    connect_when_up,
)


def _keys(folder: Path) -> Path:
    """Write a server key pair with the backend's own tool; returns the public key file."""
    subprocess.run([str(BACKEND_EXE), "keys", "--out", str(folder)], check=True, cwd=REPO_ROOT,
                   capture_output=True)
    return folder / "server.key"


def test_server_key_from_the_preferences_authenticates(addon, fresh_scene, tmp_path):
    if not BACKEND_EXE.exists():
        pytest.skip("the backend environment .venv is absent: run `make venv`")
    public = _keys(tmp_path / "right")
    other = _keys(tmp_path / "other")
    prefs = bpy.context.preferences.addons[MODULE].preferences
    with backend_process("--curve-secret-key", str(public) + "_secret") as address:
        prefs.backend_address = address
        prefs.timeout_s = 2.0
        prefs.server_key = str(public)  # a key file; its 40-character Z85 text works as well
        connect_when_up()
        assert bpy.context.window_manager.dreampolish.connection == "connected"

        prefs.server_key = str(other)  # the backend is up: only the key is wrong
        assert connect_and_wait() == "error"
        assert "Backend unreachable" in bpy.context.window_manager.dreampolish.message

        prefs.server_key = "not a key"
        with pytest.raises(RuntimeError, match="server key must be 40 Z85 characters"):
            bpy.ops.dreampolish.connect()
