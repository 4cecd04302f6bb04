"""Shared set-up of the add-on's tests, which run inside the bpy module (.venv-blender, or .venv-blender313).

The built extension zip (build/, from `make addon`; built here if missing) is installed into a
temporary extension repository exactly as Blender installs it, and enabled. Blender's user
folders point to a temporary directory, so nothing is written to the real home.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
USER_RESOURCES = Path(tempfile.mkdtemp(prefix="dreampolish-blender-user-"))
atexit.register(shutil.rmtree, USER_RESOURCES, True)
# Must be set before bpy is imported: Blender reads it once at start-up.
os.environ["BLENDERUSER_RESOURCES"] = str(USER_RESOURCES)

bpy = pytest.importorskip("bpy", reason="the add-on tests run inside Blender's bpy module (.venv-blender)")
# Blender's own modules: importable only once bpy is imported.
addon_utils = pytest.importorskip("addon_utils")
bmesh = pytest.importorskip("bmesh")
mathutils = pytest.importorskip("mathutils")

REPO_NAME = "dreampolish_test"
ADDON_ID = "dreampolish"
MODULE = f"bl_ext.{REPO_NAME}.{ADDON_ID}"
BACKEND_EXE = REPO_ROOT / ".venv" / "bin" / "dreampolish-backend"
TEST_PIPELINE = "tests.pipelines:ScriptedPipeline"


def built_zip() -> Path:
    """The Linux x86_64 zip of the extension; built with this interpreter's Blender if absent."""
    zips = sorted((REPO_ROOT / "build").glob("dreampolish-*-linux_x64.zip"))
    if not zips:
        builder = REPO_ROOT / ".venv" / "bin" / "python"
        if not builder.exists():
            pytest.skip("no built extension in build/ and no .venv to build it: run `make addon`")
        subprocess.run(
            [str(builder), str(REPO_ROOT / "build_addon.py"), "--blender-python", sys.executable],
            check=True, cwd=REPO_ROOT,
        )
        zips = sorted((REPO_ROOT / "build").glob("dreampolish-*-linux_x64.zip"))
    return zips[-1]


def pump(addon, until: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    """Drain the add-on's event queue (what its timer does in a live Blender) until `until()` holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        addon.bridge.drain()
        if until():
            return
        time.sleep(0.02)
    rt = bpy.context.window_manager.dreampolish
    raise AssertionError(
        f"timed out after {timeout_s} s waiting for {what or 'a condition'}; "
        f"job state {rt.job_state!r}, message {rt.message!r}"
    )


@contextlib.contextmanager
def backend_process(*extra_args: str) -> Iterator[str]:
    """A real backend process on a free loopback port running the scripted test pipeline; yields its address."""
    if not (REPO_ROOT / ".venv").exists():
        pytest.skip("the backend environment .venv is absent: run `make venv`")
    from tests.conftest import free_tcp_port

    address = f"tcp://127.0.0.1:{free_tcp_port()}"
    store = Path(tempfile.mkdtemp(prefix="dreampolish-store-"))
    backend_env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    backend_env.pop("BLENDER_USER_RESOURCES", None)
    with open(store / "backend.log", "wb") as log:
        proc = subprocess.Popen(
            [str(BACKEND_EXE), "serve", "--bind", address, "--store", str(store),
             "--pipeline", TEST_PIPELINE, *extra_args],
            cwd=REPO_ROOT, env=backend_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(store, ignore_errors=True)


def connect_when_up(timeout_s: float = 60.0) -> None:
    """Press Connect until the backend process has started (its start-up takes a few seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            bpy.ops.dreampolish.connect()
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
