"""In a real run (diffusion priors, here the tiny ones) the reference view has an estimated depth, so the
NeRF and NeuS stages fit it with the relative-depth loss (DreamCraft3D: lambda_depth_rel 0.05)."""

from __future__ import annotations

import pytest
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.protocol.job import JobSpec

from tests.backend.pipeline_fixtures import RecordingContext, tiny_model_cache, tiny_models  # noqa: F401

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
