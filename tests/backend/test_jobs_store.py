"""The job store on disk: a torn write at the end of an event log is dropped, everything before it kept."""

from __future__ import annotations

import json

from dreampolish.backend.executor import LocalExecutor
from dreampolish.backend.jobs import JobManager, JobStore, classify_failure
from dreampolish.backend.pipeline_api import JobFailed
from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.job import JobSpec

from tests.support.pipelines import OutOfMemoryError, ScriptedPipeline


def manager_for(root, published):
    return JobManager(
        JobStore(root), LocalExecutor(["cpu"]), {"cpu": ScriptedPipeline()}, lambda *e: published.append(e)
    )


def test_torn_event_log_tail_is_dropped_and_the_job_reloads(tmp_path):
    published: list = []
    manager = manager_for(tmp_path, published)
    spec = JobSpec("a vase")
    job, _ = manager.submit(spec, codec.encode(m.Submit(spec=spec)))
    for step in range(1, 4):
        manager.emit(job, m.Progress(stage="nerf", step=step, total=3))
    assert [seq for _, seq, _ in published] == [1, 2, 3]
    with open(job.folder / "events.log", "ab") as f:
        f.write(b"DPEV\x00\x01")  # a write cut short by a crash
    [reloaded] = JobStore(tmp_path).load_all()
    assert reloaded.job_id == job.job_id and reloaded.last_seq == 3 and reloaded.spec.prompt == "a vase"
    events = [codec.decode(frames) for _, frames in JobStore(tmp_path).read_events(reloaded, reloaded.events)]
    assert [(e.TYPE, e.step) for e in events] == [("progress", 1), ("progress", 2), ("progress", 3)]
    assert (job.folder / "events.log").stat().st_size == reloaded.events[-1].offset + reloaded.events[
        -1
    ].length


def test_state_file_is_replaced_whole(tmp_path):
    manager = manager_for(tmp_path, [])
    spec = JobSpec("a lamp")
    job, _ = manager.submit(spec, codec.encode(m.Submit(spec=spec)))
    manager.cancel(job.job_id)
    state = json.loads((job.folder / "state.json").read_text())
    assert state["state"] == "cancelled"
    assert not list(job.folder.glob(".*.tmp"))


def test_failure_codes():
    assert classify_failure(JobFailed("model_missing", "no model"))[0] == "model_missing"
    code, message = classify_failure(OutOfMemoryError("CUDA out of memory"))
    assert code == "out_of_memory" and "smaller preset" in message
    assert classify_failure(ZeroDivisionError("division by zero")) == (
        "internal_error",
        "ZeroDivisionError: division by zero",
    )
