"""What DMTet shows its priors: the text prior gets normal-shaded renders on 3 of every 4 steps, Zero123
the colour render on every step (DreamCraft3D systems/dreamcraft3d.py, stage geometry: `comp_normal` to the
text guidance only, `comp_rgb` to guidance_3d)."""

from __future__ import annotations

import torch
from dreampolish.backend.geometry.fields import FieldConfig
from dreampolish.backend.geometry.hashgrid import HashGridConfig
from dreampolish.backend.guidance.base import GuidanceInput, GuidanceOutput
from dreampolish.backend.guidance.zero123 import ReferenceView, Zero123Guidance
from dreampolish.backend.render.cameras import ViewSampler
from dreampolish.backend.stages.base import Ramp, ReferenceWeights, ResolutionSchedule
from dreampolish.backend.stages.dmtet import DmtetConfig, run_dmtet

from tests.support.stages import Recorder, torus

GRID = HashGridConfig(n_levels=3, log2_hashmap_size=15, base_resolution=8, per_level_scale=1.5, start_levels=2,
                      unlock_until=0.5)


class Spy:
    def __init__(self):
        self.inputs: list[GuidanceInput] = []

    def __call__(self, inp: GuidanceInput) -> GuidanceOutput:
        self.inputs.append(inp)
        return GuidanceOutput((inp.colour_render() * inp.opacity).mean())


def test_dmtet_gives_the_colour_render_alongside_every_normal_shaded_one():
    cfg = DmtetConfig(steps=4, resolution=ResolutionSchedule(16), views=ViewSampler(), grid_resolution=12,
                      grid_bound=0.6, color=FieldConfig(grid=GRID, hidden_dim=16),
                      reference=ReferenceWeights(Ramp(1.0), Ramp(1.0), Ramp(0.0), 16), color_init_steps=2,
                      rasterizer="torch")
    spy = Spy()
    run_dmtet(cfg, torus(), spy, None, Recorder(), generator=torch.Generator().manual_seed(0), device="cpu")
    assert [i.shading for i in spy.inputs] == ["normal", "normal", "normal", "albedo"]
    for inp in spy.inputs[:3]:
        colour = inp.colour_render()
        assert colour is not inp.rgb and colour.shape == inp.rgb.shape
        assert not torch.allclose(colour, inp.rgb)  # albedo (0.8, 0.3, 0.2 torus), not (n+1)/2
    assert spy.inputs[3].colour_render() is spy.inputs[3].rgb


def test_zero123_reads_the_colour_render_not_the_shaded_normals(tiny_priors, orbit):
    size = 32
    mask = torch.ones(size, size, 1)
    guidance = Zero123Guidance(tiny_priors.zero123, torch.full((size, size, 3), 0.5), mask, ReferenceView(0.0, 0.0, 3.8))
    shaded = torch.rand(2, size, size, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    colour = torch.rand(2, size, size, 3, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    inp = GuidanceInput(rgb=shaded, opacity=torch.ones(2, size, size, 1), cameras=orbit([0.0, 30.0], [60.0, 200.0]),
                        shading="normal", colour=colour)
    guidance(inp).loss.backward()
    assert shaded.grad is None
    assert colour.grad is not None and colour.grad.abs().sum() > 0
