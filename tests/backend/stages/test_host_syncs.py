"""No host sync in a steady-state optimisation step (issue 28).

A whole generate job of the tiny preset runs through the real pipeline under HostSyncCounter
(backend/host_syncs.py), with losses reported every third step: every step that neither reports nor comes
first must make the host wait for the device zero times. Syncs inside the PyTorch rasteriser (nvdiffrast's
stand-in on the CPU) are counted apart and not held against the step.
"""

from __future__ import annotations

import math

import pytest
import torch
from dreampolish.backend.host_syncs import CPU_ONLY_FILES, HostSyncCounter, StepSyncRecorder
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.backend.pipeline.previews import StageProgress
from dreampolish.backend.render import volume
from dreampolish.backend.stages import texture
from dreampolish.protocol.job import JobSpec

from tests.support.recording import RecordingContext

STAGES = ("nerf", "neus", "dmtet", "polish", "texture")
STEPS, REPORT_EVERY = 6, 3


@pytest.fixture(scope="module")
def counted_job(tiny_models, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("syncs")
    ctx = RecordingContext(work)
    counter = HostSyncCounter(keep_stacks=True, excuse=CPU_ONLY_FILES)
    recorder = StepSyncRecorder(counter, work, inner=ctx)
    options = {f"{s}.steps": STEPS for s in STAGES}
    options.update({"report_every": REPORT_EVERY, "preview_every": 0})
    gathers: dict[str, int] = {"volume": 0, "texture": 0}

    def spy(where, real):
        def gather(keep, size):
            gathers[where] += 1
            return real(keep, size)
        return gather

    with pytest.MonkeyPatch.context() as mp, counter:
        for module in (volume, texture):
            mp.setattr(module, "gather_static", spy(module.__name__.rsplit(".")[-1], module.gather_static))
        DreamPolishPipeline().run(JobSpec(prompt="a red cone", preset="tiny", seed=2, options=options), recorder)
    ctx.gathers = gathers
    return recorder, ctx


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_a_steady_state_step_never_waits_for_the_device(counted_job, stage):
    recorder, _ = counted_job
    steady = recorder.steady_state(stage)
    assert len(steady) >= 2, [s.step for s in recorder.steps[stage]]
    counts = {s.step: s.count for s in steady}
    where = "\n".join(f"{n:4d} {k}" for k, n in recorder.stacks[stage].most_common(20))
    assert all(n == 0 for n in counts.values()), f"{stage}: syncs per steady-state step {counts}\n{where}"


@pytest.mark.slow
def test_the_fields_ran_on_the_occupied_samples_and_covered_pixels_only(counted_job):
    # without a host sync, and without evaluating the empty space: the volume renders and the texture's
    # shading gathered what they evaluate into fixed capacities (backend/capacity.py)
    _, ctx = counted_job
    assert ctx.gathers["volume"] > 0 and ctx.gathers["texture"] > 0, ctx.gathers


@pytest.mark.slow
def test_losses_still_reach_the_job_at_reporting_steps(counted_job):
    _, ctx = counted_job
    for stage in STAGES:
        events = [e for e in ctx.progress_events if e[0] == stage]
        assert [e[1] for e in events] == [1, 3, 6], stage
        assert all(e[2] == STEPS for e in events), stage
        losses = events[-1][3]
        assert losses and all(isinstance(v, float) and math.isfinite(v) for v in losses.values()), stage


# -- the instrument itself: each kind of sync is seen ----------------------------------------------------


@pytest.mark.parametrize("kind, op", [
    ("item", lambda x: x.sum().item()),
    ("float", lambda x: float(x.sum())),
    ("bool", lambda x: bool(x.sum() > 0)),
    ("mask index", lambda x: x[x > 0.5]),
    ("mask assign", lambda x: x.clone().__setitem__(x > 0.5, 0.0)),
    ("nonzero", lambda x: torch.nonzero(x)),
    ("unique", lambda x: torch.unique(x)),
    ("cpu", lambda x: x.cpu()),
    ("tolist", lambda x: x.tolist()),
    ("numpy", lambda x: x.numpy()),
    ("linalg.inv", lambda x: torch.linalg.inv(torch.eye(3) + x[:9].reshape(3, 3) * 0.1)),
])
def test_the_counter_sees_every_kind_of_sync(kind, op):
    x = torch.rand(16)
    with HostSyncCounter() as counter:
        op(x)
    assert counter.total >= 1, kind


def test_the_counter_ignores_work_that_stays_on_the_device():
    x = torch.rand(16, requires_grad=True)
    with HostSyncCounter() as counter:
        m = (x > 0.5).float()
        y = torch.where(m > 0, x, 0.0).sum() / m.sum().clamp_min(1)
        y.backward()
        torch.nonzero_static(x > 0.5, size=16)
    assert counter.total == 0, dict(counter.by_op)


def test_a_report_waits_for_nothing_between_its_steps(tmp_path):
    ctx = RecordingContext(tmp_path)
    reporter = StageProgress(ctx, "nerf", every=0, cameras=[], report_every=4)
    per_step = {}
    with HostSyncCounter() as counter:
        for step in range(1, 10):
            reporter.progress(step, 9, {"loss": torch.tensor(float(step)), "lambda": 0.5})
            per_step[step] = sum(counter.take().values())
    assert [e[1] for e in ctx.progress_events] == [1, 4, 8, 9]
    assert all(per_step[s] == 0 for s in (2, 3, 5, 6, 7)), per_step
    assert ctx.progress_events[1][3] == {"loss": 4.0, "lambda": 0.5}
