"""Queue limits and round robin between clients, through the real server (CURVE, two client keys)."""

from __future__ import annotations

import shutil
import time

import pytest
from dreampolish.backend import server as server_module
from dreampolish.backend.commands import keys as keys_command
from dreampolish.backend.executor import FairQueue
from dreampolish.backend.security import load_server_keys
from dreampolish.protocol import messages as m
from dreampolish.protocol.client import BackendClient, RequestRejected
from dreampolish.protocol.job import JobSpec

from tests.support.pipelines import running_backend

pytestmark = pytest.mark.timeout(300)

SLOW = {"test.steps": 20, "test.step_s": 0.02}
"""About 2 s a job (5 stages): the queue stays full while the test looks at it."""


def pair(folder, name, client=True):
    args = type("Args", (), {"out": folder, "name": name, "client": name if client else None, "force": False})
    assert keys_command.run(args) == 0
    return folder / f"{name}.key", folder / f"{name}.key_secret"


@pytest.fixture
def keys(tmp_path):
    ring = tmp_path / "keys"
    pair(ring, "server", client=False)
    clients = tmp_path / "clients"
    clients.mkdir()
    secrets = {}
    for name in ("alice", "bob"):
        public, secrets[name] = pair(ring / name, name)
        shutil.copy(public, clients)
    config = dict(curve_keys=load_server_keys(ring / "server.key_secret"), curve_clients=clients)
    return config, ring / "server.key", secrets


def connect(server, server_key, secret):
    c = BackendClient(server.endpoint, server_public_key=str(server_key), client_key=secret, timeout_s=10)
    c.connect()
    return c


def wait_running(server, job_id, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while server.manager.get(job_id).state != "running":
        assert time.monotonic() < deadline, f"job {job_id} did not start"
        time.sleep(0.01)


def test_fair_queue_takes_clients_in_turn():
    q = FairQueue()
    assert [q.put(f"a{i}", "a") for i in range(4)] == [0, 1, 2, 3]
    assert q.put("b0", "b") == 1  # after a0 only
    assert q.put("b1", "b") == 3  # a0 b0 a1
    assert [q.get() for _ in range(6)] == ["a0", "b0", "a1", "b1", "a2", "a3"]


def test_limits_are_announced_and_a_full_queue_loses_nothing(tmp_path, keys):
    config, server_key, secrets = keys
    with running_backend(tmp_path / "store", max_queued_per_client=2, max_queued_total=3, **config) as server:
        alice = connect(server, server_key, secrets["alice"])
        bob = connect(server, server_key, secrets["bob"])
        assert (alice.welcome.max_queued_per_client, alice.welcome.max_queued_total) == (2, 3)
        first = alice.submit(JobSpec("runs", options=SLOW))
        wait_running(server, first)
        queued = [alice.submit(JobSpec(f"waits {i}", options=SLOW)) for i in range(2)]
        with pytest.raises(RequestRejected) as mine:
            alice.submit(JobSpec("one too many"))
        assert mine.value.code == "queue_full" and "per client" in mine.value.message
        bob_job = bob.submit(JobSpec("bob's"))  # alice's limit is not bob's
        with pytest.raises(RequestRejected) as total:
            bob.submit(JobSpec("backend full"))
        assert total.value.code == "queue_full" and "backend's queue is full" in total.value.message
        states = {j.job_id: j.state for j in alice.list_jobs()}
        assert states == {first: "running", queued[0]: "queued", queued[1]: "queued"}
        assert [j.job_id for j in bob.list_jobs()] == [bob_job]
        assert len(server.manager.jobs) == 4 and len(list((tmp_path / "store").iterdir())) == 4
        alice.close()
        bob.close()


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
def test_a_thousand_jobs_of_one_client_leave_anothers_near_the_front(tmp_path, keys):
    config, server_key, secrets = keys
    with running_backend(tmp_path / "store", max_queued_per_client=1000, **config) as server:
        alice = connect(server, server_key, secrets["alice"])
        bob = connect(server, server_key, secrets["bob"])
        t0 = time.monotonic()
        flood = [alice.submit(JobSpec(f"flood {i} " + "x" * 1500, options=SLOW)) for i in range(1000)]
        submit_s = time.monotonic() - t0
        started_at_submit = sum(server.manager.get(j).state != "queued" for j in flood)
        bob_job = bob.submit(JobSpec("bob's one"))
        ahead = server.manager.executor.pending()
        accepted = bob.list_jobs()
        assert [j.job_id for j in accepted] == [bob_job]
        # bob's job waits for the running one and at most one more of alice's, not ~1000.
        t1 = time.monotonic()
        bob.wait(bob_job, timeout_s=60)
        waited_s = time.monotonic() - t1
        # At most: the one running when bob submitted, one more of alice's (her turn came first),
        # and the one that started when bob's ended.
        started = sum(server.manager.get(j).state != "queued" for j in flood) - started_at_submit
        assert started <= 2, started
        listed = alice.list_jobs()  # five pages of 200; each under the header limit
        assert [j.job_id for j in listed] == flood
        assert all(len(j.prompt) <= 200 for j in listed)
        page, token = alice.list_jobs_page(limit=10)
        assert len(page) == 10 and token
        print(f"1000 submits {submit_s:.1f} s; {ahead} queued when bob submitted; bob waited {waited_s:.1f} s")
        assert ahead > 900
        alice.close()
        bob.close()


def test_expired_finished_jobs_are_deleted(tmp_path, monkeypatch):
    monkeypatch.setattr(server_module, "EXPIRY_CHECK_S", 0.05)
    with running_backend(tmp_path / "store", expire_after_s=0.5) as server:
        with BackendClient(server.endpoint, timeout_s=5) as c:
            c.connect()
            old = c.submit(JobSpec("old"))
            c.wait(old, timeout_s=30)
            paused = c.submit(JobSpec("paused, kept", pause_after=["nerf"]))
            assert isinstance(list(c.events(paused, timeout_s=30))[-1], m.Paused)
            deadline = time.monotonic() + 10
            while old in {j.job_id for j in c.list_jobs()}:
                assert time.monotonic() < deadline, "the finished job was not expired"
                time.sleep(0.05)
            assert [j.job_id for j in c.list_jobs()] == [paused]
            assert not (tmp_path / "store" / old).exists()
