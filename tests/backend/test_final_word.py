"""One final word per job: a full disk is `disk_full` whoever's write found it, and a job that failed
stays failed, also when the disk was too full to record its failure and the backend restarts."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from dreampolish.backend.job_store import JobStore
from dreampolish.backend.server import BackendServer, ServerConfig
from dreampolish.protocol import messages as m
from dreampolish.protocol.client import JobFailedError
from dreampolish.protocol.job import JobSpec

from tests.support.pipelines import ScriptedPipeline, connected_client, running_backend

pytestmark = pytest.mark.timeout(120)


class FullStore(JobStore):
    """A store whose writes fail with ENOSPC while `full_while` exists (a file or folder), or always
    with `full` set."""

    full = False
    full_while: Path | None = None

    def _open(self, path, mode):
        full = self.full or (self.full_while is not None and self.full_while.exists())
        if full and ("w" in mode or "a" in mode):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return super()._open(path, mode)


def test_a_full_disk_under_the_pipelines_own_write_fails_the_job_with_disk_full(tmp_path):
    with running_backend(tmp_path) as server, connected_client(server.endpoint) as client:
        job = client.submit(JobSpec("fills the disk", options={"test.fail_stage": "nerf", "test.fail_kind": "disk_full"}))
        with pytest.raises(JobFailedError) as failed:
            client.wait(job, timeout_s=30)
        assert failed.value.code == "disk_full"
        assert "Free some space" in failed.value.message and "Errno" not in failed.value.message


def _restart(store_dir: Path) -> BackendServer:
    server = BackendServer(ServerConfig(bind="tcp://127.0.0.1:*", store_dir=store_dir), ScriptedPipeline)
    server.start()
    return server


def _events_after_restart(store_dir: Path, job: str) -> tuple[str, list[m.Message]]:
    server = _restart(store_dir)
    try:
        with connected_client(server.endpoint) as client:
            [info] = [j for j in client.list_jobs() if j.job_id == job]
            client.attach(job, 0)
            return info.state, list(client.events(job, timeout_s=10, until_pause=False))
    finally:
        server.stop()


def _fail_on_a_full_store(tmp_path: Path, store: FullStore, fill) -> str:
    """Run a job to a step, fill the store's disk (fill(job_id)), let the job go on: it fails."""
    hold = tmp_path / "hold"
    hold.touch()
    server = BackendServer(ServerConfig(bind="tcp://127.0.0.1:*", store_dir=tmp_path / "store"), ScriptedPipeline,
                           store=store)
    server.start()
    try:
        with connected_client(server.endpoint, heartbeat_s=0.3) as client:
            options = {"test.hold_while": str(hold), "test.hold_at_step": 2}
            job = client.submit(JobSpec("fills the disk", options=options))
            for event in client.events(job, timeout_s=30):
                if isinstance(event, m.Progress):
                    break
            fill(job)
            hold.unlink()
            with pytest.raises(JobFailedError) as failed:
                client.wait(job, timeout_s=30)
            assert failed.value.code == "disk_full"
    finally:
        server.stop()
    return job


def test_a_failure_the_full_disk_could_not_record_stays_failed_after_a_restart(tmp_path):
    store = FullStore(tmp_path / "store")

    def fill(job: str) -> None:
        store.full = True

    job = _fail_on_a_full_store(tmp_path, store, fill)
    # The disk has room again and the backend restarts: the job the client heard fail does not resume.
    state, events = _events_after_restart(tmp_path / "store", job)
    assert state == "failed"
    assert not any(isinstance(e, (m.Resumed, m.Done)) for e in events)
    assert isinstance(events[-1], m.Failed) and events[-1].code == "disk_full"
    assert sum(e.TYPE in m.FINAL_EVENTS for e in events) == 1


def test_the_failed_jobs_work_files_make_room_to_record_its_failure(tmp_path):
    store = FullStore(tmp_path / "store")

    def fill(job: str) -> None:
        store.full_while = tmp_path / "store" / job / "work"  # full until the job's checkpoints go

    job = _fail_on_a_full_store(tmp_path, store, fill)
    assert not (tmp_path / "store" / job / "work").exists()
    state, events = _events_after_restart(tmp_path / "store", job)
    assert state == "failed"
    assert [type(e) for e in events].count(m.Failed) == 1 and isinstance(events[-1], m.Failed)
    assert not any(isinstance(e, (m.Resumed, m.Done)) for e in events)
