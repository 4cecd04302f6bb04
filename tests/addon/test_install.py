"""The built zip installs as an extension, registers its UI, and disables without leftovers."""

from __future__ import annotations

import time
import zipfile

from tests.support.blender_env import ADDON_ID, MODULE, addon_utils, bpy, built_zip

OPERATORS = (
    "connect", "disconnect", "generate", "refine_selected", "cancel", "resume", "import_result",
    "bake_to_material", "randomize_seed", "reimport", "refresh_history", "backend_start", "backend_stop",
)
PANELS = ("DREAMPOLISH_PT_main", "DREAMPOLISH_PT_prompt", "DREAMPOLISH_PT_stages", "DREAMPOLISH_PT_refine",
          "DREAMPOLISH_PT_job", "DREAMPOLISH_PT_history")


def test_zip_bundles_vendored_protocol_and_wheels_for_both_pythons():
    with zipfile.ZipFile(built_zip()) as z:
        names = z.namelist()
        manifest = z.read("blender_manifest.toml").decode()
    assert "protocol/client.py" in names and "protocol/scene.py" in names
    assert "protocol/cli.py" not in names
    assert not any(n.startswith("requirements-test") for n in names)
    wheels = [n for n in names if n.startswith("wheels/")]
    for package in ("pyzmq", "msgpack"):
        tags = {w.split("-")[2] for w in wheels if w.startswith(f"wheels/{package}-")}
        assert "cp311" in tags, (package, tags)
        assert {"cp313", "cp312"} & tags, (package, tags)  # pyzmq ships abi3 (cp312) wheels for 3.13
    assert f'id = "{ADDON_ID}"' in manifest
    assert 'blender_version_min = "5.0.0"' in manifest  # the oldest Blender the suite runs on
    assert "network =" in manifest


def test_installed_extension_registers_panel_operators_and_preferences(addon):
    assert addon.__name__ == MODULE
    assert addon_utils.check(MODULE)[1], "the extension is not enabled"
    for op in OPERATORS:
        assert hasattr(bpy.ops.dreampolish, op), op
        assert getattr(bpy.ops.dreampolish, op).get_rna_type() is not None
    for panel in PANELS:
        cls = getattr(bpy.types, panel)
        assert cls.bl_category == "DreamPolish" and cls.bl_space_type == "VIEW_3D"
    prefs = bpy.context.preferences.addons[MODULE].preferences
    assert prefs.backend_address.startswith("tcp://127.0.0.1:")
    assert prefs.bl_rna.properties["server_key"].subtype == "PASSWORD"
    # The artist's choices live in one group on the scene, runtime state on the window manager.
    assert isinstance(bpy.context.scene.dreampolish.prompt, str)
    assert bpy.context.window_manager.dreampolish.bl_rna.identifier == "DreamPolishRuntime"
    # The vendored protocol is the extension's own subpackage.
    assert addon.bridge.BackendClient.__module__ == f"{MODULE}.protocol.client"


def test_cache_lives_in_the_extension_user_directory_not_the_addon_folder(addon):
    cache = addon.preferences.user_dir("jobs")
    addon_dir = addon.__file__.rsplit("/", 1)[0]
    assert cache.is_dir()
    assert not str(cache).startswith(addon_dir)


def test_disable_closes_the_connection_and_timer_and_enable_again(addon, fresh_scene):
    bridge = addon.bridge
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.timeout_s = 30.0  # keep the handshake waiting while we disable
    prefs.backend_address = "tcp://127.0.0.1:9"  # nothing listens: the handshake keeps waiting
    bridge.connect(addon.connection.settings(bpy.context), wait=False)
    bridge.drain()
    assert bridge.is_connecting(), "the handshake did not start"
    assert bpy.app.timers.is_registered(bridge._timer)

    started = time.monotonic()
    addon_utils.disable(MODULE, default_set=True)
    try:
        # Far below the handshake's 30 s timeout, with room for a loaded machine.
        assert time.monotonic() - started < 10.0, "disabling waited for the handshake's timeout"
        assert not bridge.is_connecting() and not bridge.is_connected(), "a connection outlived the add-on"
        assert not bpy.app.timers.is_registered(bridge._timer)
        assert bridge._on_load_pre not in bpy.app.handlers.load_pre
        assert addon.history._on_load_post not in bpy.app.handlers.load_post
        assert not bpy.app.timers.is_registered(addon.history._refresh_once)
        assert not hasattr(bpy.types, "DREAMPOLISH_PT_main")
        assert not hasattr(bpy.types.Scene, "dreampolish")
    finally:
        addon_utils.enable(MODULE, default_set=True)
    assert hasattr(bpy.types, "DREAMPOLISH_PT_main")
    assert bpy.context.window_manager.dreampolish.connection == "disconnected"


def test_closing_the_file_closes_the_connection(addon, fresh_scene):
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.timeout_s = 30.0
    prefs.backend_address = "tcp://127.0.0.1:9"
    addon.bridge.connect(addon.connection.settings(bpy.context), wait=False)
    assert addon.bridge.is_connecting()
    bpy.ops.wm.read_homefile(use_empty=True)
    assert not addon.bridge.is_connecting()
