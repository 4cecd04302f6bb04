"""Options that cannot fit the device are refused at submit, naming the stage and its settings; a job
that does run out of memory says so in words (stage and settings), without the allocator's text."""

from __future__ import annotations

import pytest
from dreampolish.backend import memory_check
from dreampolish.backend.jobs import classify_failure
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.backend.presets import get_preset
from dreampolish.protocol.client import BackendClient, JobFailedError, RequestRejected
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.job import JobSpec

from tests.support.pipelines import connected_client, running_backend

pytestmark = pytest.mark.timeout(120)

GB = 10**9
HUGE = {"nerf.batch_size": 64, "nerf.resolution.low": 2048, "nerf.render.n_samples": 1024}
"""The in-range maxima combined: about 2.7e8 rendered pixels a step."""


def test_a_stage_too_large_for_every_device_is_refused_naming_its_settings():
    stages = ["reference", "nerf", "neus", "dmtet"]
    with pytest.raises(ValidationError) as refused:
        memory_check.check_request_fits(get_preset("tiny", HUGE), {"cpu": 8 * GB}, stages)
    message = str(refused.value)
    assert "stage nerf at nerf.batch_size=64, nerf.resolution=2048, nerf.render.n_samples=1024" in message
    assert "needs at least 17." in message and "(cpu) has 8.0 GB" in message
    with pytest.raises(ValidationError, match=r"stage dmtet at dmtet.grid_resolution=512 needs at least 36\.\d GB"):
        memory_check.check_request_fits(get_preset("tiny", {"dmtet.grid_resolution": 512}), {"cpu": 8 * GB}, stages)
    # The largest device decides; the presets as they are fit; a stage the job does not run is not counted.
    memory_check.check_request_fits(get_preset("tiny", HUGE), {"cpu": 8 * GB, "cuda:0": 80 * GB}, stages)
    memory_check.check_request_fits(get_preset("standard"), {"cpu": 8 * GB}, stages)
    memory_check.check_request_fits(get_preset("tiny", {"dmtet.grid_resolution": 512}), {"cpu": 8 * GB},
                                    ["reference", "nerf"])


def test_the_backend_refuses_at_submit_what_its_device_cannot_hold(tmp_path, monkeypatch, tiny_model_cache):
    monkeypatch.setattr(memory_check, "device_memory", lambda device: 8 * GB)
    with running_backend(tmp_path, DreamPolishPipeline) as server, BackendClient(server.endpoint, timeout_s=30) as c:
        c.connect()
        with pytest.raises(RequestRejected) as refused:
            c.submit(JobSpec("a chair", preset="tiny", options={"dmtet.grid_resolution": 512}))
        assert refused.value.code == "invalid_message"
        assert "dmtet.grid_resolution=512" in refused.value.message and "8.0 GB" in refused.value.message
        assert c.list_jobs() == []  # nothing was queued


def test_out_of_memory_names_the_stage_and_settings_not_the_allocator():
    allocator = RuntimeError("[enforce fail at alloc_cpu.cpp:127] . DefaultCPUAllocator: can't allocate memory: "
                             "you tried to allocate 274877906944 bytes. Error code 12 (Cannot allocate memory)")
    code, message = classify_failure(allocator, " in stage nerf at nerf.batch_size=64")
    assert code == "out_of_memory"
    assert message.startswith("out of memory in stage nerf at nerf.batch_size=64. The computer ran out of memory")
    assert "alloc_cpu" not in message and "274877906944" not in message


def test_a_job_out_of_gpu_memory_says_in_which_stage(tmp_path):
    with running_backend(tmp_path) as server, connected_client(server.endpoint) as client:
        job = client.submit(JobSpec("a chair", options={"test.fail_stage": "neus", "test.fail_kind": "oom"}))
        with pytest.raises(JobFailedError) as failed:
            client.wait(job, timeout_s=30)
        assert failed.value.code == "out_of_memory"
        # The test pipeline fails before neus reports its first step: the last word it had was nerf's result.
        assert failed.value.message.startswith("out of memory in the stage after nerf at preset 'tiny'. The GPU ran out")
        assert "Tried to allocate" not in failed.value.message
