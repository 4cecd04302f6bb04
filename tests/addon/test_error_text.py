"""What the panel says when something goes wrong: words an artist can act on (issue 33 item 9)."""

from __future__ import annotations

import bpy
import pytest

from tests.support.blender_env import MODULE, connect_and_wait, pump

RAW = ("Invalid argument", "Protocol not supported", "ZMQError", "enforce fail", "alloc_cpu", "DefaultCPUAllocator",
       "no answer")
"""ZeroMQ's and torch's own words, and the unreachable backend's, none of which says what to fix."""


def _rt():
    return bpy.context.window_manager.dreampolish


def _prefs():
    return bpy.context.preferences.addons[MODULE].preferences


@pytest.mark.parametrize(("address", "says"), [
    ("localhost:5555", "must start with tcp://"),
    ("http://127.0.0.1:5555", "must start with tcp://"),
    ("tcp://127.0.0.1", "must read tcp://host:port"),
    ("tcp://127.0.0.1:99999", "the port must be a whole number from 1 to 65535, not '99999'"),
    ("tcp://127.0.0.1:55a", "the port must be a whole number from 1 to 65535"),
    ("tcp://*:5555", "'*' is for a backend to listen on"),
    ("   ", "Backend Address is empty"),
])
def test_a_malformed_backend_address_is_named_with_its_rule(addon, fresh_scene, address, says):
    _prefs().backend_address, _prefs().timeout_s = address, 1.0
    assert connect_and_wait() == "error"
    assert "Backend Address" in _rt().message and says in _rt().message, _rt().message
    assert not any(raw in _rt().message for raw in RAW), _rt().message


def test_an_address_with_spaces_around_it_connects(addon, fresh_scene, backend_address):
    _prefs().backend_address, _prefs().timeout_s = f"  {backend_address} \t", 5.0
    assert connect_and_wait() == "connected", _rt().message


def test_running_out_of_memory_is_said_without_the_allocators_message(addon, connected):
    s = bpy.context.scene.dreampolish
    s.prompt, s.overrides = "a teapot", "test.fail_stage=nerf, test.fail_kind=cpu_oom"
    assert bpy.ops.dreampolish.generate() == {"FINISHED"}
    pump(addon, lambda: _rt().job_state == "failed", what="the job to fail")
    assert "The computer ran out of memory" in _rt().message, _rt().message
    assert "smaller preset" in _rt().message
    assert not any(raw in _rt().message for raw in RAW), _rt().message


def test_a_lost_submit_is_not_said_any_more_once_connect_succeeds(addon, fresh_scene, backend_address):
    _prefs().backend_address, _prefs().timeout_s = "tcp://127.0.0.1:9", 1.0  # nothing listens there
    bpy.context.scene.dreampolish.prompt = "a teapot"
    assert bpy.ops.dreampolish.generate() == {"FINISHED"}
    pump(addon, lambda: _rt().connection == "error", what="the handshake to fail")
    assert _rt().failure == "Submit was not sent: the connection was lost", _rt().failure
    _prefs().backend_address = backend_address
    assert connect_and_wait() == "connected"
    assert _rt().failure == "", _rt().failure


def test_an_operators_error_is_shown_in_the_panel_as_well(addon, connected):
    s = bpy.context.scene.dreampolish
    s.prompt, s.overrides = "a teapot", "nerf.steps"
    with pytest.raises(RuntimeError, match="must read stage.field=value"):  # the status bar's report
        bpy.ops.dreampolish.generate()
    assert "must read stage.field=value" in _rt().failure, _rt().failure


def test_an_older_backends_allocator_message_is_put_in_words(addon):
    # What a backend from before this change sent for torch's CPU allocator failure, word for word.
    sent = ("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: not enough memory: you tried to allocate "
            "18446744073 bytes. The computer ran out of memory. Try a smaller preset or fewer or smaller cameras, or "
            "close other programs, then submit again.")
    text = addon.reporting.failure_text("out_of_memory", sent)
    assert text.startswith("The computer ran out of memory (a step asked for 18.4 GB more). Try a smaller preset")
    assert not any(raw in text for raw in RAW), text
