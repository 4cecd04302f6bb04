"""Jobs belong to the client key that submitted them: another client neither sees nor touches them;
an admin key does both. Through the real server, with CURVE and ZAP."""

from __future__ import annotations

import shutil

import pytest
from dreampolish.backend.commands import keys as keys_command
from dreampolish.backend.security import load_server_keys
from dreampolish.protocol import messages as m
from dreampolish.protocol.client import BackendClient, RequestRejected
from dreampolish.protocol.job import JobSpec

from tests.support.pipelines import running_backend

pytestmark = pytest.mark.timeout(120)


def pair(folder, name, client=True):
    args = type("Args", (), {"out": folder, "name": name, "client": name if client else None, "force": False})
    assert keys_command.run(args) == 0
    return folder / f"{name}.key", folder / f"{name}.key_secret"


@pytest.fixture
def setup(tmp_path):
    ring = tmp_path / "keys"
    pair(ring, "server", client=False)
    clients, admins = tmp_path / "clients", tmp_path / "admins"
    clients.mkdir()
    admins.mkdir()
    secrets = {}
    for name, folder in (("alice", clients), ("bob", clients), ("admin", admins)):
        public, secrets[name] = pair(ring / name, name)
        shutil.copy(public, folder)
    config = dict(
        curve_keys=load_server_keys(ring / "server.key_secret"), curve_clients=clients, curve_admins=admins
    )
    return tmp_path / "store", config, ring / "server.key", secrets


def connect(server, server_key, secret):
    c = BackendClient(server.endpoint, server_public_key=str(server_key), client_key=secret, timeout_s=5)
    c.connect()
    return c


def refused(call):
    with pytest.raises(RequestRejected) as info:
        call()
    assert info.value.code == "not_your_job", info.value
    assert "belongs to another client key" in info.value.message


def test_another_client_cannot_see_or_touch_a_job_and_an_admin_can(setup):
    store, config, server_key, secrets = setup
    with running_backend(store, **config) as server:
        alice = connect(server, server_key, secrets["alice"])
        bob = connect(server, server_key, secrets["bob"])
        admin = connect(server, server_key, secrets["admin"])
        job = alice.submit(JobSpec("alice's vase", pause_after=["nerf"]))
        events = list(alice.events(job, timeout_s=30))
        assert isinstance(events[-1], m.Paused)
        assert [j.job_id for j in alice.list_jobs()] == [job]
        assert bob.list_jobs() == []
        refused(lambda: bob.cancel(job))
        refused(lambda: bob.resume(job))
        refused(lambda: bob.attach(job, 0))
        refused(lambda: bob.fetch_result(job))
        refused(lambda: bob.delete(job))
        assert server.manager.get(job).state == "paused"  # nothing bob sent changed it
        mine = bob.submit(JobSpec("bob's own"))
        assert [j.job_id for j in bob.list_jobs()] == [mine]
        assert {j.job_id for j in admin.list_jobs()} == {job, mine}
        assert len(admin.fetch_result(job).stage_results) == 1
        admin.cancel(job)
        assert isinstance(list(alice.events(job, timeout_s=30))[-1], m.Cancelled)
        for c in (alice, bob, admin):
            c.close()


def test_ownership_survives_a_restart_and_a_damaged_state_file(setup):
    store, config, server_key, secrets = setup
    with running_backend(store, **config) as server:
        alice = connect(server, server_key, secrets["alice"])
        job = alice.submit(JobSpec("kept"))
        alice.wait(job, timeout_s=30)
        alice.close()
    (store / job / "state.json").write_text("{ damaged")
    with running_backend(store, **config) as server:
        bob = connect(server, server_key, secrets["bob"])
        alice = connect(server, server_key, secrets["alice"])
        assert bob.list_jobs() == []
        refused(lambda: bob.fetch_result(job))
        assert [j.job_id for j in alice.list_jobs()] == [job]
        assert len(alice.fetch_result(job).stage_results) == 5
        bob.close()
        alice.close()


def test_owner_deletes_a_finished_job_not_a_running_one(setup):
    store, config, server_key, secrets = setup
    with running_backend(store, **config) as server:
        alice = connect(server, server_key, secrets["alice"])
        done = alice.submit(JobSpec("done soon"))
        alice.wait(done, timeout_s=30)
        slow = alice.submit(JobSpec("slow", options={"test.steps": 500, "test.step_s": 0.01}))
        with pytest.raises(RequestRejected) as info:
            alice.delete(slow)
        assert info.value.code == "bad_state"
        alice.delete(done)
        assert [j.job_id for j in alice.list_jobs()] == [slow]
        assert not (store / done).exists()
        with pytest.raises(RequestRejected) as gone:
            alice.fetch_result(done)
        assert gone.value.code == "unknown_job"
        alice.cancel(slow)
        alice.close()


def test_without_an_allow_list_every_client_is_the_one_user(tmp_path, setup):
    _, config, server_key, _ = setup
    any_key = {"curve_keys": config["curve_keys"]}  # CURVE serving any key: one user, as before
    with running_backend(tmp_path / "any", **any_key) as server:
        first = BackendClient(server.endpoint, server_public_key=str(server_key), timeout_s=5)
        first.connect()
        job = first.submit(JobSpec("mine"))
        first.wait(job, timeout_s=30)
        first.close()
        with BackendClient(server.endpoint, server_public_key=str(server_key), timeout_s=5) as later:
            later.connect()  # another key made for this connection: still the same user
            assert [j.job_id for j in later.list_jobs()] == [job]
            assert len(later.fetch_result(job).stage_results) == 5
