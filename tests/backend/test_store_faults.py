"""Fault injection against the job store: kill -9 at stage boundaries, damaged files with the backend
running and across a restart, a full disk. For each: the backend keeps serving every other job, no
acknowledged event or stage result is lost or sent twice, and a damaged job says what was lost in
one line."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from dreampolish.backend.executor import LocalExecutor
from dreampolish.backend.job_store import JobStore
from dreampolish.backend.jobs import JobManager, StoreJobContext
from dreampolish.backend.server import BackendServer, ServerConfig
from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.client import BackendClient, BackendUnreachable, JobFailedError, RequestRejected
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.payloads import JobInfo

from tests.support.pipelines import (
    MODE_STAGES,
    ScriptedPipeline,
    backend_command,
    connected_client,
    free_tcp_endpoint,
    octahedron,
    repo_env,
    running_backend,
    start_backend_process,
    wait_until_serving,
)

pytestmark = pytest.mark.timeout(120)
STAGES = list(MODE_STAGES["generate"])


def backend(store: Path, endpoint: str, pipeline: str) -> subprocess.Popen:
    return start_backend_process(store, endpoint, pipeline=pipeline)


# --- kill -9 at a stage boundary -----------------------------------------------------------------


@pytest.mark.parametrize(
    "pipeline, point",
    [
        ("ContractPipeline", "between"),  # checkpoint saved, result not yet reported
        ("ContractPipeline", "after"),  # both
        ("OldOrderPipeline", "between"),  # today's order: result reported, checkpoint not saved
    ],
)
def test_kill_at_a_stage_boundary_sends_every_stage_once(tmp_path, pipeline, point):
    endpoint = free_tcp_endpoint()
    target = f"tests.support.store_fault_pipelines:{pipeline}"
    proc = backend(tmp_path, endpoint, target)
    seen: dict[int, m.Message] = {}
    try:
        client = BackendClient(endpoint, timeout_s=10, heartbeat_s=0.2, dead_after_s=1.0)
        client.connect()
        job = client.submit(JobSpec("killed at neus", options={"test.crash": f"neus:{point}"}))
        with pytest.raises((BackendUnreachable, TimeoutError)):
            for event in client.events(job, timeout_s=20):
                seen[event.seq] = event
        assert proc.wait(timeout=10) == -signal.SIGKILL
        proc = backend(tmp_path, endpoint, target)
        client.reconnect()
        for event in client.events(job, timeout_s=30, until_pause=False):
            assert event.seq not in seen
            seen[event.seq] = event
        client.close()
        with connected_client(endpoint, heartbeat_s=0.3) as again:
            fetched = again.fetch_result(job)
    finally:
        proc.kill()
        proc.wait()
    assert sorted(seen) == list(range(1, len(seen) + 1)) and isinstance(seen[len(seen)], m.Done)
    results = [e for _, e in sorted(seen.items()) if isinstance(e, m.StageResult)]
    assert [r.stage for r in results] == STAGES  # once each, in order
    # What the client saw is what the store keeps: the same mesh for every stage, by seq.
    assert [r.seq for r in fetched.stage_results] == [r.seq for r in results]
    for mine, stored in zip(results, fetched.stage_results):
        np.testing.assert_array_equal(mine.mesh.vertices, stored.mesh.vertices)


def test_stage_result_is_recorded_once_per_stage(tmp_path):
    manager = JobManager(
        JobStore(tmp_path), LocalExecutor(["cpu"]), {"cpu": ScriptedPipeline()}, lambda *e: None
    )
    spec = JobSpec("twice")
    job, _ = manager.submit(spec, codec.encode(m.Submit(spec=spec)))
    ctx = StoreJobContext(manager, job, "cpu")
    ctx.stage_result("nerf", 0, octahedron())
    ctx.stage_result("nerf", 0, octahedron(2.0))  # reported again (restored from a checkpoint)
    ctx.stage_result("neus", 1, octahedron(3.0))
    assert [(e.seq, e.type) for e in job.events] == [(1, "stage_result"), (2, "stage_result")]
    assert sorted(p.name for p in (job.folder / "results").iterdir()) == ["00-nerf.msg", "01-neus.msg"]
    _, results = manager.stage_results(job.job_id)
    np.testing.assert_array_equal(results[0].mesh.vertices, octahedron().vertices)


def test_a_result_file_without_its_event_is_completed_once_on_load(tmp_path):
    published: list = []
    manager = JobManager(
        JobStore(tmp_path),
        LocalExecutor(["cpu"]),
        {"cpu": ScriptedPipeline()},
        lambda *e: published.append(e),
    )
    spec = JobSpec("cut between file and event")
    job, _ = manager.submit(spec, codec.encode(m.Submit(spec=spec)))
    ctx = StoreJobContext(manager, job, "cpu")
    ctx.progress("nerf", 1, 1)
    ctx.stage_result("nerf", 0, octahedron())
    log = job.folder / "events.log"
    log.write_bytes(log.read_bytes()[: job.events[1].offset - 16])  # the event never reached the log
    [reloaded] = JobStore(tmp_path).load_all()
    assert [(e.seq, e.type) for e in reloaded.events] == [(1, "progress"), (2, "stage_result")]
    assert reloaded.stages_done == ["nerf"] and reloaded.results == {("nerf", 0): 2}


# --- damaged files, across a restart ----------------------------------------------------------------


def _flip(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x40
    path.write_bytes(bytes(data))


def _truncate(path: Path, where: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * where)])


DAMAGE = {"delete": lambda p: p.unlink(), "truncate": _truncate, "bitflip": _flip}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A store with a finished job, a paused job with a pending edited mesh, and a finished neighbour."""
    root = tmp_path_factory.mktemp("pristine")
    with running_backend(root) as server, connected_client(server.endpoint, heartbeat_s=0.3) as client:
        done = client.submit(JobSpec("finished", options={"test.steps": 4}))
        client.wait(done, timeout_s=30)
        paused = client.submit(JobSpec("gated", pause_after=["neus"], options={"test.steps": 2}))
        list(client.events(paused, timeout_s=30))
        neighbour = client.submit(JobSpec("neighbour"))
        client.wait(neighbour, timeout_s=30)
        infos = {j.job_id: j for j in client.list_jobs()}
    return root, done, paused, neighbour, infos


def _restart_and_check(store: Path, job: str, neighbour: str, infos: dict) -> JobInfo:
    with running_backend(store) as server, connected_client(server.endpoint, heartbeat_s=0.3) as client:
        listed = {j.job_id: j for j in client.list_jobs()}
        assert listed[neighbour].error == "" and listed[neighbour].last_seq == infos[neighbour].last_seq
        info = listed[job]
        # Sequence numbers never go back.
        assert info.last_seq >= infos[job].last_seq
        client.attach(job, 0)
        events = list(client.events(job, timeout_s=30))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert isinstance(events[-1], m.Done)
        results = [e.stage for e in events if isinstance(e, m.StageResult)]
        assert len(results) == len(set(results))
        # A client that had seen everything before the damage gets nothing again, and is told so at once.
        client.attach(job, infos[job].last_seq)
        assert client.poll(0.3) is None
        with pytest.raises(RequestRejected, match="past the end"):
            client.attach(job, info.last_seq + 1)
        neighbour_results = client.fetch_result(neighbour)
        assert [r.stage for r in neighbour_results.stage_results] == STAGES
    assert "\n" not in info.error
    return info


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("name", ["events.log", "state.json", "spec.msg", "results/02-dmtet.msg"])
def test_damaged_file_of_a_finished_job_costs_only_that_record(tmp_path, pristine, name, damage):
    root, done, _, neighbour, infos = pristine
    store = tmp_path / "store"
    shutil.copytree(root, store)
    DAMAGE[damage](store / done / name)
    info = _restart_and_check(store, done, neighbour, infos)
    assert info.state == "done"
    if name == "results/02-dmtet.msg":
        assert info.stages_done == STAGES  # its event still holds the result
    elif name == "events.log":
        assert info.error.startswith("store damage: ") and "events.log" in info.error or "event" in info.error
        assert info.stages_done == STAGES  # every stage result is in its own file as well
    else:
        assert info.error.startswith("store damage: ") and name in info.error
    with running_backend(store) as server, connected_client(server.endpoint, heartbeat_s=0.3) as client:
        assert [r.stage for r in client.fetch_result(done).stage_results] == STAGES


def test_one_flipped_byte_costs_one_event_not_the_rest_of_the_log(tmp_path, pristine):
    root, done, _, neighbour, infos = pristine
    store = tmp_path / "store"
    shutil.copytree(root, store)
    [job] = [j for j in JobStore(root).load_all() if j.job_id == done]
    third = job.events[2]
    log = store / done / "events.log"
    data = bytearray(log.read_bytes())
    data[third.offset + third.length // 2] ^= 0x01
    log.write_bytes(bytes(data))
    [reloaded] = [j for j in JobStore(store).load_all() if j.job_id == done]
    assert [e.seq for e in reloaded.events] == list(range(1, infos[done].last_seq + 1))
    assert "events 3 lost" in reloaded.info().error
    _restart_and_check(store, done, neighbour, infos)


def test_a_cut_log_tail_never_reuses_seen_sequence_numbers(tmp_path, pristine):
    root, done, _, neighbour, infos = pristine
    store = tmp_path / "store"
    shutil.copytree(root, store)
    [job] = [j for j in JobStore(root).load_all() if j.job_id == done]
    cut = job.events[-4]  # the last events, the texture result and done among them, are cut off
    log = store / done / "events.log"
    log.write_bytes(log.read_bytes()[: cut.offset + 5])
    info = _restart_and_check(store, done, neighbour, infos)
    # state.json, saved right after done, gives done its own seq back; the result comes from its file.
    assert info.last_seq == infos[done].last_seq and "done event was lost" in info.error
    assert info.stages_done == STAGES


@pytest.mark.parametrize(
    "state_json",
    ['["not", "a", "map"]', '{"state": "bogus"}', '{"state": "done", "created_unix": "yesterday"}', "{"],
)
def test_state_json_of_the_wrong_shape_is_rebuilt_from_the_log(tmp_path, pristine, state_json):
    root, done, _, neighbour, infos = pristine
    store = tmp_path / "store"
    shutil.copytree(root, store)
    (store / done / "state.json").write_text(state_json)
    info = _restart_and_check(store, done, neighbour, infos)
    assert (
        info.state == "done" and info.prompt == "finished" and "state rebuilt from events.log" in info.error
    )


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_spec_of_an_unfinished_job_fails_it_clearly(tmp_path, pristine, damage):
    root, _, paused, neighbour, infos = pristine
    store = tmp_path / "store"
    shutil.copytree(root, store)
    DAMAGE[damage](store / paused / "spec.msg")
    with running_backend(store) as server, connected_client(server.endpoint, heartbeat_s=0.3) as client:
        listed = {j.job_id: j for j in client.list_jobs()}
        assert listed[paused].state == "failed" and "submit it again" in listed[paused].error
        client.attach(paused, infos[paused].last_seq)
        with pytest.raises(JobFailedError, match="spec.msg"):
            client.wait(paused, timeout_s=10)
        assert listed[neighbour].state == "done"


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_resume_message_pauses_the_job_again(tmp_path, pristine, damage):
    root, _, paused, _, infos = pristine
    store = tmp_path / "store"
    shutil.copytree(root, store)
    edited = octahedron(3.0)
    job_store = JobStore(store)
    [job] = [j for j in job_store.load_all() if j.job_id == paused]
    job_store.save_resume(job, codec.encode(m.Resume(mesh=edited, job_id=paused)))
    job.state = "queued"
    job_store.save_state(job)
    DAMAGE[damage](store / paused / "resume.msg")
    with running_backend(store) as server, connected_client(server.endpoint, heartbeat_s=0.3) as client:
        [info] = [j for j in client.list_jobs() if j.job_id == paused]
        assert info.state == "paused" and "resume it again" in info.error
        client.attach(paused, infos[paused].last_seq)
        assert isinstance(list(client.events(paused, timeout_s=10))[-1], m.Paused)
        client.resume(paused, edited)
        later = [e for e in client.events(paused, timeout_s=30) if isinstance(e, m.StageResult)]
        assert [e.stage for e in later] == ["dmtet", "polish", "texture"]


# --- damage with the backend running ----------------------------------------------------------------


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_attach_to_a_job_whose_log_was_damaged_while_running_keeps_the_backend_up(tmp_path, damage):
    with running_backend(tmp_path) as server, connected_client(server.endpoint, heartbeat_s=0.3) as client:
        job = client.submit(JobSpec("damaged under us"))
        client.wait(job, timeout_s=30)
        last = next(j.last_seq for j in client.list_jobs() if j.job_id == job)
        DAMAGE[damage](tmp_path / job / "events.log")
        client.attach(job, 0)
        events = list(client.events(job, timeout_s=30))
        assert [e.seq for e in events] == list(range(1, last + 1)) and isinstance(events[-1], m.Done)
        # The stage results come from their own files.
        assert [e.stage for e in events if isinstance(e, m.StageResult)] == STAGES
        assert [r.stage for r in client.fetch_result(job).stage_results] == STAGES
        other = client.submit(JobSpec("still served"))
        assert len(client.wait(other, timeout_s=30)) == len(STAGES)
        [info] = [j for j in client.list_jobs() if j.job_id == job]
        if damage != "truncate" or info.error:
            assert info.error.startswith("store damage: ")


# --- a full disk -------------------------------------------------------------------------------------


class FillingStore(JobStore):
    """A store whose disk fills on demand: with `full` set, every write fails with ENOSPC."""

    full = False

    def _open(self, path, mode):
        if self.full and ("w" in mode or "a" in mode):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return super()._open(path, mode)


def test_full_disk_fails_the_job_with_disk_full_and_refuses_submits(tmp_path):
    store = FillingStore(tmp_path)
    config = ServerConfig(bind="tcp://127.0.0.1:*", store_dir=tmp_path)
    server = BackendServer(config, ScriptedPipeline, store=store)
    server.start()
    try:
        with connected_client(server.endpoint, heartbeat_s=0.3) as client:
            job = client.submit(JobSpec("fills the disk", options={"test.steps": 50, "test.step_s": 0.02}))
            for event in client.events(job, timeout_s=30):
                if isinstance(event, m.Progress):
                    break
            store.full = True
            with pytest.raises(JobFailedError) as failed:
                client.wait(job, timeout_s=30)
            assert failed.value.code == "disk_full" and "Free some space" in failed.value.message
            folders = sorted(p.name for p in tmp_path.iterdir())
            with pytest.raises(RequestRejected) as refused:
                client.submit(JobSpec("no room"))
            assert refused.value.code == "disk_full"
            assert sorted(p.name for p in tmp_path.iterdir()) == folders  # no empty job folder left
            # A client attaching later still hears how the job ended; the backend keeps serving.
            client.attach(job, 0)
            assert isinstance(list(client.events(job, timeout_s=10))[-1], m.Failed)
            assert client.ping() >= 0
            store.full = False
            ok = client.submit(JobSpec("room again"))
            assert len(client.wait(ok, timeout_s=30)) == len(STAGES)
    finally:
        server.stop()


def _tmpfs_backend(store: Path, endpoint: str) -> subprocess.Popen | None:
    """The real backend on its own 1 MB tmpfs (a private mount namespace), or None where this
    machine cannot mount one."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    store.mkdir()
    ns = [unshare, "--mount"] if os.geteuid() == 0 else [unshare, "--user", "--map-root-user", "--mount"]
    serve = backend_command(store, "--bind", endpoint)
    script = 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"'
    proc = subprocess.Popen(
        [*ns, "sh", "-c", script, str(store), *serve], env=repo_env(), stderr=subprocess.PIPE
    )
    try:
        if wait_until_serving(endpoint, proc):
            return proc
    except TimeoutError:
        pass
    proc.kill()
    proc.wait()
    return None


def test_a_really_full_disk_fails_the_job_with_disk_full(tmp_path):
    endpoint = free_tcp_endpoint()
    proc = _tmpfs_backend(tmp_path / "store", endpoint)
    if proc is None:
        pytest.skip("no tmpfs can be mounted here (unshare/mount refused)")
    # The backend's view of its store, through its own mount namespace.
    store = Path(f"/proc/{proc.pid}/root") / tmp_path.relative_to("/") / "store"
    try:
        with connected_client(endpoint, heartbeat_s=0.3) as client:
            job = client.submit(JobSpec("fills the disk", options={"test.steps": 200, "test.step_s": 0.01}))
            for event in client.events(job, timeout_s=30):
                if isinstance(event, m.Progress):
                    break
            filler = store / "filler"
            with open(filler, "wb") as f, pytest.raises(OSError) as full:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            assert full.value.errno == errno.ENOSPC
            with pytest.raises(JobFailedError) as failed:
                client.wait(job, timeout_s=30)
            assert failed.value.code == "disk_full"
            folders = sorted(p.name for p in store.iterdir())
            with pytest.raises(RequestRejected) as refused:
                client.submit(JobSpec("no room"))
            assert refused.value.code == "disk_full" and sorted(p.name for p in store.iterdir()) == folders
            filler.unlink()
            ok = client.submit(JobSpec("room again"))
            assert len(client.wait(ok, timeout_s=30)) == len(STAGES)
    finally:
        proc.kill()
        proc.wait()


def test_a_pause_stored_before_its_state_file_keeps_the_job_paused(tmp_path, pristine):
    root, _, paused, _, infos = pristine
    store = tmp_path / "store"
    shutil.copytree(root, store)
    job_store = JobStore(store)
    [job] = [j for j in job_store.load_all() if j.job_id == paused]
    job.state = "running"  # killed after the paused event, before state.json said so
    job_store.save_state(job)
    with running_backend(store) as server, connected_client(server.endpoint, heartbeat_s=0.3) as client:
        # The backend decides at start which interrupted jobs to queue again: one queued again is
        # "queued" or "running" by the time it answers, never "paused".
        [info] = [j for j in client.list_jobs() if j.job_id == paused]
        assert info.state == "paused" and info.last_seq == infos[paused].last_seq


def test_damage_that_stays_on_disk_is_reported_once_over_restarts(tmp_path, pristine):
    root, done, _, _, _ = pristine
    store = tmp_path / "store"
    shutil.copytree(root, store)
    _flip(store / done / "results/02-dmtet.msg")
    _flip(store / done / "events.log", 0.3)
    lines = []
    for _ in range(3):
        [job] = [j for j in JobStore(store).load_all() if j.job_id == done]
        lines.append(job.info().error)
    assert lines[0].startswith("store damage: ") and lines[0] == lines[1] == lines[2]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_state_and_spec_damaged_while_the_job_runs(tmp_path, damage):
    with running_backend(tmp_path) as server, connected_client(server.endpoint, heartbeat_s=0.3) as client:
        job = client.submit(JobSpec("damaged mid-run", options={"test.steps": 20, "test.step_s": 0.01}))
        for event in client.events(job, timeout_s=30):
            if isinstance(event, m.StageResult):
                break
        for name in ("spec.msg", "state.json"):
            if (tmp_path / job / name).exists():
                DAMAGE[damage](tmp_path / job / name)
        assert len(client.wait(job, timeout_s=30)) == len(STAGES) - 1  # the rest of the stages
        last = next(j.last_seq for j in client.list_jobs() if j.job_id == job)
    with running_backend(tmp_path) as server, connected_client(server.endpoint, heartbeat_s=0.3) as client:
        [info] = client.list_jobs()
        assert info.state == "done" and info.last_seq == last and info.stages_done == STAGES
        assert "spec.msg" in info.error and info.error.count("store damage") == 1
        assert [r.stage for r in client.fetch_result(job).stage_results] == STAGES
