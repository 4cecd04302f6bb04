"""Ray clusters for tests, each isolated from every other Ray on the machine.

Ray 2.60 authenticates with a token it keeps per user (~/.ray/auth_token, written the first time any local
cluster starts) and finds "the" local cluster through files in its temp folder (/tmp/ray). A test cluster
that used either would write into the user's home, could join a cluster someone else started, and would
make a later test depend on what ran before it. So every test cluster gets its own token (RAY_AUTH_TOKEN,
or a home folder of its own for `ray start`, which reads ~/.ray/auth_token) and its own temp folder, and
is stopped by the PID of the process that started it (never `ray stop`, which ends every Ray process
on the machine).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

RAY_ENV = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_TMPDIR")
"""What tells a Ray process which cluster and which token: a test cluster sets its own."""
STOP_TIMEOUT_S = 90.0
"""`ray start --block` drains for up to 30 s on SIGTERM, then stops its node's processes."""


def short_temp_dir(prefix: str = "ray-test-") -> Path:
    """A temp folder with a short path: Ray puts its sockets under it (a UNIX socket path has at most
    107 bytes, which pytest's tmp_path can exceed)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def without_ray_settings(env: dict[str, str]) -> dict[str, str]:
    """env with none of the variables that point a Ray process at a cluster or a token."""
    return {k: v for k, v in env.items() if k not in RAY_ENV}


def own_cluster_env(env: dict[str, str], temp_dir: Path) -> dict[str, str]:
    """env for a process that starts a local cluster of its own (ray.init() with no address): a fresh
    token that is nobody else's, and its own temp folder."""
    return without_ray_settings(env) | {"RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_TMPDIR": str(temp_dir)}


@contextlib.contextmanager
def own_token_in_this_process() -> Iterator[str]:
    """This process's next ray.init() starts a cluster with a fresh token of its own, never reading or
    writing ~/.ray/auth_token; every Ray variable is as before afterwards (ray.init sets RAY_AUTH_MODE
    in os.environ, which would otherwise reach every later subprocess)."""
    from ray._raylet import AuthenticationTokenLoader

    saved = {k: os.environ.get(k) for k in RAY_ENV}
    for k in RAY_ENV:
        os.environ.pop(k, None)
    token = os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    AuthenticationTokenLoader.instance().reset_cache()
    try:
        yield token
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        AuthenticationTokenLoader.instance().reset_cache()


def stop_by_pid(proc: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop one process this test started (a `ray start --block`, a backend), by its PID."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)


def remove_temp_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
