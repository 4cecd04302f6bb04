"""Fixtures for the add-on's tests (inside the bpy module); the set-up they share is in blender_env.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _env():
    """The shared set-up, imported only inside fixtures: under an interpreter without bpy the test
    modules are reported as skipped instead of this conftest failing to load."""
    from tests.addon import blender_env

    return blender_env


@pytest.fixture(scope="session")
def addon() -> Iterator[object]:
    """The installed and enabled extension's module (bl_ext.dreampolish_test.dreampolish)."""
    env = _env()
    bpy, REPO_NAME, MODULE = env.bpy, env.REPO_NAME, env.MODULE
    repo_dir = Path(tempfile.mkdtemp(prefix="dreampolish-ext-repo-"))
    repos = bpy.context.preferences.extensions.repos
    repo = repos.new(name=REPO_NAME, module=REPO_NAME, custom_directory=str(repo_dir), source="USER")
    result = bpy.ops.extensions.package_install_files(
        filepath=str(env.built_zip()), repo=REPO_NAME, enable_on_install=True)
    assert result == {"FINISHED"}, result
    module = sys.modules[MODULE]
    yield module
    env.addon_utils.disable(MODULE, default_set=True)
    repos.remove(repo)
    shutil.rmtree(repo_dir, ignore_errors=True)
    shutil.rmtree(env.USER_RESOURCES, ignore_errors=True)


@pytest.fixture
def fresh_scene(addon) -> Iterator[object]:
    """An empty scene (no objects, no camera) and an idle add-on for each test."""
    bpy = _env().bpy
    bpy.ops.wm.read_homefile(use_empty=True)
    addon.bridge.disconnect()
    rt = bpy.context.window_manager.dreampolish
    rt.job_id = rt.job_state = rt.message = rt.paused_stage = ""
    rt.connection = "disconnected"
    scene = bpy.context.scene
    yield scene
    addon.bridge.disconnect()


@pytest.fixture(scope="session")
def backend_address() -> Iterator[str]:
    """A real backend process on loopback running the scripted test pipeline."""
    env = _env()
    if not (env.REPO_ROOT / ".venv").exists():
        pytest.skip("the backend environment .venv is absent: run `make venv`")
    from tests.conftest import free_tcp_port

    address = f"tcp://127.0.0.1:{free_tcp_port()}"
    store = Path(tempfile.mkdtemp(prefix="dreampolish-store-"))
    log_path = store / "backend.log"
    backend_env = dict(os.environ, PYTHONPATH=str(env.REPO_ROOT))
    backend_env.pop("BLENDER_USER_RESOURCES", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(env.BACKEND_EXE), "serve", "--bind", address, "--store", str(store),
             "--pipeline", env.TEST_PIPELINE],
            cwd=env.REPO_ROOT, env=backend_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
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


@pytest.fixture
def connected(addon, fresh_scene, backend_address) -> str:
    """The add-on connected to the test backend (waits for the backend process to come up)."""
    bpy, MODULE = _env().bpy, _env().MODULE
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.backend_address = backend_address
    prefs.timeout_s = 5.0
    deadline = time.monotonic() + 60.0
    while True:
        try:
            bpy.ops.dreampolish.connect()
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert bpy.context.window_manager.dreampolish.connection == "connected"
    return backend_address
