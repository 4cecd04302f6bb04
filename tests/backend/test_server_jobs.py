"""The job system through a real server on loopback: events, attach after a lost client, restart,
cancel, failures, pause and resume."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from dreampolish.protocol import messages as m
from dreampolish.protocol.client import (
    BackendClient,
    BackendUnreachable,
    JobFailedError,
    RequestRejected,
    UnknownJobError,
)
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import MeshPayload

from tests.support.pipelines import (
    MODE_STAGES,
    connected_client,
    free_tcp_endpoint,
    repo_env,
    running_backend,
    start_backend_process,
)

pytestmark = pytest.mark.timeout(120)


def test_job_streams_every_stage_and_fetch_returns_them(tmp_path):
    with running_backend(tmp_path) as server, connected_client(server.endpoint) as client:
        assert client.welcome.presets == ["tiny", "fast"] and client.welcome.devices == ["cpu"]
        job = client.submit(JobSpec("a teapot", options={"test.preview": True}))
        events = list(client.events(job, timeout_s=30))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert isinstance(events[-1], m.Done)
        previews = [e.preview_png for e in events if isinstance(e, m.Progress)]
        assert previews and all(p.startswith(b"\x89PNG") for p in previews)
        streamed = [e for e in events if isinstance(e, m.StageResult)]
        assert [s.stage for s in streamed] == list(MODE_STAGES["generate"])
        fetched = client.fetch_result(job)
        assert fetched.state == "done"
        assert [s.stage for s in fetched.stage_results] == [s.stage for s in streamed]
        np.testing.assert_array_equal(fetched.stage_results[-1].mesh.vertices, streamed[-1].mesh.vertices)
        assert fetched.stage_results[-1].mesh.texture("base_color") is not None
        [info] = client.list_jobs()
        assert (
            info.job_id == job and info.state == "done" and info.stages_done == list(MODE_STAGES["generate"])
        )
        assert server._subs.by_job == {}  # a finished job has no followers left to serve


def test_rejected_spec_is_an_error_reply_and_nothing_is_queued(tmp_path):
    with running_backend(tmp_path) as server, connected_client(server.endpoint) as client:
        with pytest.raises(RequestRejected, match="preset 'huge'"):
            client.submit(JobSpec("a teapot", preset="huge"))
        with pytest.raises(UnknownJobError):
            client.attach("no-such-job")
        assert client.list_jobs() == []


CLIENT_SCRIPT = textwrap.dedent(
    """
    import sys
    from dreampolish.protocol.client import BackendClient
    from dreampolish.protocol.job import JobSpec
    client = BackendClient(sys.argv[1])
    client.connect()
    job = client.submit(JobSpec("a lost client", options={"test.steps": 4, "test.step_s": 0.05}))
    print("job", job, flush=True)
    for event in client.events(job):
        print("seq", event.seq, event.TYPE, flush=True)
    """
)


def test_killed_client_then_attach_gets_every_later_event_exactly_once(tmp_path):
    with running_backend(tmp_path) as server:
        proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT_SCRIPT, server.endpoint],
            stdout=subprocess.PIPE,
            text=True,
            env=repo_env(),
        )
        job, last_seq = "", 0
        for line in proc.stdout:
            word, value, *_ = line.split()
            if word == "job":
                job = value
            elif int(value) >= 6:
                last_seq = int(value)
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert job and last_seq >= 6
        with connected_client(server.endpoint) as client:
            client.attach(job, last_seq)
            events = list(client.events(job, timeout_s=30))
        seqs = [e.seq for e in events]
        assert seqs == list(range(last_seq + 1, last_seq + 1 + len(seqs)))
        assert isinstance(events[-1], m.Done)
        # Together with what the killed client saw, the stages are all there, once each.
        full = server.manager.stage_results(job)[1]
        assert [s.seq for s in full if s.seq > last_seq] == [
            e.seq for e in events if isinstance(e, m.StageResult)
        ]
        assert [s.stage for s in full] == list(MODE_STAGES["generate"])


def start_backend(store, endpoint) -> subprocess.Popen:
    return start_backend_process(store, endpoint)


def stop_backend(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_restarted_backend_serves_finished_results_and_resumes_interrupted_jobs(tmp_path):
    endpoint = free_tcp_endpoint()
    proc = start_backend(tmp_path, endpoint)
    try:
        with connected_client(endpoint) as client:
            finished = client.submit(JobSpec("finished before the restart"))
            client.wait(finished, timeout_s=30)
            slow = client.submit(JobSpec("interrupted", options={"test.steps": 10, "test.step_s": 0.05}))
            for event in client.events(slow, timeout_s=30):
                if isinstance(event, m.StageResult) and event.stage == "neus":
                    break
        stop_backend(proc)
        proc = start_backend(tmp_path, endpoint)
        with connected_client(endpoint) as client:
            result = client.fetch_result(finished)
            assert result.state == "done"
            assert [s.stage for s in result.stage_results] == list(MODE_STAGES["generate"])
            client.attach(slow, 0)
            events = list(client.events(slow, timeout_s=60, until_pause=False))
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert any(isinstance(e, m.Resumed) for e in events) and isinstance(events[-1], m.Done)
            stages = [e.stage for e in events if isinstance(e, m.StageResult)]
            # The pipeline continued from its checkpoint: no stage ran twice.
            assert stages == list(MODE_STAGES["generate"])
    finally:
        stop_backend(proc)


def test_cancel_stops_within_one_step_and_the_next_job_runs(tmp_path):
    step_s = 0.3
    with running_backend(tmp_path) as server, connected_client(server.endpoint) as client:
        slow = client.submit(JobSpec("slow", options={"test.steps": 1000, "test.step_s": step_s}))
        quick = client.submit(JobSpec("quick"))
        for event in client.events(slow, timeout_s=30):
            if isinstance(event, m.Progress):
                break
        t0 = time.monotonic()
        client.cancel(slow)
        events = list(client.events(slow, timeout_s=30))
        latency = time.monotonic() - t0
        assert isinstance(events[-1], m.Cancelled)
        assert latency < step_s + 1.0, f"cancel took {latency:.2f} s with {step_s} s steps"
        assert sum(isinstance(e, m.Progress) for e in events) <= 1
        assert len(client.wait(quick, timeout_s=30)) == len(MODE_STAGES["generate"])
        states = {j.job_id: j.state for j in client.list_jobs()}
        assert states == {slow: "cancelled", quick: "done"}
        with pytest.raises(RequestRejected, match="already cancelled"):
            client.cancel(slow)


@pytest.mark.parametrize(
    "kind, code, text",
    [
        ("oom", "out_of_memory", "smaller preset"),
        ("error", "internal_error", "scripted failure in neus"),
        ("job_failed", "model_missing", "not installed"),
    ],
)
def test_failing_pipeline_fails_only_that_job(tmp_path, kind, code, text):
    with running_backend(tmp_path) as server, connected_client(server.endpoint) as client:
        bad = client.submit(JobSpec("bad", options={"test.fail_stage": "neus", "test.fail_kind": kind}))
        good = client.submit(JobSpec("good"))
        with pytest.raises(JobFailedError) as info:
            client.wait(bad, timeout_s=30)
        assert info.value.code == code and text in info.value.message
        assert len(client.wait(good, timeout_s=30)) == len(MODE_STAGES["generate"])
        failed = next(j for j in client.list_jobs() if j.job_id == bad)
        assert failed.state == "failed" and text in failed.error


def test_pause_then_resume_with_an_edited_mesh(tmp_path):
    with running_backend(tmp_path) as server, connected_client(server.endpoint) as client:
        job = client.submit(JobSpec("gated", pause_after=["dmtet"]))
        events = list(client.events(job, timeout_s=30))
        assert isinstance(events[-1], m.Paused) and events[-1].stage == "dmtet"
        assert next(j for j in client.list_jobs() if j.job_id == job).state == "paused"
        edited = MeshPayload(
            vertices=np.random.default_rng(0).random((10, 3), dtype=np.float32),
            faces=np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8], [7, 8, 9]], np.uint32),
        )
        # A degenerate edit (every vertex at the origin) is refused as a submitted mesh would be, naming the
        # rule, and the job stays paused: it used to fail the job with "invalid multinomial distribution".
        collapsed = MeshPayload(vertices=np.zeros((10, 3), np.float32), faces=edited.faces)
        with pytest.raises(RequestRejected, match="resume.mesh has no extent"):
            client.resume(job, collapsed)
        assert next(j for j in client.list_jobs() if j.job_id == job).state == "paused"
        client.resume(job, edited)
        later = [e for e in client.events(job, timeout_s=30) if isinstance(e, m.StageResult)]
        assert [e.stage for e in later] == ["polish", "texture"]
        assert all(e.mesh.num_vertices == 10 and e.mesh.num_faces == 4 for e in later)
        with pytest.raises(RequestRejected, match="not paused"):
            client.resume(job)


def test_a_client_that_stops_reading_never_blocks_the_worker(tmp_path):
    import zmq
    from dreampolish.protocol import codec

    with running_backend(tmp_path, peer_send_hwm=5) as server:
        stalled = zmq.Context.instance().socket(zmq.DEALER)
        stalled.linger = 0
        stalled.rcvhwm = 5
        stalled.connect(server.endpoint)
        spec = JobSpec("flood", options={"test.steps": 200, "test.preview": True})
        stalled.send_multipart(codec.encode(m.Submit(spec=spec)))
        t0 = time.monotonic()
        total = 5 * 200 + 5 + 1  # progress, stage results, done
        while not any(j.state == "done" and j.last_seq == total for j in server.manager.list()):
            assert time.monotonic() - t0 < 60, "the job stalled behind a client that does not read"
            time.sleep(0.05)
        [job] = server.manager.list()
        # Nothing was lost: a client that reads gets every event from the store.
        with connected_client(server.endpoint) as client:
            client.attach(job.job_id, 0)
            events = list(client.events(job.job_id, timeout_s=30))
        assert [e.seq for e in events] == list(range(1, job.last_seq + 1))
        stalled.close()


def test_client_reconnects_after_a_backend_restart_and_misses_nothing(tmp_path):
    endpoint = free_tcp_endpoint()
    proc = start_backend(tmp_path, endpoint)
    client = BackendClient(endpoint, timeout_s=10, heartbeat_s=0.3, dead_after_s=1.5)
    try:
        client.connect()
        job = client.submit(JobSpec("across a restart", options={"test.steps": 10, "test.step_s": 0.05}))
        seen = []
        for event in client.events(job, timeout_s=30):
            seen.append(event.seq)
            if isinstance(event, m.StageResult):
                break
        stop_backend(proc)
        with pytest.raises(BackendUnreachable):
            client.ping()
        proc = start_backend(tmp_path, endpoint)
        client.reconnect()
        for event in client.events(job, timeout_s=60, until_pause=False):
            seen.append(event.seq)
        assert seen == list(range(1, len(seen) + 1))
        assert client.following == set()
    finally:
        client.close()
        stop_backend(proc)


def test_poll_without_waiting_reads_what_has_arrived(tmp_path):
    with running_backend(tmp_path) as server, connected_client(server.endpoint) as client:
        job = client.submit(JobSpec("burst"))
        assert client.wait(job, timeout_s=30)
        client.attach(job, 0)
        # poll(0.0) returns at once, with an event that has arrived or None. How soon the replay arrives
        # is the machine's business (a loaded one is slow): read until all of it is here.
        seqs, deadline = [], time.monotonic() + 30
        while len(seqs) < 21:
            started = time.monotonic()
            event = client.poll(0.0)
            assert time.monotonic() - started < 1.0, "poll(0.0) waited"
            if event is None:
                assert time.monotonic() < deadline, f"the replay stopped after {seqs}"
                time.sleep(0.01)
                continue
            seqs.append(event.seq)
        assert seqs == list(range(1, 22))
        assert client.poll(0.0) is None


def test_results_that_do_not_fit_one_message_arrive_in_parts_and_are_joined(tmp_path, monkeypatch):
    import dreampolish.backend.server as server_module
    from dreampolish.protocol.limits import LIMITS
    from dreampolish.protocol.scene import TexturePayload

    from tests.support.pipelines import octahedron, png_rgb

    full = octahedron()
    full.normals = full.vertices.copy()
    full.colors = np.ones((6, 4), np.float32)
    full.textures = [TexturePayload(role, png=png_rgb(2, 2, (1, 2, 3))) for role in ("base_color", "normal")]
    full.textures.append(TexturePayload("roughness_metallic", array=np.zeros((2, 2, 2), np.float32)))
    many = [m.StageResult(stage="polish", index=i, mesh=full) for i in range(10)]
    part = server_module.results_that_fit(many)
    assert 1 + 9 * len(part) <= LIMITS.max_frames < 1 + 9 * (len(part) + 1)

    monkeypatch.setattr(server_module, "results_that_fit", lambda results: list(results[:2]))
    with running_backend(tmp_path) as server, connected_client(server.endpoint) as client:
        job = client.submit(JobSpec("in parts"))
        streamed = client.wait(job, timeout_s=30)
        fetched = client.fetch_result(job)
        assert [r.seq for r in fetched.stage_results] == [r.seq for r in streamed] and fetched.more_from == 0


class BadStagePipeline:
    """Reports progress under a name no stage can have (stage names are lower-case identifiers)."""

    def presets(self) -> list[str]:
        return ["tiny"]

    def check(self, spec: JobSpec) -> None:
        pass

    def run(self, spec, ctx, resume=None):
        ctx.progress("Warp Drive!", 1, 1, {"loss": float("nan")})


def test_an_event_clients_could_not_decode_fails_the_job_instead_of_being_stored(tmp_path):
    with (
        running_backend(tmp_path, pipeline=BadStagePipeline) as server,
        connected_client(server.endpoint) as client,
    ):
        job = client.submit(JobSpec("bad stage"))
        with pytest.raises(JobFailedError, match="invalid progress.*Warp Drive!"):
            client.wait(job, timeout_s=30)
