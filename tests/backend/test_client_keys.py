"""Client keys and the allow-list: only clients whose public key is in the folder are served, and a
refused client learns why in one line, through the real server."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import zmq
from dreampolish.backend.commands import keys as keys_command
from dreampolish.backend.security import InsecureBindRefused, check_bind_allowed, load_server_keys
from dreampolish.protocol.client import AccessRefused, BackendClient, BackendUnreachable
from dreampolish.protocol.job import JobSpec

from tests.support.pipelines import backend_command, repo_env, running_backend

pytestmark = pytest.mark.timeout(90)


def make_pair(folder, name, client=True):
    args = type("Args", (), {"out": folder, "name": name, "client": name if client else None, "force": False})
    assert keys_command.run(args) == 0
    return folder / f"{name}.key", folder / f"{name}.key_secret"


@pytest.fixture
def keyring(tmp_path):
    """The server's pair, two clients' pairs, and the allow-list folder holding only alice's key."""
    ring = tmp_path / "keys"
    _, server_secret = make_pair(ring, "server", client=False)
    alice_public, alice_secret = make_pair(ring / "alice", "alice")
    bob_public, bob_secret = make_pair(ring / "bob", "bob")
    allowed = tmp_path / "clients"
    allowed.mkdir()
    shutil.copy(alice_public, allowed)
    return {
        "server": load_server_keys(server_secret),
        "server_public": ring / "server.key",
        "alice": alice_secret,
        "bob": bob_secret,
        "bob_public": bob_public,
        "allowed": allowed,
    }


def client_for(server, keyring, client_key, **kw):
    kw.setdefault("server_public_key", str(keyring["server_public"]))
    return BackendClient(server.endpoint, client_key=client_key, timeout_s=5, dead_after_s=4, **kw)


@pytest.fixture
def served(tmp_path, keyring):
    with running_backend(
        tmp_path / "store", curve_keys=keyring["server"], curve_clients=keyring["allowed"]
    ) as server:
        yield server


def refusal(client):
    """The backend's refusal: a silent backend would raise BackendUnreachable after timeout_s, which is
    not an AccessRefused, so this fails on a 4-second silence without timing anything."""
    with pytest.raises(AccessRefused) as info:
        client.connect()
    return str(info.value)


def test_allowed_key_is_served_and_its_jobs_run(served, keyring):
    with client_for(served, keyring, keyring["alice"]) as alice:
        alice.connect()
        job = alice.submit(JobSpec("mine"))
        assert len(alice.wait(job, timeout_s=30)) == 5


def test_unknown_key_is_refused_with_one_line_naming_it(served, keyring):
    with client_for(served, keyring, keyring["bob"]) as bob:
        line = refusal(bob)
        assert line == f"this backend does not know your client key {bob.connection.public_key[:8]}"
        assert "\n" not in line
    assert served.manager.list() == []


def test_no_client_key_is_refused_and_told_to_make_one(served, keyring):
    with client_for(served, keyring, None) as anonymous:
        line = refusal(anonymous)
    assert line.startswith("this backend does not know your client key") and "--client-key" in line


def test_plain_client_against_curve_server_is_told_to_set_the_server_key(served, keyring):
    with client_for(served, keyring, None, server_public_key=None) as plain:
        line = refusal(plain)
    assert "uses CURVE encryption: set its server key" in line


def test_wrong_server_key_is_unreachable_not_served(served, keyring):
    wrong = zmq.curve_keypair()[0]
    with client_for(served, keyring, keyring["alice"], server_public_key=wrong) as c:
        c.connection.dead_after_s, c.connection.heartbeat_s = 1.5, 0.3
        with pytest.raises(BackendUnreachable) as info:
            c.connect()
            c.submit(JobSpec("should not run"))
    assert not isinstance(info.value, AccessRefused) or "server key" in str(info.value)
    assert served.manager.list() == []


def test_key_added_while_running_is_served_and_a_removed_key_refused(served, keyring):
    with client_for(served, keyring, keyring["bob"]) as bob:
        refusal(bob)
    shutil.copy(keyring["bob_public"], keyring["allowed"])
    with client_for(served, keyring, keyring["bob"]) as bob:
        bob.connect()
        bob.submit(JobSpec("bob's, after his key was added"))
    (keyring["allowed"] / "bob.key").unlink()
    with client_for(served, keyring, keyring["bob"]) as bob:
        assert refusal(bob).startswith("this backend does not know your client key")
    with client_for(served, keyring, keyring["alice"]) as alice:
        alice.connect()  # the others are still served


def test_a_file_that_is_not_a_certificate_does_not_stop_the_others(served, keyring):
    (keyring["allowed"] / "half-copied.key").write_text("metadata\n")  # no public-key line yet
    shutil.copy(keyring["bob_public"], keyring["allowed"])
    for name in ("alice", "bob"):
        with client_for(served, keyring, keyring[name]) as c:
            c.connect()


def test_off_loopback_needs_an_allow_list_or_allow_any(tmp_path, keyring):
    with pytest.raises(InsecureBindRefused, match="--curve-clients"):
        check_bind_allowed("tcp://0.0.0.0:5557", keyring["server"])
    check_bind_allowed("tcp://0.0.0.0:5557", keyring["server"], clients=keyring["allowed"])
    check_bind_allowed("tcp://0.0.0.0:5557", keyring["server"], allow_any_client=True)
    check_bind_allowed("tcp://127.0.0.1:5557", keyring["server"])  # loopback: as before


def test_serve_refuses_off_loopback_without_allow_list(tmp_path, keyring):
    secret = tmp_path / "keys" / "server.key_secret"
    proc = subprocess.run(
        backend_command(tmp_path / "store", "--bind", "tcp://0.0.0.0:5996", "--curve-secret-key", str(secret)),
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "without a client allow-list" in proc.stderr and "--allow-any-client" in proc.stderr


def test_cli_keys_and_client_key_option(tmp_path, served, keyring):
    from dreampolish.protocol import cli

    out = tmp_path / "carol"
    assert cli.main(["keys", "--out", str(out), "--name", "carol"]) == 0
    assert (out / "carol.key_secret").stat().st_mode & 0o077 == 0
    argv = ["jobs", "--backend", served.endpoint, "--server-key", str(keyring["server_public"])]
    argv += ["--client-key", str(out / "carol.key_secret"), "--timeout", "5"]
    proc = subprocess.run(
        [sys.executable, "-m", "dreampolish.protocol.cli", *argv],
        env=repo_env(), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "this backend does not know your client key" in proc.stderr
    shutil.copy(out / "carol.key", keyring["allowed"])
    proc = subprocess.run(
        [sys.executable, "-m", "dreampolish.protocol.cli", *argv],
        env=repo_env(), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "no jobs" in proc.stdout


def test_backend_keys_client_command(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dreampolish.backend.cli", "keys", "--client", "dave", "--out", str(tmp_path)],
        env=repo_env(), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "dave.key").is_file() and (tmp_path / "dave.key_secret").is_file()
    assert "client public key" in proc.stdout
