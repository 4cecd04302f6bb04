"""README's cluster recipe ("Running on a cluster"), command for command, on loopback: `ray start --head`,
`ray start --address` on a GPU node (a second Ray node on this machine, with a home folder of its own as
a second machine would have), then `dreampolish-backend serve --executor ray --ray-address`, and a job
through it. The head's machine is one where Ray ran before: it has a token in ~/.ray/auth_token, which
made serve's connection fail with InvalidAuthToken (issue 25).

Each cluster here has its own homes (so its own token) and temp folder (tests/support/ray_clusters.py);
GPUs are declared (`--num-gpus=1`) on a machine that has none, which is enough for a ScriptedPipeline job.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dreampolish.protocol import messages as m
from dreampolish.protocol.job import JobSpec

from tests.support.pipelines import connected_client, free_tcp_endpoint, repo_env, wait_until_serving
from tests.support.ports import free_tcp_port
from tests.support.ray_clusters import remove_temp_dir, short_temp_dir, stop_by_pid, without_ray_settings

pytest.importorskip("ray", reason="the ray extra is not installed (make venv installs it)")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

RAY = str(Path(sys.executable).with_name("ray"))
STARTED = "Ray runtime started"


def ray_cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([RAY, *args], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for_node(proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    """`ray start --block` prints STARTED once its node runs, and never exits by itself."""
    deadline = time.monotonic() + timeout_s
    while STARTED not in log.read_text() and proc.poll() is None:
        assert time.monotonic() < deadline, f"no Ray node after {timeout_s} s: {log.read_text()[-3000:]}"
        time.sleep(0.2)
    assert proc.poll() is None, log.read_text()[-3000:]


@pytest.mark.parametrize("gpu_node", [False, True], ids=["one machine", "head and a GPU node"])
def test_the_readme_cluster_recipe_serves_jobs(tmp_path, gpu_node):
    temp = short_temp_dir()
    homes = {name: tmp_path / name for name in ("head", "node")}
    base = without_ray_settings(repo_env())
    # --block keeps each node's processes under the `ray start` we stop by PID; --temp-dir keeps this
    # cluster apart from any other on the machine. The rest is README's commands.
    head_env = base | {"HOME": str(homes["head"])}
    # A machine where Ray ran before: a local ray.init() left a token in ~/.ray/auth_token.
    (homes["head"] / ".ray").mkdir(parents=True)
    (homes["head"] / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    port, procs = free_tcp_port(), []
    try:
        done = subprocess.run([RAY, "get-auth-token", "--generate"], env=head_env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        head_gpus = "0" if gpu_node else "1"
        head_log = tmp_path / "head.log"
        procs.append(ray_cli(["start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                              f"--num-gpus={head_gpus}", f"--temp-dir={temp}"], head_env, head_log))
        wait_for_node(procs[-1], head_log)
        if gpu_node:
            # The node's own home, with the head's ~/.ray/auth_token copied to it (README).
            (homes["node"] / ".ray").mkdir(parents=True)
            shutil.copy(homes["head"] / ".ray" / "auth_token", homes["node"] / ".ray" / "auth_token")
            node_env = base | {"HOME": str(homes["node"]), "RAY_AUTH_MODE": "token"}
            node_log = tmp_path / "node.log"
            procs.append(ray_cli(["start", "--block", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                                  "--num-gpus=1"], node_env, node_log))
            wait_for_node(procs[-1], node_log)
        endpoint = free_tcp_endpoint()
        serve = subprocess.Popen(
            [sys.executable, "-m", "dreampolish.backend.cli", "serve", "--executor", "ray",
             "--ray-address", f"127.0.0.1:{port}", "--store", str(tmp_path / "jobs"),
             "--pipeline", "tests.support.pipelines:ScriptedPipeline", "--bind", endpoint],
            env=head_env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "serve.log").open("w"))
        procs.append(serve)
        assert wait_until_serving(endpoint, serve, timeout_s=180), (tmp_path / "serve.log").read_text()[-3000:]
        client = connected_client(endpoint)
        try:
            assert [d.rsplit("/", 1)[-1] for d in client.welcome.devices] == ["gpu0"]  # one worker per GPU
            job = client.submit(JobSpec("a vase", preset="tiny", options={"test.steps": 2}))
            end = list(client.events(job, timeout_s=120))[-1]
        finally:
            client.close()
        assert isinstance(end, m.Done), end
    finally:
        for proc in reversed(procs):
            stop_by_pid(proc)
        remove_temp_dir(temp)
