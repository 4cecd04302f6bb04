"""Loopback by default; beyond it only with CURVE keys, and only clients with the right server key are served."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from dreampolish.backend.commands import keys as keys_command
from dreampolish.backend.security import InsecureBindRefused, is_loopback_endpoint, load_server_keys
from dreampolish.protocol.client import BackendClient, BackendUnreachable, load_server_public_key
from dreampolish.protocol.job import JobSpec

from tests.support.pipelines import ScriptedPipeline, backend_command, repo_env, running_backend

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "endpoint, local",
    [
        ("tcp://127.0.0.1:5557", True),
        ("tcp://localhost:5557", True),
        ("tcp://[::1]:5557", True),
        ("ipc:///tmp/dreampolish.sock", True),
        ("tcp://*:5557", False),
        ("tcp://0.0.0.0:5557", False),
        ("tcp://192.168.1.20:5557", False),
        ("tcp://eth0:5557", False),
    ],
)
def test_loopback_endpoints(endpoint, local):
    assert is_loopback_endpoint(endpoint) is local


def test_serve_refuses_a_public_bind_without_keys(tmp_path):
    proc = subprocess.run(
        backend_command(tmp_path, "--bind", "tcp://0.0.0.0:5999"),
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "refusing to bind tcp://0.0.0.0:5999 without authentication" in proc.stderr
    assert "dreampolish-backend keys" in proc.stderr


def test_server_refuses_public_bind_without_keys_in_process(tmp_path):
    from dreampolish.backend.server import BackendServer, ServerConfig

    with pytest.raises(InsecureBindRefused):
        BackendServer(ServerConfig(bind="tcp://*:0", store_dir=tmp_path), ScriptedPipeline)


@pytest.fixture
def key_files(tmp_path):
    parser_args = type("Args", (), {"out": tmp_path / "keys", "name": "server", "force": False})
    assert keys_command.run(parser_args) == 0
    assert (tmp_path / "keys" / "server.key_secret").stat().st_mode & 0o077 == 0
    assert keys_command.run(parser_args) == 1  # never overwrites keys silently
    return tmp_path / "keys" / "server.key", tmp_path / "keys" / "server.key_secret"


def test_only_a_client_with_the_right_server_key_is_served(tmp_path, key_files):
    public_file, secret_file = key_files
    keys = load_server_keys(secret_file)
    assert load_server_public_key(public_file) == keys.public
    with running_backend(tmp_path / "store", curve_keys=keys) as server:
        with BackendClient(server.endpoint, server_public_key=str(public_file), timeout_s=5) as good:
            good.connect()
            job = good.submit(JobSpec("encrypted"))
            assert len(good.wait(job, timeout_s=30)) == 5
        wrong = load_server_keys(secret_file).public[:-5] + b"abcde"
        for key in (wrong, None):
            t0 = time.monotonic()
            with BackendClient(
                server.endpoint, server_public_key=key, dead_after_s=1.5, heartbeat_s=0.3
            ) as bad:
                with pytest.raises(BackendUnreachable):
                    bad.connect()
                    bad.submit(JobSpec("should not run"))
            assert time.monotonic() - t0 < 6
        assert [j.prompt for j in server.manager.list()] == ["encrypted"]


def test_keys_command_line_writes_a_pair(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dreampolish.backend.cli", "keys", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    public = load_server_public_key(tmp_path / "server.key")
    assert public.decode() in proc.stdout and len(public) == 40


def test_serve_reports_an_address_in_use(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            backend_command(tmp_path, "--bind", f"tcp://127.0.0.1:{port}"),
            env=repo_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2 and "cannot serve on" in proc.stderr and "Traceback" not in proc.stderr
