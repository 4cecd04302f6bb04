"""Fixtures for the add-on's tests (inside the bpy module); the set-up they share is in tests/support/blender_env.py."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _env():
    """The shared set-up, imported only inside fixtures: under an interpreter without bpy the test
    modules are reported as skipped instead of this conftest failing to load."""
    from tests.support import blender_env

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
    """An empty scene (no objects, no camera), default preferences and an idle add-on for each test."""
    bpy = _env().bpy
    bpy.ops.wm.read_homefile(use_empty=True)
    addon.bridge.disconnect()
    prefs = bpy.context.preferences.addons[_env().MODULE].preferences
    for name in prefs.bl_rna.properties.keys():
        if name not in ("rna_type", "bl_idname"):
            prefs.property_unset(name)
    rt = bpy.context.window_manager.dreampolish
    rt.job_id = rt.job_state = rt.message = rt.paused_stage = rt.failure = ""
    rt.connection = "disconnected"
    scene = bpy.context.scene
    yield scene
    addon.bridge.disconnect()


@pytest.fixture(scope="session")
def backend_address() -> Iterator[str]:
    """The shared test backend (started once per session)."""
    with _env().backend_process() as address:
        yield address


@pytest.fixture(scope="session")
def tiny_backend_address() -> Iterator[str]:
    """A backend running the real pipeline at the tiny preset (started once per session)."""
    with _env().backend_process(pipeline=None) as address:
        yield address


def _connect(address: str) -> str:
    bpy, MODULE = _env().bpy, _env().MODULE
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.backend_address = address
    prefs.timeout_s = 5.0
    _env().connect_when_up()
    assert bpy.context.window_manager.dreampolish.connection == "connected"
    return address


@pytest.fixture
def connected(addon, fresh_scene, backend_address) -> str:
    """The add-on connected to the scripted test backend (for tests that need timing they control)."""
    return _connect(backend_address)


@pytest.fixture
def connected_tiny(addon, fresh_scene, tiny_backend_address) -> str:
    """The add-on connected to the real pipeline at the tiny preset."""
    return _connect(tiny_backend_address)
