"""Each geometry stage its own timestep schedule per prior, so that NeuS and DMTet refine a formed shape
instead of restarting NeRF's high-noise anneal (DreamCraft3D configs: coarse-nerf [0.7, 0.85] -> [0.2, 0.5];
coarse-neus [0.2, 0.5] for both priors; geometry text [0.02, 0.5], Zero123 [0.2, 0.5])."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from dreampolish.backend.guidance.base import ReferenceView
from dreampolish.backend.pipeline.priors import DiffusionPriors
from dreampolish.backend.presets import get_preset, preset_names
from dreampolish.backend.render.cameras import ViewSampler

EXPECTED = {  # stage -> prior -> (first-step range, last-step range)
    "nerf": {"text": ((0.7, 0.85), (0.2, 0.5)), "zero123": ((0.7, 0.85), (0.2, 0.5))},
    "neus": {"text": ((0.2, 0.5), (0.2, 0.5)), "zero123": ((0.2, 0.5), (0.2, 0.5))},
    "dmtet": {"text": ((0.02, 0.5), (0.02, 0.5)), "zero123": ((0.2, 0.5), (0.2, 0.5))},
}


@pytest.mark.parametrize("name", preset_names())
@pytest.mark.parametrize("stage", list(EXPECTED))
def test_every_preset_gives_each_geometry_stage_its_own_schedule(name, stage):
    preset = get_preset(name)
    g = preset.guidance.for_stage(stage)
    for prior, schedule in (("text", g.text.timesteps), ("zero123", g.zero123.timesteps)):
        first, last = EXPECTED[stage][prior]
        assert schedule.range_at(0.0) == pytest.approx(first), (stage, prior)
        assert schedule.range_at(1.0) == pytest.approx(last), (stage, prior)


def test_the_priors_the_pipeline_builds_use_the_stages_schedule(tiny_priors):
    preset = get_preset("tiny")
    priors = DiffusionPriors(torch.device("cpu"))
    priors._models[preset.model_set] = tiny_priors  # the tiny models in place of a download
    cam = ViewSampler().reference(32, 32)
    reference = ReferenceView(rgb=torch.rand(32, 32, 3), mask=torch.ones(32, 32, 1), camera=cam)
    spec = SimpleNamespace(prompt="a chair", negative_prompt="")
    frame = SimpleNamespace(reference_camera=cam)
    for stage, priors_expected in EXPECTED.items():
        combined = priors.geometry_guidance(stage, spec, preset, frame, reference, seed=0)
        got = {name: g.config.timesteps.range_at(0.0) for name, _, g in combined.parts}
        assert set(got) == {"text", "zero123"}
        for prior, (first, _) in priors_expected.items():
            assert got[prior] == pytest.approx(first), (stage, prior)
