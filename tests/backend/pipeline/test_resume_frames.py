"""An edited mesh sent with resume is vertices plus their object-to-world transform, as every mesh on the
wire is (protocol/README.md, mesh): the backend places it in the world and takes it into the job's frame.
The same edit sent in the job's frame with the job's transform, or in the world with an identity
transform, gives the same next stage."""

from __future__ import annotations

import shutil

import numpy as np
from dreampolish.backend.geometry.mesh import TriMesh, normalize_to_unit
from dreampolish.backend.pipeline import DreamPolishPipeline, OraclePriors
from dreampolish.backend.pipeline_api import ResumePoint
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import MeshPayload, object_to_world

from tests.support.recording import RecordingContext, box_payload

# Small enough for a few seconds on the CPU; the oracle needs no model weights.
FAST = {"dmtet.steps": 2, "dmtet.grid_resolution": 12, "polish.steps": 2, "polish.render_size": 32,
        "polish.view_pool": 4, "polish.batch_size": 1, "dmtet.color_init_steps": 5, "preview_every": 0}


def _pipeline() -> DreamPolishPipeline:
    target, _ = normalize_to_unit(TriMesh.from_payload(box_payload(), apply_transform=True))
    return DreamPolishPipeline(priors=OraclePriors(target))


def _polish_after(edit: MeshPayload, paused_dir, tmp_path, name: str) -> MeshPayload:
    work = tmp_path / name
    shutil.copytree(paused_dir, work)
    ctx = RecordingContext(work)
    spec = JobSpec(prompt="a box", preset="tiny", mode="geometry", input_mesh=box_payload(),
                   stages=["dmtet", "polish"], pause_after=["dmtet"], options=dict(FAST))
    _pipeline().run(spec, ctx, ResumePoint(edited_mesh=edit))
    return ctx.result("polish")


def test_an_edit_in_the_jobs_frame_and_the_same_edit_in_the_world_give_the_same_next_stage(tmp_path):
    spec = JobSpec(prompt="a box", preset="tiny", mode="geometry", input_mesh=box_payload(),
                   stages=["dmtet", "polish"], pause_after=["dmtet"], options=dict(FAST))
    paused = RecordingContext(tmp_path / "paused")
    (tmp_path / "paused").mkdir()
    assert _pipeline().run(spec, paused).paused_after == "dmtet"
    dmtet = paused.result("dmtet")
    job_transform = dmtet.transform  # a box at (2, 0, 1) in the world: its frame is placed there
    assert np.linalg.norm(job_transform[:3, 3] - [2.0, 0.0, 1.0]) < 0.05

    # The artist squashes the object along Z: the same edit, sent two ways.
    squashed = (dmtet.vertices * np.float32([1.0, 1.0, 0.6])).astype(np.float32)
    in_job_frame = MeshPayload(squashed, dmtet.faces.copy(), transform=job_transform.copy())
    in_world = MeshPayload(object_to_world(squashed, job_transform).astype(np.float32), dmtet.faces.copy())

    a = _polish_after(in_job_frame, tmp_path / "paused", tmp_path, "a")
    b = _polish_after(in_world, tmp_path / "paused", tmp_path, "b")
    np.testing.assert_array_equal(a.faces, b.faces)
    np.testing.assert_allclose(a.vertices, b.vertices, atol=1e-4)
    # Both start from the edit, in the job's frame, and come back placed where the box is.
    assert np.abs(a.vertices - squashed).max() < 0.05
    np.testing.assert_allclose(b.transform, job_transform)
