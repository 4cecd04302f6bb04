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
os.environ["BLENDER_USER_RESOURCES"] = str(USER_RESOURCES)

bpy = pytest.importorskip("bpy", reason="the add-on tests run inside Blender's bpy module (.venv-blender)")
# Blender's own modules: importable only once bpy is imported.
addon_utils = pytest.importorskip("addon_utils")
bmesh = pytest.importorskip("bmesh")
mathutils = pytest.importorskip("mathutils")

REPO_NAME = "dreampolish_test"
ADDON_ID = "dreampolish"
MODULE = f"bl_ext.{REPO_NAME}.{ADDON_ID}"
BACKEND_EXE = REPO_ROOT / ".venv" / "bin" / "dreampolish-backend"
TEST_PIPELINE = "tests.support.pipelines:ScriptedPipeline"
PID_DIR_ENV = "DREAMPOLISH_TEST_PID_DIR"
"""Folder where each backend a test starts leaves <pid>.pid while it runs (set by scripts/test-addon.sh)."""


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


def ensure_tiny_models() -> None:
    """Build the tiny preset's models (seconds, no network) unless the model cache has them."""
    subprocess.run([str(BACKEND_EXE), "--log-level", "WARNING", "models", "pull", "--tiny"],
                   cwd=REPO_ROOT, check=True, stdin=subprocess.DEVNULL)


def _record_pid(pid: int) -> Path | None:
    """Note a started backend's PID where scripts/test-addon.sh finds it: if Blender crashes, the
    script stops exactly the processes these tests started."""
    folder = os.environ.get(PID_DIR_ENV)
    if not folder:
        return None
    path = Path(folder) / f"{pid}.pid"
    path.write_text(str(pid))
    return path


@contextlib.contextmanager
def backend_process(*extra_args: str, pipeline: str | None = TEST_PIPELINE,
                    store: Path | None = None, address: str | None = None) -> Iterator[str]:
    """A real backend process on a free loopback port; yields its address.

    pipeline=None runs the real pipeline at the tiny preset (its announced default); otherwise the
    named test pipeline. `store` and `address` let a restarted backend take over the same jobs."""
    if not (REPO_ROOT / ".venv").exists():
        pytest.skip("the backend environment .venv is absent: run `make venv`")
    from tests.support.ports import free_tcp_port

    address = address or f"tcp://127.0.0.1:{free_tcp_port()}"
    own_store = store is None
    store = Path(tempfile.mkdtemp(prefix="dreampolish-store-")) if store is None else store
    store.mkdir(parents=True, exist_ok=True)
    # The repository first (tests.support), then any import root the caller set (a checkout whose package is
    # not the installed one): the backend runs the same code as the tests that started it.
    backend_env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p))
    backend_env.pop("BLENDER_USER_RESOURCES", None)
    if pipeline is None:
        ensure_tiny_models()
        args = ["--preset", "tiny", "--device", "cpu", *extra_args]
    else:
        args = ["--pipeline", pipeline, *extra_args]
    with open(store / "backend.log", "ab") as log:
        proc = subprocess.Popen(
            [str(BACKEND_EXE), "serve", "--bind", address, "--store", str(store), *args],
            cwd=REPO_ROOT, env=backend_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    pid_file = _record_pid(proc.pid)
    try:
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)
        if own_store:
            shutil.rmtree(store, ignore_errors=True)


def connect_and_wait(timeout_s: float = 30.0) -> str:
    """Press Connect (it returns at once) and pump until the handshake's outcome is applied;
    returns the connection state, "connected" or "error"."""
    addon = sys.modules[MODULE]
    assert bpy.ops.dreampolish.connect() == {"FINISHED"}
    rt = bpy.context.window_manager.dreampolish
    pump(addon, lambda: rt.connection in ("connected", "error"), timeout_s=timeout_s, what="the handshake")
    return rt.connection


def connect_when_up(timeout_s: float = 180.0) -> None:
    """Press Connect until the backend process has started (its start-up takes a few seconds; importing
    torch and the models' libraries took 80 s on a 2-core machine shared by several test runs)."""
    deadline = time.monotonic() + timeout_s
    while connect_and_wait() != "connected":
        if time.monotonic() > deadline:
            raise AssertionError(f"no connection within {timeout_s} s: "
                                 f"{bpy.context.window_manager.dreampolish.message}")
        time.sleep(0.5)


def render_cycles_linear(path: Path, sun, cam, resolution: int, samples: int):
    """Render the scene with Cycles on the CPU from `cam`, lit by `sun` only (black world), to an EXR at
    `path`: linear RGBA pixels [resolution, resolution, 4], top row first (no view transform)."""
    import numpy as np

    scene = bpy.context.scene
    for obj in (sun, cam):
        scene.collection.objects.link(obj)
    scene.camera = cam
    world = bpy.data.worlds.new("Black")
    world.color = (0.0, 0.0, 0.0)
    scene.world = world
    scene.render.engine = "CYCLES"
    scene.cycles.device, scene.cycles.samples, scene.cycles.use_denoising = "CPU", samples, False
    scene.render.resolution_x = scene.render.resolution_y = resolution
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "OPEN_EXR"
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    img = bpy.data.images.load(str(path), check_existing=False)
    px = np.array(img.pixels[:], np.float32).reshape(resolution, resolution, 4)[::-1]
    bpy.data.images.remove(img)
    return px
