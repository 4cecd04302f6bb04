"""In a real run (diffusion priors, here the tiny ones) the reference view has an estimated depth, so the
NeRF and NeuS stages fit it with the relative-depth loss (DreamCraft3D: lambda_depth_rel 0.05)."""

from __future__ import annotations

import pytest
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.protocol.job import JobSpec

from tests.support.recording import RecordingContext

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_models")]


def test_nerf_and_neus_fit_the_estimated_reference_depth(tmp_path):
    ctx = RecordingContext(tmp_path)
    spec = JobSpec(prompt="a ceramic teapot", preset="tiny", seed=1, stages=["reference", "nerf", "neus"],
                   options={"nerf.steps": 4, "neus.steps": 4})
    DreamPolishPipeline().run(spec, ctx)
    for stage in ("nerf", "neus"):
        losses = [e[3] for e in ctx.progress_events if e[0] == stage]
        assert losses and all("ref_depth" in terms for terms in losses), stage
        assert all(0.0 <= terms["ref_depth"] <= 2.0 for terms in losses), stage
        assert not any("ref_normal" in terms for terms in losses), stage  # lambda_normal 0 by default


def test_an_image_job_without_a_prompt_runs_every_stage_with_an_estimated_depth(tmp_path):
    import numpy as np
    from dreampolish.backend.checkpoints import CheckpointStore
    from dreampolish.protocol.image import ReferenceImage

    picture = np.zeros((48, 64, 4), np.uint8)
    picture[8:40, 20:44] = (180, 120, 40, 255)  # an opaque block on a transparent ground
    ctx = RecordingContext(tmp_path)
    spec = JobSpec(prompt="", preset="tiny", seed=2, image=ReferenceImage(array=picture))
    outcome = DreamPolishPipeline().run(spec, ctx)
    assert ctx.result_stages == ["nerf", "neus", "dmtet", "polish", "texture", "export"]
    assert outcome.result_files["glb"].exists()
    reference = CheckpointStore(ctx.work_dir).load("reference", "cpu")
    inside = reference["mask"][..., 0] > 0.5
    assert reference["depth"] is not None and float(reference["depth"][inside].max()) == 1.0
    colour = reference["rgb"][inside].mean(0)
    assert np.allclose(colour.numpy(), np.array([180, 120, 40]) / 255, atol=0.03)
