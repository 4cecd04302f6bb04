"""The Ray executor on a local Ray cluster on loopback: two actors standing in for two GPUs (a custom
resource), the real server and client, and ScriptedPipeline (the job system is the point here)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from dreampolish.backend.models.specs import MODEL_DIR_ENV
from dreampolish.backend.server import BackendServer, ServerConfig
from dreampolish.protocol import messages as m
from dreampolish.protocol.job import JobSpec

from tests.support.pipelines import START_GATE_ENV, connected_client, repo_env
from tests.support.ray_clusters import (
    own_cluster_env,
    own_token_in_this_process,
    remove_temp_dir,
    short_temp_dir,
)

ray = pytest.importorskip("ray", reason="the ray extra is not installed (make venv installs it)")
from dreampolish.backend.executor_ray import RayExecutor  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = str(Path(__file__).resolve().parents[2])
RESOURCE = "test_gpu"
PIPELINE = "tests.support.pipelines:GatedScriptedPipeline"


@pytest.fixture(scope="module")
def start_gate(tmp_path_factory) -> Path:
    """While this file exists, a worker that (re)starts waits in its constructor (GatedScriptedPipeline)."""
    return tmp_path_factory.mktemp("gate") / "hold-worker-starts"


@pytest.fixture(scope="module")
def ray_cluster(tiny_model_cache, start_gate):
    # Workers import tests.support.pipelines from the repository, as the head does, and load the tiny
    # models. The cluster has a token and a temp folder of its own (tests/support/ray_clusters.py).
    env = {"PYTHONPATH": REPO, MODEL_DIR_ENV: str(tiny_model_cache), START_GATE_ENV: str(start_gate)}
    temp = short_temp_dir()
    with own_token_in_this_process():
        ray.init(num_cpus=4, resources={RESOURCE: 2}, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env}, _temp_dir=str(temp))
        try:
            yield
        finally:
            ray.shutdown()
            remove_temp_dir(temp)


@contextlib.contextmanager
def backend_on_ray(store: Path, pipeline: str = PIPELINE):
    executor = RayExecutor(pipeline, resource=RESOURCE)
    server = BackendServer(ServerConfig(bind="tcp://127.0.0.1:*", store_dir=store), executor.pipeline_factory,
                           executor=executor)
    server.start()
    try:
        yield server, executor
    finally:
        server.stop()  # stops the executor: its actors are killed


@pytest.fixture
def ray_backend(ray_cluster, tmp_path):
    with backend_on_ray(tmp_path) as backend:
        yield backend


def spec(prompt: str, steps: int, step_s: float, hold_while: Path | None = None, hold_at_step: int = 1) -> JobSpec:
    """A ScriptedPipeline job; with hold_while, it waits at hold_at_step of its first stage while that
    file exists."""
    options: dict = {"test.steps": steps, "test.step_s": step_s}
    if hold_while is not None:
        options |= {"test.hold_while": str(hold_while), "test.hold_at_step": hold_at_step}
    return JobSpec(prompt, preset="tiny", options=options)


def follow(client, jobs: set[str], timeout_s: float = 120, until: tuple[type, ...] = ()) -> list[m.Message]:
    """Every event of `jobs` in the order it arrived, until each has ended (or sent an `until` event)."""
    events, open_jobs = [], set(jobs)
    deadline = time.monotonic() + timeout_s
    while open_jobs:
        msg = client.poll(max(0.0, deadline - time.monotonic()))
        assert msg is not None, f"no event for {timeout_s} s; still running: {open_jobs}"
        events.append(msg)
        if msg.TYPE in m.FINAL_EVENTS or isinstance(msg, until):
            open_jobs.discard(msg.job_id)
    return events


def test_welcome_announces_the_workers_and_two_jobs_run_at_once(ray_backend, tmp_path):
    server, executor = ray_backend
    hold = tmp_path / "hold-a"
    hold.touch()
    client = connected_client(server.endpoint)
    try:
        assert client.welcome.devices == list(executor.devices) and len(executor.devices) == 2
        # One per actor, named by its node and what it runs on (no GPU here).
        assert len(set(executor.devices)) == 2 and all(d.endswith("/cpu") for d in executor.devices)
        # Job a holds its worker at its second step until b has ended: b can only run on the other
        # worker, at the same time (no guess at how long either takes).
        a = client.submit(spec("a vase", 3, 0.0, hold_while=hold, hold_at_step=2))
        events = follow(client, {a}, until=(m.Progress,))  # a runs (and reported its first step)
        b = client.submit(spec("a lamp", 3, 0.0))
        events += follow(client, {b})
        hold.unlink()
        events += follow(client, {a})
    finally:
        client.close()
    for job in (a, b):
        mine = [e for e in events if e.job_id == job]
        assert isinstance(mine[-1], m.Done), mine[-1]
        assert [e.seq for e in mine] == list(range(1, len(mine) + 1))  # each once, in order
        assert [e.stage for e in mine if isinstance(e, m.StageResult)] == ["nerf", "neus", "dmtet", "polish",
                                                                           "texture"]
    # Interleaved: a's first event comes before b's last, and b's first before a's last.
    order = [e.job_id for e in events if isinstance(e, (m.Progress, m.StageResult))]
    assert order.index(b) < len(order) - 1 - order[::-1].index(a)
    assert order.index(a) < len(order) - 1 - order[::-1].index(b)


def test_a_worker_killed_mid_job_leaves_the_job_to_finish_on_the_other(ray_backend, caplog):
    server, executor = ray_backend
    caplog.set_level(logging.INFO, logger="dreampolish.backend")
    client = connected_client(server.endpoint)
    try:
        job = client.submit(spec("a chair", 3, 0.15))
        events: list[m.Message] = []
        for msg in client.events(job, timeout_s=60):
            events.append(msg)
            if isinstance(msg, m.StageResult) and msg.stage == "neus":
                first = running_device(caplog, job)
                ray.kill(executor.actor(first), no_restart=True)
        result = client.fetch_result(job)
    finally:
        client.close()
    assert isinstance(events[-1], m.Done), events[-1]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    stages = ["nerf", "neus", "dmtet", "polish", "texture"]
    assert [e.stage for e in events if isinstance(e, m.StageResult)] == stages  # none sent twice
    assert [r.stage for r in result.stage_results] == stages
    assert any(isinstance(e, m.Resumed) for e in events)
    # It resumed from its last finished stage on the other worker: nerf (checkpointed) did not run again.
    after = events[next(i for i, e in enumerate(events) if isinstance(e, m.Resumed)):]
    assert not [e for e in after if getattr(e, "stage", "") == "nerf"]
    second = running_device(caplog, job)
    assert second != first and second in executor.devices


def lose_a_worker_mid_job(client, executor, caplog, on_loss=lambda device: None) -> str:
    """Run a job; when its first stage has a result, crash its worker in a way Ray recovers from (the
    actor is restarted: max_restarts=-1). Calls on_loss(device) just before the crash. The job resumes on
    the other worker and ends; returns the crashed worker's device."""
    job = client.submit(spec("a stool", 3, 0.15))
    lost, last = "", None
    for msg in client.events(job, timeout_s=120):
        if isinstance(msg, m.StageResult) and msg.stage == "nerf" and not lost:
            lost = running_device(caplog, job)
            on_loss(lost)
            ray.kill(executor.actor(lost), no_restart=False)
        last = msg
    assert isinstance(last, m.Done), last
    return lost


def both_workers_take_a_job(client, executor, caplog) -> None:
    """A long job holds one worker (whichever takes it); a second job can then only go to the other.
    No timing: the long job ends only when it is cancelled, after the second is done."""
    holder = client.submit(spec("a long stool", 2000, 0.05))
    for msg in client.events(holder, timeout_s=120):
        if isinstance(msg, m.Progress):
            break
    other = client.submit(spec("a short stool", 1, 0.0))
    end = list(client.events(other, timeout_s=120))[-1]
    assert isinstance(end, m.Done), end
    client.cancel(holder)
    assert {running_device(caplog, holder), running_device(caplog, other)} == set(executor.devices)


def test_a_worker_ray_restarts_before_the_head_looks_takes_jobs_again(ray_backend, caplog, monkeypatch):
    # Order 1: Ray has the crashed worker running again before the head's thread for it asks whether
    # it is back. The head's first probe is held until the cluster records the restarted actor ALIVE.
    server, executor = ray_backend
    caplog.set_level(logging.INFO, logger="dreampolish.backend")
    probe = executor._probe

    def probe_after_the_restart(device: str) -> None:
        wait_for_state(executor, device, "ALIVE", restarts=1)
        probe(device)

    monkeypatch.setattr(executor, "_probe", probe_after_the_restart)
    client = connected_client(server.endpoint)
    try:
        lost = lose_a_worker_mid_job(client, executor, caplog)
        wait_for_log(caplog, f"worker {lost} is back")
        both_workers_take_a_job(client, executor, caplog)
    finally:
        client.close()
    assert not [r for r in caplog.records if "retired" in r.getMessage()]


def test_a_worker_the_head_finds_lost_before_ray_restarts_it_takes_jobs_again(ray_backend, caplog, monkeypatch,
                                                                              start_gate):
    # Order 2 (the race issue 25 found): the head asks while Ray has not restarted the worker yet. Ray's
    # restart is held (the restarted actor waits in its constructor while start_gate exists), and the
    # head's first probe fails at once, as a probe sent before Ray has noticed the death does. The
    # head must not retire the worker: the cluster records it RESTARTING, not DEAD.
    server, executor = ray_backend
    caplog.set_level(logging.INFO, logger="dreampolish.backend")
    probe, looked = executor._probe, threading.Event()

    def first_probe_fails(device: str) -> None:
        if not looked.is_set():
            looked.set()
            raise ray.exceptions.RayActorError(error_msg="probe sent before Ray noticed the death")
        probe(device)

    monkeypatch.setattr(executor, "_probe", first_probe_fails)
    client = connected_client(server.endpoint)
    try:
        lost = lose_a_worker_mid_job(client, executor, caplog, on_loss=lambda device: start_gate.touch())
        assert looked.wait(120), "the head never asked whether the lost worker was back"
        wait_for_log(caplog, f"worker {lost} is not back yet")
        assert executor._actor_state(lost) in ("RESTARTING", "PENDING_CREATION", "DEPENDENCIES_UNREADY")
        start_gate.unlink()  # now Ray may finish the restart
        wait_for_log(caplog, f"worker {lost} is back")
        both_workers_take_a_job(client, executor, caplog)
    finally:
        start_gate.unlink(missing_ok=True)
        client.close()
    assert not [r for r in caplog.records if "retired" in r.getMessage()]


def test_a_worker_killed_for_good_is_retired(ray_backend, caplog):
    # The cluster records the actor DEAD: the head retires its thread (and says so) instead of asking forever.
    server, executor = ray_backend
    caplog.set_level(logging.INFO, logger="dreampolish.backend")
    client = connected_client(server.endpoint)
    try:
        job = client.submit(spec("a bench", 3, 0.15))
        for msg in client.events(job, timeout_s=120):
            if isinstance(msg, m.StageResult) and msg.stage == "nerf":
                lost = running_device(caplog, job)
                ray.kill(executor.actor(lost), no_restart=True)
            last = msg
    finally:
        client.close()
    assert isinstance(last, m.Done), last
    wait_for_log(caplog, f"worker on {lost} retired: it takes no more jobs")
    assert executor._actor_state(lost) == "DEAD"


def wait_for_state(executor, device: str, state: str, restarts: int = 0, timeout_s: float = 120) -> None:
    """Wait until the cluster records the device's actor in `state` after at least `restarts` restarts."""
    from ray._private.state import actors

    actor_id = executor.actor(device)._actor_id.hex()
    deadline = time.monotonic() + timeout_s
    while True:
        record = actors(actor_id=actor_id)
        if record.get("State") == state and record.get("NumRestarts", 0) >= restarts:
            return
        assert time.monotonic() < deadline, f"{device} never became {state}: {record.get('State')}"
        time.sleep(0.05)


def wait_for_log(caplog, message: str, timeout_s: float = 120) -> None:
    """Wait until a log record of the head says `message` (the head's threads log as they decide)."""
    deadline = time.monotonic() + timeout_s
    while not any(r.getMessage().startswith(message) for r in caplog.records):
        assert time.monotonic() < deadline, f"the head never logged {message!r}"
        time.sleep(0.05)


def running_device(caplog, job: str) -> str:
    """The device the job last started on (from the job system's log)."""
    starts = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"job {job}: starting on ")]
    assert starts, "the job never started"
    return starts[-1].rsplit(" ", 1)[-1]


def test_cancel_reaches_a_job_running_on_a_worker_within_one_step(ray_backend, tmp_path):
    # The job reports step 2, then waits before step 3 for as long as the hold file exists (checking
    # for a cancel, as every step does): only a cancel that reaches the worker ends it, and no step
    # after the one running when it arrived is reported.
    server, _ = ray_backend
    hold = tmp_path / "hold"
    hold.touch()
    client = connected_client(server.endpoint)
    try:
        job = client.submit(spec("a bowl", 40, 0.0, hold_while=hold, hold_at_step=3))
        events = []
        for msg in client.events(job, timeout_s=60):
            events.append(msg)
            if isinstance(msg, m.Progress) and msg.step == 2:
                client.cancel(job)
        # The job frees its worker: a next job runs to its end.
        after = client.submit(spec("a cup", 1, 0.0))
        assert isinstance(list(client.events(after, timeout_s=60))[-1], m.Done)
    finally:
        hold.unlink(missing_ok=True)
        client.close()
    assert isinstance(events[-1], m.Cancelled), events[-1]
    assert [e.step for e in events if isinstance(e, m.Progress)] == [1, 2]


def test_the_real_pipeline_resumes_from_its_checkpoints_on_the_other_worker(ray_cluster, tmp_path, caplog):
    # The tiny DreamPolish pipeline: its checkpoints (checkpoints/*.pt and the manifest) reach the
    # head's store with each stage result and go to the other worker with the job, which restores the
    # finished stages and ends where an uninterrupted run of the same seed ends.
    caplog.set_level(logging.INFO, logger="dreampolish.backend")
    request = JobSpec("a ceramic teapot", preset="tiny", seed=5)
    with backend_on_ray(tmp_path / "store", "dreampolish.backend.pipeline:DreamPolishPipeline") as (server, ex):
        client = connected_client(server.endpoint)
        try:
            whole = client.wait(client.submit(request), timeout_s=240)
            job = client.submit(request)
            events: list[m.Message] = []
            for msg in client.events(job, timeout_s=240):
                events.append(msg)
                if isinstance(msg, m.StageResult) and msg.stage == "nerf":
                    first = running_device(caplog, job)
                    ray.kill(ex.actor(first), no_restart=True)
        finally:
            client.close()
    assert isinstance(events[-1], m.Done), events[-1]
    assert running_device(caplog, job) != first
    resumed = next(i for i, e in enumerate(events) if isinstance(e, m.Resumed))
    assert not [e for e in events[resumed:] if getattr(e, "stage", "") in ("reference", "nerf")]
    results = [e for e in events if isinstance(e, m.StageResult)]
    assert [r.stage for r in results] == [r.stage for r in whole]  # each once
    np.testing.assert_allclose(results[-2].mesh.vertices, whole[-2].mesh.vertices, atol=1e-5, rtol=0)


def test_seed_variants_fan_out_across_the_workers_and_the_chosen_one_continues(ray_cluster, tmp_path):
    request = JobSpec("a ceramic teapot", preset="tiny", seed=21)
    with backend_on_ray(tmp_path / "store", "dreampolish.backend.pipeline:DreamPolishPipeline") as (server, _):
        client = connected_client(server.endpoint)
        try:
            variants = client.submit_variants(request, 2, "dmtet")
            events = follow(client, set(variants), timeout_s=240, until=(m.Paused,))
            chosen, other = variants[1], variants[0]
            client.resume(chosen)
            client.cancel(other)
            rest = follow(client, {chosen, other}, timeout_s=240)
        finally:
            client.close()
    order = [e.job_id for e in events if isinstance(e, m.Progress)]
    assert order.index(chosen) < len(order) - 1 - order[::-1].index(other)  # side by side
    drafts = {e.job_id: e.mesh for e in events if isinstance(e, m.StageResult) and e.stage == "dmtet"}
    assert set(drafts) == set(variants)
    assert not np.array_equal(drafts[chosen].vertices, drafts[other].vertices)  # different seeds
    assert [e.TYPE for e in rest if e.job_id == other] == ["cancelled"]
    mine = [e for e in rest if e.job_id == chosen]
    assert isinstance(mine[-1], m.Done)
    assert [e.stage for e in mine if isinstance(e, m.StageResult)] == ["polish", "texture", "export"]


def run_serve(tmp_path, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "dreampolish.backend.cli", "serve", "--store", str(tmp_path / "jobs"),
            "--pipeline", PIPELINE, "--bind", "tcp://127.0.0.1:0", *args]
    # A cluster this serve starts (no address given) has a token and a temp folder of its own.
    temp = short_temp_dir()
    try:
        return subprocess.run(argv, env=own_cluster_env(repo_env(), temp), capture_output=True, text=True,
                              timeout=120)
    finally:
        remove_temp_dir(temp)


def test_serve_refuses_ray_options_that_do_not_go_together(tmp_path):
    done = run_serve(tmp_path, "--ray-address", "10.0.0.1:6379")
    assert done.returncode == 2 and "--ray-address needs --executor ray" in done.stderr
    done = run_serve(tmp_path, "--executor", "ray", "--device", "cuda:1")
    assert done.returncode == 2 and "--device is for --executor local" in done.stderr


def test_serve_says_when_no_ray_cluster_answers_at_the_address(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens on it
    start = time.monotonic()
    done = run_serve(tmp_path, "--executor", "ray", "--ray-address", address)
    assert done.returncode == 2 and f"no Ray cluster answers at {address}" in done.stderr, done.stderr[-2000:]
    assert time.monotonic() - start < 60  # Ray itself retries such an address for minutes


def test_serve_with_ray_on_a_machine_without_gpus_says_so(tmp_path):
    # No cluster given: Ray starts one on this machine, which has no GPU; the backend refuses to start
    # (and stops that cluster) instead of serving with nothing to run jobs on.
    done = run_serve(tmp_path, "--executor", "ray")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "the Ray cluster has no GPU" in done.stderr


@pytest.mark.parametrize("name", ["../state.json", "/etc/passwd", "checkpoints/../../x", ""])
def test_a_worker_file_outside_the_job_folder_is_refused(tmp_path, name):
    from dreampolish.backend.executor_ray import write_files
    from dreampolish.backend.pipeline_api import JobFailed

    with pytest.raises(JobFailed, match="outside the job's folder"):
        write_files(tmp_path / "work", [(name, b"x")])
    assert not (tmp_path / "state.json").exists()


def test_work_files_travel_and_only_changed_ones_come_back(tmp_path):
    from dreampolish.backend.executor_ray import _ChangedFiles, read_files, write_files

    head, worker = tmp_path / "head", tmp_path / "worker"
    (head / "checkpoints").mkdir(parents=True)
    (head / "checkpoints" / "nerf.pt").write_bytes(b"nerf")
    (head / "checkpoints" / "manifest.json").write_text('{"finished": ["nerf"]}')
    (head / "checkpoints" / "neus.pt.tmp").write_bytes(b"half written")
    write_files(worker, read_files(head))
    assert sorted(p.name for p in (worker / "checkpoints").iterdir()) == ["manifest.json", "nerf.pt"]
    changed = _ChangedFiles(worker)
    assert changed.take() == []
    (worker / "checkpoints" / "neus.pt").write_bytes(b"neus")
    tmp = worker / "checkpoints" / "manifest.json.tmp"
    manifest = worker / "checkpoints" / "manifest.json"
    before = manifest.stat()
    tmp.write_text('{"finished": ["neus"]}')  # the same size, replaced by rename as CheckpointStore does
    tmp.replace(manifest)
    os.utime(manifest, ns=(before.st_atime_ns, before.st_mtime_ns))  # within a coarse clock's tick
    back = dict(changed.take())
    assert back == {"checkpoints/neus.pt": b"neus", "checkpoints/manifest.json": b'{"finished": ["neus"]}'}
