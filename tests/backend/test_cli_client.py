"""The `dreampolish` command line against a real backend on loopback."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import numpy as np
import pytest
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.protocol.cli import main
from dreampolish.protocol.gltf import glb_to_mesh, mesh_to_glb

from tests.support.gltf_validator import validate_glb
from tests.support.pipelines import MODE_STAGES, free_tcp_endpoint, octahedron, running_backend

pytestmark = pytest.mark.timeout(60)


def test_generate_writes_every_stage_and_the_final_mesh(tmp_path, capsys):
    with running_backend(tmp_path / "store") as server:
        out = tmp_path / "out" / "teapot.glb"
        assert (
            main(["generate", "a teapot", "--backend", server.endpoint, "--out", str(out), "--seed", "3"])
            == 0
        )
        for stage in MODE_STAGES["generate"]:
            assert glb_to_mesh((tmp_path / "out" / f"teapot.{stage}.glb").read_bytes()).num_faces == 8
        final = glb_to_mesh(out.read_bytes())
        assert final.texture("base_color") is not None and final.uvs is not None
        printed = capsys.readouterr().out
        assert "done:" in printed and "texture: 6 vertices, 8 faces" in printed

        assert main(["jobs", "--backend", server.endpoint]) == 0
        [job_line] = [line for line in capsys.readouterr().out.splitlines() if "a teapot" in line]
        job_id = job_line.split()[0]
        assert "done" in job_line

        assert main(["fetch", job_id, "--backend", server.endpoint, "--out", str(tmp_path / "fetched")]) == 0
        names = sorted(p.name for p in (tmp_path / "fetched").iterdir())
        assert names == sorted(f"{i}_{s}.glb" for i, s in enumerate(MODE_STAGES["generate"]))


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_models")
def test_the_glb_of_a_tiny_job_carries_its_normal_map_and_passes_the_khronos_validator(tmp_path):
    # The backend sends the normal map as a float array; the .glb the artist gets holds it as glTF's
    # normal texture (tangent space, 0.5 n + 0.5), with base colour and metallic-roughness.
    with running_backend(tmp_path / "store", pipeline=DreamPolishPipeline) as server:
        out = tmp_path / "teapot.glb"
        argv = ["generate", "a ceramic teapot", "--backend", server.endpoint, "--out", str(out)]
        assert main([*argv, "--preset", "tiny", "--seed", "3"]) == 0
    report = validate_glb(out)
    assert report["issues"]["numWarnings"] == 0, report["issues"]["messages"]
    final = glb_to_mesh(out.read_bytes())
    assert sorted(t.role for t in final.textures) == ["base_color", "normal", "roughness_metallic"]
    from PIL import Image  # an independent PNG decoder (it reads 16-bit channels as their top 8 bits)

    with Image.open(io.BytesIO(final.texture("normal").png)) as image:
        n = np.asarray(image.convert("RGB"), np.float32) / 255.0 * 2.0 - 1.0
    assert n.shape == (128, 128, 3)
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=0.02)  # unit vectors, 0.5 n + 0.5
    assert n[..., 2].mean() > 0.5  # tangent space: the surface's own normal is +z (blue)


def test_refine_a_mesh_file_in_texture_mode(tmp_path, capsys):
    source = tmp_path / "rough.glb"
    source.write_bytes(mesh_to_glb(octahedron(3.0)))
    with running_backend(tmp_path / "store") as server:
        out = tmp_path / "refined.glb"
        argv = ["generate", "a gem", "--backend", server.endpoint, "--out", str(out), "--mesh", str(source)]
        assert main([*argv, "--mode", "texture"]) == 0
        assert [s.spec.mode for s in server.manager.jobs.values()] == ["texture"]
        assert glb_to_mesh(out.read_bytes()).num_faces == 8


def test_failures_and_bad_requests_exit_non_zero_with_the_message(tmp_path, capsys):
    with running_backend(tmp_path / "store") as server:
        out = str(tmp_path / "x.glb")
        code = main(
            ["generate", "x", "--backend", server.endpoint, "--out", out, "--option", "test.fail_stage=nerf"]
        )
        assert code == 1 and "scripted failure in nerf (internal_error)" in capsys.readouterr().err
        assert main(["cancel", "no-such-job", "--backend", server.endpoint]) == 2
        assert "no job 'no-such-job'" in capsys.readouterr().err
        assert main(["generate", "x", "--backend", server.endpoint, "--out", out, "--preset", "huge"]) == 2
        assert "preset 'huge'" in capsys.readouterr().err


def test_unreachable_backend_is_reported_within_seconds(capsys):
    t0 = time.monotonic()
    assert main(["jobs", "--backend", free_tcp_endpoint()]) == 2
    assert time.monotonic() - t0 < 8
    assert "has not answered" in capsys.readouterr().err


def test_console_script_help():
    proc = subprocess.run(
        [sys.executable, "-m", "dreampolish.protocol.cli", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "generate" in proc.stdout and "fetch" in proc.stdout
