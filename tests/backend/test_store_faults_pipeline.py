"""kill -9 around a stage result of the real DreamPolish pipeline (tiny models), then a restart:
every stage result reaches the client once, and what it saw is what the store keeps.

"before" kills the backend after the stage's work and before its result is recorded: with the run
loop saving the checkpoint first, that is between checkpoint and result, and the restarted pipeline
must report the restored stage again. "after" kills it once the result is recorded: today's run
loop has not saved the checkpoint yet (the stage runs again and its second report is not sent),
the saving-first loop has (nothing runs again)."""

from __future__ import annotations

import os
import signal
import subprocess

import numpy as np
import pytest
from dreampolish.backend.models.specs import MODEL_DIR_ENV
from dreampolish.protocol import messages as m
from dreampolish.protocol.client import BackendClient, BackendUnreachable
from dreampolish.protocol.job import JobSpec

from tests.support.pipelines import free_tcp_endpoint, start_backend_process
from tests.support.store_fault_pipelines import CRASH_ENV

LONG_ENV = "DREAMPOLISH_LONG_FAULTS"
# Four backend starts (torch and the tiny models each time) and three real jobs: 7 minutes on the
# shared 2-core machine, past the suite's budget, so it runs on request: DREAMPOLISH_LONG_FAULTS=1.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not os.environ.get(LONG_ENV), reason=f"long fault test: set {LONG_ENV}=1 to run it"),
]
SPEC = JobSpec("a stone lantern", preset="tiny", seed=3)


def start(store, endpoint, cache, crash: str = "") -> subprocess.Popen:
    return start_backend_process(store, endpoint, pipeline="tests.support.store_fault_pipelines:CrashingDreamPolish",
                                 env={MODEL_DIR_ENV: str(cache), CRASH_ENV: crash}, timeout_s=60)


@pytest.mark.parametrize("point", ["before", "after"])
def test_kill_around_a_real_stage_result_sends_it_once(tmp_path, tiny_model_cache, point):  # noqa: F811
    endpoint = free_tcp_endpoint()
    proc = start(tmp_path, endpoint, tiny_model_cache, crash=f"neus:{point}")
    seen: dict[int, m.Message] = {}
    try:
        client = BackendClient(endpoint, timeout_s=20, heartbeat_s=0.2, dead_after_s=1.5)
        client.connect()
        job = client.submit(SPEC)
        with pytest.raises((BackendUnreachable, TimeoutError)):
            for event in client.events(job, timeout_s=120):
                seen[event.seq] = event
        assert proc.wait(timeout=20) == -signal.SIGKILL
        proc = start(tmp_path, endpoint, tiny_model_cache)
        client.reconnect()
        for event in client.events(job, timeout_s=120, until_pause=False):
            assert event.seq not in seen
            seen[event.seq] = event
        reference = client.submit(SPEC)  # the same job, never killed: which stages it reports
        expected = [r.stage for r in client.wait(reference, timeout_s=120)]
        fetched = client.fetch_result(job)
        client.close()
    finally:
        proc.kill()
        proc.wait()
    assert sorted(seen) == list(range(1, len(seen) + 1)) and isinstance(seen[len(seen)], m.Done)
    results = [e for _, e in sorted(seen.items()) if isinstance(e, m.StageResult)]
    assert [r.stage for r in results] == expected
    assert [r.seq for r in fetched.stage_results] == [r.seq for r in results]
    for mine, stored in zip(results, fetched.stage_results):
        np.testing.assert_array_equal(mine.mesh.vertices, stored.mesh.vertices)
