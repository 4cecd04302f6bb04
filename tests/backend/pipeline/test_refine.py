"""Refine a mesh (geometry and texture only), stage gates with an edited mesh, and resuming after a
backend restart, with the tiny preset (tiny diffusion models, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.backend.pipeline_api import ResumePoint
from dreampolish.protocol.job import JobSpec

from tests.support.recording import BackendStopped, RecordingContext, box_payload

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_models")]


def test_texture_only_keeps_the_input_topology_and_uvs_exactly(tmp_path):
    source = box_payload(with_uvs=True)
    ctx = RecordingContext(tmp_path)
    outcome = DreamPolishPipeline().run(
        JobSpec(prompt="a wooden crate", preset="tiny", mode="texture", input_mesh=source), ctx)
    assert ctx.result_stages == ["texture", "export"]
    final = ctx.result("texture")  # export sends an empty marker
    np.testing.assert_array_equal(final.vertices, source.vertices)
    np.testing.assert_array_equal(final.faces, source.faces)
    np.testing.assert_array_equal(final.uvs, source.uvs)
    np.testing.assert_array_equal(final.transform, source.transform)
    assert final.texture("base_color") is not None
    assert outcome.result_files["glb"].exists()


def test_texture_only_unwraps_a_mesh_without_uvs(tmp_path):
    source = box_payload(with_uvs=False)
    ctx = RecordingContext(tmp_path)
    DreamPolishPipeline().run(JobSpec(prompt="a crate", preset="tiny", mode="texture", input_mesh=source), ctx)
    final = ctx.result("texture")  # export sends an empty marker
    np.testing.assert_array_equal(final.faces, source.faces)
    assert final.uvs is not None and final.uvs.shape == (source.num_faces, 3, 2)


def test_geometry_refine_pauses_resumes_from_the_edit_and_survives_a_restart(tmp_path):
    source = box_payload()
    spec = JobSpec(prompt="a box", preset="tiny", mode="geometry", input_mesh=source, pause_after=["dmtet"])
    pipeline = DreamPolishPipeline()

    # 1. The refine runs DMTet from the input mesh and pauses at the gate.
    first = RecordingContext(tmp_path)
    outcome = pipeline.run(spec, first)
    assert outcome.paused_after == "dmtet" and first.result_stages == ["dmtet"]
    dmtet = first.result("dmtet")
    # The input (a box at (2, 0, 1) in the world) comes back in the object frame with its placement.
    centre = dmtet.transform[:3, 3]
    np.testing.assert_allclose(centre, [2.0, 0.0, 1.0], atol=0.05)
    assert np.linalg.norm(dmtet.vertices, axis=1).max() < 0.6

    # 2. The artist edits the mesh (squashes it along Z) and resumes; the backend stops during texture.
    edited = dmtet
    edited.vertices = (dmtet.vertices * np.float32([1.0, 1.0, 0.5])).astype(np.float32)
    # Its transform stays the job's, which the dmtet result carried: as the add-on sends it (the object's
    # mesh data, in the job's frame).
    second = RecordingContext(tmp_path, stop_in="texture")
    with pytest.raises(BackendStopped):
        pipeline.run(spec, second, ResumePoint(edited_mesh=edited))
    assert second.result_stages == ["polish"]
    polished = second.result("polish")
    # Polish starts from the edited mesh: same topology, vertices moved only slightly.
    np.testing.assert_array_equal(polished.faces, edited.faces)
    assert np.abs(polished.vertices - edited.vertices).max() < 0.05

    # 3. After a restart the job resumes after its last finished stage (polish), in a new process's pipeline.
    third = RecordingContext(tmp_path)
    outcome = DreamPolishPipeline().run(spec, third, ResumePoint())
    assert outcome.paused_after is None
    assert third.result_stages == ["texture", "export"]
    assert {e[0] for e in third.progress_events} == {"texture", "export"}
    final = third.result("texture")  # export sends an empty marker
    np.testing.assert_array_equal(final.faces, edited.faces)
    assert final.uvs is not None and final.texture("base_color") is not None
    assert outcome.result_files["glb"].exists()


def test_polish_improves_normal_consistency_over_dmtet_with_the_oracle(tmp_path):
    import torch
    import trimesh
    from dreampolish.backend.geometry.mesh import TriMesh, normalize_to_unit
    from dreampolish.backend.geometry.metrics import normal_consistency
    from dreampolish.backend.pipeline import OraclePriors
    from dreampolish.protocol.scene import MeshPayload

    # A target with sharp edges; the coarse DMTet grid of the tiny preset rounds them off.
    box = trimesh.creation.box((1.0, 0.8, 0.5))
    for _ in range(3):
        box = box.subdivide()
    source = MeshPayload(vertices=np.asarray(box.vertices, np.float32), faces=np.asarray(box.faces, np.uint32))
    target, _ = normalize_to_unit(TriMesh.from_payload(source))  # the job's object frame
    spec = JobSpec(prompt="a box", preset="tiny", mode="geometry", input_mesh=source, stages=["dmtet", "polish"],
                   options={"dmtet.grid_resolution": 24, "polish.steps": 40, "polish.render_size": 64, "polish.view_pool": 16,
                            "polish.batch_size": 2, "polish.lr": 3e-3, "polish.consistency_weight": 0.3})
    ctx = RecordingContext(tmp_path)
    DreamPolishPipeline(priors=OraclePriors(target)).run(spec, ctx)

    def nc(stage: str) -> float:
        mesh = ctx.result(stage)
        return normal_consistency(TriMesh(torch.as_tensor(mesh.vertices), torch.as_tensor(mesh.faces.astype(np.int64))),
                                  target)

    before, after = nc("dmtet"), nc("polish")
    assert after > before + 0.005, (before, after)
