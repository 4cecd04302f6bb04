"""Every ramp and anneal is a fraction of its stage, so that every preset (draft's fewer steps included) runs
each schedule to its end value by the stage's last step. With schedules in absolute steps, draft's NeuS
sharpness ended at 200 of 800 and its texture t_max at 0.79 of 0.5."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import trimesh
from dreampolish.backend.geometry.hashgrid import HashGridConfig
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.guidance.oracle import OracleGuidance, oracle_reference
from dreampolish.backend.guidance.score_distillation import TimestepSchedule
from dreampolish.backend.presets import get_preset, preset_names
from dreampolish.backend.schedules import Ramp, stage_progress
from dreampolish.backend.stages.base import LoggingReporter, ResolutionSchedule
from dreampolish.backend.stages.neus import NeusConfig, run_neus

from tests.support.stages import FIELD, REF, RENDER, VIEWS

ICOSPHERE = trimesh.creation.icosphere(2, radius=0.4)

STAGES = ("nerf", "neus", "dmtet", "polish", "texture")
UNSCHEDULED = {"polish"}
"""Stages whose settings hold no schedule today (a schedule added there is checked as well)."""
GEOMETRY = ("nerf", "neus", "dmtet")


def schedules(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(dotted path, schedule) for every schedule object under a config."""
    if isinstance(node, (Ramp, ResolutionSchedule, TimestepSchedule, HashGridConfig)):
        yield path, node
        return
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            yield from schedules(getattr(node, f.name), f"{path}.{f.name}")


def value_at(schedule: Any, progress: float) -> Any:
    if isinstance(schedule, HashGridConfig):
        return schedule.levels_at(progress)
    if isinstance(schedule, TimestepSchedule):
        return schedule.range_at(progress)
    return schedule.at(progress)


def end_value(schedule: Any) -> Any:
    return schedule.n_levels if isinstance(schedule, HashGridConfig) else schedule.final()


def stage_schedules(preset, stage: str) -> list[tuple[str, Any]]:
    """The stage's own schedules and, for a geometry stage, its priors' (guidance.for_stage)."""
    found = list(schedules(getattr(preset, stage), stage))
    if stage in GEOMETRY:
        found += list(schedules(preset.guidance.for_stage(stage), f"guidance.for_stage({stage!r})"))
    return found


@pytest.mark.parametrize("name", preset_names())
@pytest.mark.parametrize("stage", STAGES)
def test_every_schedule_of_every_preset_reaches_its_end_by_the_stage_s_last_step(name, stage):
    preset = get_preset(name)
    steps = getattr(preset, stage).steps
    found = stage_schedules(preset, stage)
    assert found or stage in UNSCHEDULED, f"{name}.{stage} has no schedule to check"
    last = stage_progress(steps - 1, steps)
    for path, schedule in found:
        assert value_at(schedule, last) == pytest.approx(end_value(schedule)), f"{name}: {path} ({steps} steps)"


def test_the_reported_figures_of_the_draft_preset_end_where_they_should():
    draft = get_preset("draft")
    last = stage_progress(draft.neus.steps - 1, draft.neus.steps)
    assert draft.neus.sharpness.at(last) == 800.0
    assert draft.texture.guidance.timesteps.range_at(stage_progress(999, 1000))[1] == pytest.approx(0.5)
    assert draft.nerf.density.grid.levels_at(stage_progress(1199, 1200)) == 16
    # and a schedule still moves through the stage rather than jumping to its end
    assert 50.0 < draft.neus.sharpness.at(stage_progress(500, 1000)) < 800.0


def test_stage_progress_runs_from_zero_at_the_first_step_to_one_at_the_last():
    assert [stage_progress(s, 5) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert stage_progress(0, 1) == 0.0 and stage_progress(7, 5) == 1.0


def test_neus_reaches_its_final_sharpness_on_its_last_step():
    """The stage hands its schedules the fraction: a three-step NeuS ends at the ramp's end value."""
    target = TriMesh(torch.tensor(ICOSPHERE.vertices, dtype=torch.float32), torch.tensor(ICOSPHERE.faces))
    cam = VIEWS.reference(12, 12)
    cfg = NeusConfig(steps=3, resolution=ResolutionSchedule(12), views=VIEWS, sdf=FIELD, render=RENDER,
                     reference=REF, sharpness=Ramp(20.0, 60.0), occupancy_every=1, init_steps=5, init_batch=256,
                     init_resolution=16, mesh_resolution=16, eikonal_points=64)
    reporter = LoggingReporter("neus")
    run_neus(cfg, target, OracleGuidance(target), oracle_reference(target, cam), reporter,
             generator=torch.Generator().manual_seed(0), device="cpu")
    assert reporter.last["sharpness"] == 60.0
