"""Backend events applied to Blender without a backend: dispatched by message class (job_events.HANDLERS),
a stage result stored once and imported from memory (scene_operators' docstring says why both)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from tests.support.blender_env import bpy

JOB = "20261201-000000-events"
OTHER = "20261201-000000-others"


@pytest.fixture
def messages(addon):
    return importlib.import_module(f"{addon.__name__}.protocol.messages")


def _pyramid(addon):
    v = np.array([[0, 0, 1], [1, 1, 0], [-1, 1, 0], [-1, -1, 0], [1, -1, 0]], np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1], [1, 3, 2], [1, 4, 3]], np.uint32)
    return addon.protocol.scene.MeshPayload(vertices=v, faces=f)


def _follow(addon, job_id: str) -> None:
    addon.job_follow.job_cache().save_record(addon.job_cache.JobRecord(job_id=job_id, prompt="a pyramid"))
    addon.job_follow.follow(addon.reporting.runtime(), job_id, "running")


def test_every_event_class_has_one_handler(addon, messages):
    events = {cls for cls in vars(messages).values()
              if isinstance(cls, type) and issubclass(cls, messages.Message) and cls.IS_EVENT}
    assert events <= set(addon.job_events.HANDLERS), events - set(addon.job_events.HANDLERS)


def test_a_stage_result_is_stored_once_and_imported_without_reading_the_cache_back(addon, fresh_scene, messages,
                                                                                   monkeypatch):
    _follow(addon, JOB)
    cache_class = addon.job_cache.JobCache

    def no_read_back(*_args, **_kwargs):
        raise AssertionError("the import read back the stage it was handed")

    monkeypatch.setattr(cache_class, "load_stage", no_read_back)
    addon.job_events.on_message(messages.StageResult(job_id=JOB, seq=3, stage="nerf", index=1, mesh=_pyramid(addon)))
    monkeypatch.undo()
    (obj,) = [o for o in bpy.context.scene.objects if o.get("dreampolish_job") == JOB]
    assert obj["dreampolish_stage"] == "nerf" and len(obj.data.polygons) == 6
    record = addon.job_follow.job_cache().load_record(JOB)
    assert (record.stages, record.status, record.last_seq) == (["nerf"], "running", 3)
    assert addon.reporting.runtime().stage == "nerf"
    stored = addon.job_follow.job_cache().load_stage(JOB, "nerf")
    np.testing.assert_array_equal(stored.mesh.vertices, _pyramid(addon).vertices)


def test_an_event_of_a_job_in_the_list_but_not_shown_updates_only_its_item(addon, fresh_scene, messages):
    _follow(addon, OTHER)
    _follow(addon, JOB)  # shown in full; OTHER stays in the list
    rt = addon.reporting.runtime()
    addon.job_events.on_message(messages.Paused(job_id=OTHER, seq=2, stage="neus"))
    other = addon.job_follow.job_item(rt, OTHER)
    assert (other.state, other.paused_stage) == ("paused", "neus")
    assert (rt.job_id, rt.job_state, rt.paused_stage) == (JOB, "running", "")
    addon.job_events.on_message(messages.Done(job_id=OTHER, seq=3))
    assert other.state == "done" and rt.job_state == "running"
    assert addon.job_follow.job_cache().load_record(OTHER).status == "done"


def test_an_event_of_a_job_not_followed_changes_nothing(addon, fresh_scene, messages):
    _follow(addon, JOB)
    rt = addon.reporting.runtime()
    addon.job_events.on_message(messages.Failed(job_id="20261201-000000-strange", seq=1, code="x", message="y"))
    assert (rt.job_id, rt.job_state, rt.message) == (JOB, "running", "")
