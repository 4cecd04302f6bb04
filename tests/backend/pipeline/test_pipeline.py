"""The DreamPolish pipeline end to end with the tiny preset (tiny diffusion models, CPU)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import trimesh
from dreampolish.backend.bake import decode_png
from dreampolish.backend.pipeline import DreamPolishPipeline, stage_seed
from dreampolish.backend.presets import get_preset
from dreampolish.protocol.job import JobSpec

from tests.support.recording import RecordingContext

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prompt_job(request, tmp_path_factory):
    """One full job from a prompt, shared by the tests below."""
    request.getfixturevalue("tiny_models")
    ctx = RecordingContext(tmp_path_factory.mktemp("prompt-job"))
    pipeline = DreamPolishPipeline()
    outcome = pipeline.run(JobSpec(prompt="a ceramic teapot", preset="tiny", seed=3), ctx)
    return pipeline, ctx, outcome


def test_prompt_job_emits_a_mesh_after_every_stage(prompt_job):
    _, ctx, outcome = prompt_job
    assert outcome.paused_after is None
    assert ctx.result_stages == ["nerf", "neus", "dmtet", "polish", "texture", "export"]
    assert [i for _, i, _ in ctx.results] == [1, 2, 3, 4, 5, 6]
    for stage, _, mesh in ctx.results[:-1]:
        assert mesh.num_faces > 0, stage
        # Generated meshes live in the object frame (inside the radius-0.5 ball) placed by the transform.
        assert np.linalg.norm(mesh.vertices, axis=1).max() < 0.75, stage


def test_final_mesh_is_uv_mapped_and_textured_and_written_as_glb(prompt_job):
    _, ctx, outcome = prompt_job
    # The final mesh is the texture stage's; export marks itself done with an empty mesh.
    final = ctx.result("texture")
    assert ctx.result("export").num_vertices == 0
    assert final.uvs is not None and final.uvs.shape == (final.num_faces, 3, 2)
    assert 0.0 <= final.uvs.min() and final.uvs.max() <= 1.0
    base = decode_png(final.texture("base_color").png)
    assert base.shape == (128, 128, 3) and base.std() > 0.0
    glb = outcome.result_files["glb"]
    assert glb.exists() and glb.parent == ctx.work_dir
    (mesh,) = trimesh.load(str(glb)).geometry.values()
    assert len(mesh.faces) == final.num_faces


def test_models_used_once_per_job_are_not_kept_loaded_after_it(prompt_job):
    # The reference's depth model and the bake's intrinsics model run once per job: kept resident
    # they would add their weights to every later stage's peak, and to the next job's.
    pipeline, _, _ = prompt_job
    loaded = pipeline._priors_for(torch.device("cpu")).models(get_preset("tiny"))._loaded
    assert "text_to_image" in loaded and "intrinsics" not in loaded and "depth" not in loaded, sorted(loaded)


def test_progress_reports_losses_gradient_norms_and_previews(prompt_job):
    _, ctx, _ = prompt_job
    stages = {e[0] for e in ctx.progress_events}
    assert stages == {"reference", "nerf", "neus", "dmtet", "polish", "texture", "export"}
    for stage in ("nerf", "neus", "dmtet", "polish", "texture"):
        events = [e for e in ctx.progress_events if e[0] == stage]
        assert [e[1] for e in events] == list(range(1, events[0][2] + 1)), stage
        assert any(k.endswith("grad_norm") for e in events for k in e[3]), stage
        previews = [e[4] for e in events if e[4] is not None]
        assert previews and all(p.startswith(b"\x89PNG") for p in previews), stage
        # Every stage previews the object from the request's rig at the preset's preview size (tiny: 48²),
        # not its own training renders.
        assert all(decode_png(p).shape[:2] == (48, 48) for p in previews), stage
    reference = [e for e in ctx.progress_events if e[0] == "reference"]
    assert reference[-1][4].startswith(b"\x89PNG")


def test_same_request_and_seed_reproduce_the_stage(prompt_job, tmp_path):
    pipeline, ctx, _ = prompt_job
    again = RecordingContext(tmp_path)
    pipeline.run(JobSpec(prompt="a ceramic teapot", preset="tiny", seed=3, stages=["reference", "nerf"]), again)
    first, second = ctx.result("nerf"), again.result("nerf")
    # Same topology; positions agree to float rounding (CPU kernels may sum in a different order).
    np.testing.assert_array_equal(first.faces, second.faces)
    np.testing.assert_allclose(first.vertices, second.vertices, atol=1e-5, rtol=0)


def test_stage_seeds_are_stable_and_distinct():
    assert stage_seed(3, "nerf") == stage_seed(3, "nerf")
    assert len({stage_seed(s, st) for s in range(3) for st in ("nerf", "neus", "texture")}) == 9


def test_a_seed_gives_the_same_result_beside_another_job(prompt_job, tmp_path):
    # Several jobs share one process when a backend has several GPUs (one thread each): a job's
    # seed must reproduce whatever runs beside it (backend/rng.py).
    pipeline, _, _ = prompt_job

    def run(seed: int, name: str) -> np.ndarray:
        (tmp_path / name).mkdir()
        ctx = RecordingContext(tmp_path / name)
        spec = JobSpec(prompt="a ceramic teapot", preset="tiny", seed=seed, stages=["reference", "nerf"],
                       options={"nerf.steps": 6})
        pipeline.run(spec, ctx)
        return ctx.result("nerf").vertices

    alone = run(3, "alone")
    side_by_side: dict[str, np.ndarray] = {}
    threads = [threading.Thread(target=lambda s=s, n=n: side_by_side.__setitem__(n, run(s, n)))
               for s, n in ((3, "again"), (11, "other"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert set(side_by_side) == {"again", "other"}
    assert side_by_side["again"].shape == alone.shape
    np.testing.assert_allclose(side_by_side["again"], alone, atol=1e-5, rtol=0)


def test_tiny_job_returns_pbr_maps_on_the_wire_and_in_a_valid_glb(prompt_job):
    """Base colour (de-lit), tangent-space normal map and glTF metallic-roughness: on the wire, in the GLB,
    and the GLB passes the Khronos validator."""
    from dreampolish.protocol.gltf import glb_to_mesh

    from tests.support.gltf_validator import validate_glb

    _, ctx, outcome = prompt_job
    final = ctx.result("texture")
    assert sorted(t.role for t in final.textures) == ["base_color", "normal", "roughness_metallic"]
    assert final.texture("normal").array.shape == (128, 128, 3)
    rm = decode_png(final.texture("roughness_metallic").png)
    assert rm.shape == (128, 128, 3) and np.isfinite(rm).all()
    glb = outcome.result_files["glb"]
    validate_glb(glb)
    back = glb_to_mesh(glb.read_bytes())
    assert sorted(t.role for t in back.textures) == ["base_color", "normal", "roughness_metallic"]
