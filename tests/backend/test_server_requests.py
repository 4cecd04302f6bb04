"""Requests answered clearly: queue positions, attach past a job's end, memory failures by type, a
refused bind at once, and the checkpoints a resumed job can trust."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest
import torch
from dreampolish.backend.checkpoints import CheckpointStore
from dreampolish.backend.jobs import classify_failure
from dreampolish.protocol import messages as m
from dreampolish.protocol.client import RequestRejected
from dreampolish.protocol.job import JobSpec

from tests.support.pipelines import backend_command, connected_client, repo_env, running_backend

pytestmark = pytest.mark.timeout(120)


def test_queue_position_counts_the_running_job(tmp_path):
    with running_backend(tmp_path) as server, connected_client(server.endpoint) as client:
        first = client._request(m.Submit(spec=JobSpec("first", options={"test.steps": 100, "test.step_s": 0.02})))
        assert first.queue_position == 0
        for event in client.events(first.job_id, timeout_s=30):
            if isinstance(event, m.Progress):
                break
        second = client._request(m.Submit(spec=JobSpec("second")))
        third = client._request(m.Submit(spec=JobSpec("third")))
        assert (second.queue_position, third.queue_position) == (1, 2)
        client.cancel(first.job_id)


def test_attach_past_the_end_is_refused_and_at_the_end_of_a_finished_job_sends_nothing(tmp_path):
    with running_backend(tmp_path) as server, connected_client(server.endpoint) as client:
        job = client.submit(JobSpec("short"))
        client.wait(job, timeout_s=30)
        [info] = client.list_jobs()
        with pytest.raises(RequestRejected, match=f"last_seq {info.last_seq + 5} is past the end"):
            client.attach(job, info.last_seq + 5)
        client.attach(job, info.last_seq)
        assert client.poll(0.3) is None and server._subs.by_job == {}


def test_memory_failures_are_recognised_by_type():
    try:
        torch.empty(1 << 50, dtype=torch.uint8)  # a real CPU allocation failure
    except RuntimeError as exc:
        cpu = exc
    code, message = classify_failure(cpu)
    assert code == "out_of_memory" and "computer ran out of memory" in message
    assert classify_failure(torch.OutOfMemoryError("CUDA error"))[0] == "out_of_memory"
    assert classify_failure(MemoryError())[0] == "out_of_memory"

    class OutOfMemoryError(Exception):
        """Only named like torch's: not a memory failure."""

    assert classify_failure(OutOfMemoryError("disk quota"))[0] == "internal_error"


def test_a_public_bind_is_refused_before_the_pipeline_loads(tmp_path):
    # The default pipeline imports torch and the models: a refusal must not wait for them.
    cmd = backend_command(tmp_path, "--bind", "tcp://0.0.0.0:5998")
    cmd = cmd[: cmd.index("--pipeline")] + cmd[cmd.index("--pipeline") + 2 :]
    cmd = cmd[: cmd.index("--device")] + cmd[cmd.index("--device") + 2 :]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=repo_env(), capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 2 and "refusing to bind tcp://0.0.0.0:5998" in proc.stderr
    assert took < 3.0, f"the refusal took {took:.1f} s"


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


CHECKPOINT_DAMAGE = {
    "delete": lambda p: p.unlink(),
    "truncate": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "bitflip": _flip,
}


@pytest.mark.parametrize("damage", sorted(CHECKPOINT_DAMAGE))
def test_damaged_checkpoints_cost_that_stage_and_later_ones(tmp_path, damage):
    store = CheckpointStore(tmp_path)
    for i, stage in enumerate(["reference", "nerf", "neus"]):
        store.save(stage, {"x": torch.full((4,), float(i))})
    assert store.finished() == ["reference", "nerf", "neus"]
    CHECKPOINT_DAMAGE[damage](tmp_path / "checkpoints" / "nerf.pt")
    assert store.finished() == ["reference"]
    store.save("nerf", {"x": torch.ones(4)})  # the stage ran again
    assert store.finished() == ["reference", "nerf", "neus"]
    np.testing.assert_array_equal(store.load("nerf")["x"].numpy(), np.ones(4))
    CHECKPOINT_DAMAGE[damage](tmp_path / "checkpoints" / "manifest.json")
    assert store.finished() == [] and store.paused_after() is None
