"""The preset dropdown offers what the backend announced and, untouched, sends the backend's default."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest

from tests.support.blender_env import MODULE, backend_process, bpy, connect_when_up, pump


@pytest.fixture(scope="module")
def fast_default_backend() -> Iterator[str]:
    """The scripted backend (presets tiny, fast) started with `serve --preset fast`: its default is
    not its first preset."""
    with backend_process("--preset", "fast") as address:
        yield address


def _rt():
    return bpy.context.window_manager.dreampolish


def _preset_names(addon) -> list[str]:
    return [item[0] for item in addon.properties._preset_items(bpy.context.scene.dreampolish, bpy.context)]


def test_an_untouched_dropdown_sends_the_backends_default(addon, fresh_scene, fast_default_backend):
    assert "auto" not in _preset_names(addon), "no backend accepts 'auto'"
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.backend_address = fast_default_backend
    connect_when_up()
    welcome = addon.bridge.current_welcome()
    assert welcome.default_preset == "fast"
    names = _preset_names(addon)
    assert set(names) - {addon.properties.BACKEND_DEFAULT} == {"tiny", "fast"}
    s = bpy.context.scene.dreampolish
    s.prompt = "a teapot"
    assert bpy.ops.dreampolish.generate() == {"FINISHED"}
    pump(addon, lambda: _rt().job_state not in ("", "submitting"), what="the job to be accepted")
    assert addon.job_follow.job_cache().load_record(_rt().job_id).preset == "fast"
    pump(addon, lambda: _rt().job_state == "done", what="the job to finish")


def test_a_chosen_preset_is_kept_by_name(addon, fresh_scene, fast_default_backend):
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.backend_address = fast_default_backend
    connect_when_up()
    s = bpy.context.scene.dreampolish
    s.preset = "tiny"
    assert (s.preset_name, s.preset) == ("tiny", "tiny")
    assert addon.job_request.preset_for(addon.bridge.current_welcome()) == "tiny"
    # A preset this backend does not offer shows, and is sent, as the backend's default.
    s.preset_name = "high"
    assert s.preset == addon.properties.BACKEND_DEFAULT
    assert addon.job_request.preset_for(addon.bridge.current_welcome()) == "fast"
    s.preset = addon.properties.BACKEND_DEFAULT
    assert s.preset_name == "" and addon.job_request.preset_for(addon.bridge.current_welcome()) == "fast"


def test_the_dropdown_shows_each_preset_s_memory_before_generate(addon, fresh_scene, monkeypatch):
    # welcome.preset_memory_gb (protocol 1.2): what each preset needs of the backend's card, from the
    # backend's dry-run figures, in the dropdown's labels and tooltips; a preset without a figure shows
    # its name alone.
    messages = importlib.import_module(f"{MODULE}.protocol.messages")
    welcome = messages.Welcome(presets=["draft", "standard", "tiny"], default_preset="standard",
                               preset_memory_gb={"draft": 11.4, "standard": 15.6})
    monkeypatch.setattr(addon.bridge, "current_welcome", lambda: welcome)
    items = {item[0]: item[1:3] for item in addon.properties._preset_items(bpy.context.scene.dreampolish,
                                                                           bpy.context)}
    assert items["draft"] == ("draft · 11.4 GB", "Backend preset 'draft': needs about 11.4 GB of the backend's "
                                                 "GPU memory")
    assert items["tiny"] == ("tiny", "Backend preset 'tiny'")
    assert items[addon.properties.BACKEND_DEFAULT][0] == "Backend Default (standard · 15.6 GB)"
