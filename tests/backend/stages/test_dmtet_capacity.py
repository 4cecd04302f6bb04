"""DMTet's step surface lives in buffers of a fixed capacity (issue 28): a surface that outgrows them is found
at the next reporting step, the capacity grows to fit it with one warning, and the stage's mesh is whole."""

from __future__ import annotations

import logging

import torch
from dreampolish.backend.geometry import marching
from dreampolish.backend.geometry.fields import FieldConfig
from dreampolish.backend.geometry.hashgrid import HashGridConfig
from dreampolish.backend.geometry.regularisers import real_faces
from dreampolish.backend.guidance.base import GuidanceInput, GuidanceOutput
from dreampolish.backend.render.cameras import ViewSampler
from dreampolish.backend.stages import dmtet
from dreampolish.backend.stages.base import ResolutionSchedule
from dreampolish.backend.stages.dmtet import DmtetConfig, run_dmtet

from tests.support.stages import Recorder, torus

GRID = HashGridConfig(n_levels=3, log2_hashmap_size=15, base_resolution=8, per_level_scale=1.5, start_levels=2)


class ReportsAt(Recorder):
    """A reporter that reads the losses back at `steps` (1-based) only, as StageProgress.reports says."""

    def __init__(self, steps: set[int]):
        super().__init__()
        self.steps = steps

    def reports(self, step: int, total: int) -> bool:
        return step in self.steps


def test_an_overflowing_surface_grows_its_capacity_at_the_next_reporting_step(monkeypatch, caplog):
    capacities: list[int] = []
    overflowed: list[bool] = []
    padded = marching.marching_tetrahedra_padded

    def recording(vertices, sdf, tets, capacity):
        s = padded(vertices, sdf, tets, capacity)
        capacities.append(capacity)
        overflowed.append(bool(s.overflow))
        return s

    # a first capacity of 2 crossing tets: the torus needs hundreds
    monkeypatch.setattr(dmtet, "needed_capacity", lambda *args: 1)
    monkeypatch.setattr(marching.SurfaceCapacity, "MINIMUM", 1)
    monkeypatch.setattr(dmtet, "marching_tetrahedra_padded", recording)
    cfg = DmtetConfig(steps=6, resolution=ResolutionSchedule(16), views=ViewSampler(), grid_resolution=12,
                      grid_bound=0.6, color=FieldConfig(grid=GRID, hidden_dim=16), color_init_steps=2,
                      rasterizer="torch")

    def guidance(inp: GuidanceInput) -> GuidanceOutput:
        return GuidanceOutput((inp.rgb * inp.opacity).mean())

    with caplog.at_level(logging.INFO, logger=marching.__name__):
        state = run_dmtet(cfg, torus(), guidance, None, ReportsAt({3, 6}), generator=torch.Generator().manual_seed(0),
                          device="cpu")
    # steps 1-3 ran at capacity 2 and lost faces; step 3 reported, so step 4 on fit the surface
    assert capacities[:3] == [2, 2, 2] and overflowed[:3] == [True, True, True]
    assert len(set(capacities[3:])) == 1 and capacities[3] > 2 and not any(overflowed[3:])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "outgrew" in warnings[0].getMessage()
    needed = marching.needed_capacity(state.deformed_vertices().detach(), state.sdf.detach(), state.grid.tets)
    assert state.capacity is not None and state.capacity.capacity >= needed
    # the stage's mesh is compacted exactly, whatever the capacity
    surface = state.surface()
    whole = padded(state.deformed_vertices(), state.sdf, state.grid.tets, needed)
    assert surface.num_faces == int(real_faces(whole.faces).sum()) > 0
    assert state.extract_mesh(normalize=False).num_faces > 0
