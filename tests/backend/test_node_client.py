"""A client in another language, written from protocol/README.md alone (tools/node-client: Node.js with
npm's zeromq and @msgpack/msgpack), against a real backend running the tiny preset: the spec is enough
to write a working client, and the backend answers it as the spec says."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from dreampolish.backend.pipeline import DreamPolishPipeline

from tests.support.pipelines import running_backend

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_models"), pytest.mark.timeout(120)]

CLIENT = Path(__file__).resolve().parents[2] / "tools" / "node-client"


def node_client() -> list[str]:
    """argv prefix that runs the client; fails (never skips) when Node.js or the client's packages are
    missing, since `make test` installs them."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is not installed: the protocol's second-language client needs `node` and `npm` "
                    "on the PATH (then `make node-client`)")
    if not (CLIENT / "node_modules" / "zeromq").is_dir() or not (CLIENT / "node_modules" / "@msgpack").is_dir():
        pytest.fail("the Node.js client's packages are not installed: run `make node-client` (npm ci in "
                    "tools/node-client)")
    return [node, str(CLIENT / "client.mjs")]


def test_a_client_written_from_the_spec_runs_a_tiny_job_attaches_cancels_and_is_told_what_is_malformed(tmp_path):
    argv = node_client()
    with running_backend(tmp_path / "store", pipeline=DreamPolishPipeline) as server:
        run = subprocess.run([*argv, server.endpoint], capture_output=True, text=True, timeout=90)
    assert run.stdout.strip(), run.stderr
    report = json.loads(run.stdout)
    assert report["problems"] == [] and run.returncode == 0, (report["problems"], run.stderr)

    assert report["welcome"]["v"].split(".")[0] == "1" and "tiny" in report["welcome"]["presets"]
    assert report["pong"] == "pong"
    job = report["job"]
    assert job["last"] == "done" and job["counts"]["progress"] > 0
    results = {r["stage"]: r for r in job["stage_results"]}
    assert list(results) == ["nerf", "neus", "dmtet", "polish", "texture", "export"]
    assert [r["index"] for r in job["stage_results"]] == [1, 2, 3, 4, 5, 6]
    for stage in ("nerf", "neus", "dmtet", "polish", "texture"):
        assert results[stage]["vertices"] > 0 and results[stage]["faces"] > 0, stage
    textures = {t["role"]: t for t in results["texture"]["textures"]}
    normal = textures["normal"]
    assert normal["dtype"] in ("<f2", "<f4") and normal["shape"][2] == 3
    # The spec's normal-map convention: unit vectors (to float16's precision) in tangent space, where a
    # surface's own normal is +z (in object space they would average near 0 over a closed object).
    assert normal["unit_length_error"] < 2e-3 and normal["mean_z"] > 0.5, normal
    assert textures["base_color"]["png"] and textures["roughness_metallic"]["png"]
    assert results["export"]["vertices"] == 0 and results["export"]["textures"] == []

    # The second job waited behind the first and was cancelled there.
    assert report["cancel"] == {"queue_position": 1, "reply": "accepted", "events": ["cancelled"]}
    attach = report["attach"]
    assert attach["reply"] == "accepted" and attach["first_seq"] == attach["last_seq"] + 1
    assert attach["last_seq"] + attach["count"] == job["seqs"]
    malformed = report["malformed"]
    assert malformed["type"] == "error" and malformed["code"] == "malformed_message"
    assert "mesh.vertices declares 48 bytes but its frame holds 36" in malformed["message"]
