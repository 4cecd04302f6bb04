"""The add-on's own client key: made on first use in the extension's user folder, shown (and copied)
from the preferences, and the key a backend with an allow-list refuses, then serves once its public
certificate is in the clients folder (real backend, no restart)."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq.auth

from tests.support.blender_env import (
    BACKEND_EXE,
    MODULE,
    REPO_ROOT,
    backend_process,
    bpy,
    connect_and_wait,
)
from tests.support.blender_ui import PreferencesView


def _key_folder() -> Path:
    return Path(bpy.utils.extension_path_user(MODULE, path="keys"))


@pytest.fixture
def no_client_key(addon, fresh_scene):
    """No pair yet, as on the first start of the add-on."""
    shutil.rmtree(_key_folder(), ignore_errors=True)
    yield
    shutil.rmtree(_key_folder(), ignore_errors=True)


def sys_module():
    return sys.modules[MODULE]


def _draw_preferences() -> list[str]:
    drawn: list[str] = []
    prefs = bpy.context.preferences.addons[MODULE].preferences
    type(prefs).draw(PreferencesView(prefs, drawn), bpy.context)
    return drawn


def test_first_draw_of_the_preferences_makes_a_pair_in_the_user_folder(no_client_key):
    assert not list(_key_folder().glob("*.key*"))
    drawn = _draw_preferences()
    folder = _key_folder()
    publics, secrets = list(folder.glob("*.key")), list(folder.glob("*.key_secret"))
    assert len(publics) == 1 and len(secrets) == 1, sorted(p.name for p in folder.iterdir())
    # The extension's user folder, not the add-on's own folder, which updates replace.
    assert folder == Path(bpy.utils.extension_path_user(MODULE, path="keys"))
    assert ".user" in folder.parts
    assert not folder.is_relative_to(Path(sys_module().__file__).parent)
    assert stat.S_IMODE(secrets[0].stat().st_mode) == 0o600
    public, secret = zmq.auth.load_certificate(str(secrets[0]))
    assert secret and zmq.auth.load_certificate(str(publics[0])) == (public, None)
    # The preferences show the certificate file's public key and where that file is.
    assert public.decode() in drawn
    assert f"Public certificate: {publics[0]}" in drawn
    assert "Copy" in drawn  # the checking layout has checked that its operator exists
    # Later draws show the same pair; none is added.
    assert public.decode() in _draw_preferences()
    assert sorted(folder.glob("*.key*")) == sorted(publics + secrets)


class _RecordingWindowManager:
    clipboard = ""


class _Context:
    def __init__(self):
        self.window_manager = _RecordingWindowManager()


class _Operator:
    def __init__(self):
        self.reports: list[tuple[set, str]] = []

    def report(self, kind, text):
        self.reports.append((kind, text))


def test_copy_puts_the_public_key_on_the_clipboard(no_client_key):
    key = sys_module().client_key.ensure()
    assert bpy.ops.dreampolish.copy_client_key() == {"FINISHED"}
    # Background Blender has no system clipboard (window_manager.clipboard reads ""), so the
    # operator's execute also runs against a window manager that keeps what it is given.
    context, op = _Context(), _Operator()
    assert bpy.types.DREAMPOLISH_OT_copy_client_key.execute(op, context) == {"FINISHED"}
    assert context.window_manager.clipboard == key.public_key
    assert len(key.public_key) == 40
    assert key.public_key[:8] in op.reports[0][1]


def _keys(folder: Path) -> Path:
    subprocess.run([str(BACKEND_EXE), "keys", "--out", str(folder)], check=True, cwd=REPO_ROOT,
                   capture_output=True)
    return folder / "server.key"


def _connect_until(predicate, what: str, timeout_s: float = 60.0) -> None:
    rt = bpy.context.window_manager.dreampolish
    deadline = time.monotonic() + timeout_s
    while True:
        connect_and_wait()
        if predicate(rt):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s: {rt.message}")
        time.sleep(0.5)


def test_an_allow_list_refuses_the_add_on_until_its_key_is_added(no_client_key, tmp_path, monkeypatch):
    if not BACKEND_EXE.exists():
        pytest.skip("the backend environment .venv is absent: run `make venv`")
    server_public = _keys(tmp_path / "server")
    clients = tmp_path / "clients"
    clients.mkdir()
    prefs = bpy.context.preferences.addons[MODULE].preferences
    rt = bpy.context.window_manager.dreampolish
    reported: list[str] = []
    report_op = bpy.types.DREAMPOLISH_OT_report
    original = report_op.execute

    def recording_execute(self, context):
        reported.append(self.message)
        return original(self, context)

    monkeypatch.setattr(report_op, "execute", recording_execute)  # what reaches the status bar
    with backend_process("--curve-secret-key", str(server_public) + "_secret",
                         "--curve-clients", str(clients)) as address:
        prefs.backend_address = address
        prefs.timeout_s = 2.0
        prefs.server_key = str(server_public)
        # Until the process is up the add-on hears nothing; once it is, it is refused by name.
        _connect_until(lambda rt: "does not know your client key" in rt.message, "refusal")
        key = sys_module().client_key.existing()
        assert key is not None, "the first connect with a server key makes the pair"
        assert rt.connection == "error"
        assert f"this backend does not know your client key {key.public_key[:8]}" in rt.message
        assert "unreachable" not in rt.message.lower()
        assert rt.failure == rt.message  # the panel's red box
        assert reported and reported[-1] == rt.message  # the status bar

        shutil.copy(key.public_file, clients)  # what the administrator does; the backend keeps running
        _connect_until(lambda rt: rt.connection == "connected", "connection after the key was added")
        assert rt.message.startswith("Connected")
        assert not rt.failure  # the panel's red box of the refusal is gone
