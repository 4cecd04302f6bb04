"""Test pipelines for the store's fault tests: stage boundaries where a backend can be killed.

ContractPipeline follows the job contract of pipeline_api as the DreamPolish pipeline does once
its run loop saves first and reports second: at the end of a stage it saves the stage's checkpoint,
then reports the stage result; run again on the same work_dir it reports the result of every stage
it restored from its checkpoint (the store records each (stage, index) once, so nothing is sent
twice). OLD_ORDER=True reverses the two steps, as today's pipeline run loop does.

Each stage's mesh carries a per-run random offset: a stage that ran twice would show two different
meshes, as neus and dmtet do.

Option "test.crash" = "STAGE:POINT" kills this process with SIGKILL, once per job:
    between  after the first of the two steps of STAGE's end, before the second
    after    after both
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
from dreampolish.backend.pipeline_api import JobContext, ResumePoint, RunOutcome
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import MeshPayload

from tests.support.pipelines import OPTION_KEYS, ScriptedPipeline, octahedron


def _crash_here(ctx: JobContext, spec: JobSpec, stage: str, point: str) -> None:
    marker = ctx.work_dir / "crashed"
    if spec.options.get("test.crash") == f"{stage}:{point}" and not marker.exists():
        marker.write_text(f"{stage}:{point}")
        os.kill(os.getpid(), signal.SIGKILL)


class ContractPipeline(ScriptedPipeline):
    OLD_ORDER = False
    """True: report, then save (and restored stages are not reported again), as today's run loop."""

    def check(self, spec: JobSpec) -> None:
        crash = spec.options.get("test.crash")
        options = {k: v for k, v in spec.options.items() if k != "test.crash"}
        super().check(JobSpec(spec.prompt, preset=spec.preset, mode=spec.mode, options=options))
        if crash is not None and (
            not isinstance(crash, str) or crash.partition(":")[2] not in ("between", "after")
        ):
            raise ValidationError(
                f"test.crash must read STAGE:between|after, got {crash!r}; known: {OPTION_KEYS}"
            )

    def run(self, spec: JobSpec, ctx: JobContext, resume: ResumePoint | None = None) -> RunOutcome:
        steps = int(spec.options.get("test.steps", 2))
        checkpoint = ctx.work_dir / "checkpoint.json"
        done: dict[str, list[list[float]]] = (
            json.loads(checkpoint.read_text()) if resume is not None and checkpoint.exists() else {}
        )
        plan = self.stages(spec)
        for index, stage in enumerate(plan):
            if stage in done and not self.OLD_ORDER:
                ctx.stage_result(stage, index, self._mesh(done[stage]))  # restored: reported again
        offset = np.random.default_rng().random(3).astype(np.float32)
        for index, stage in enumerate(plan):
            if stage in done:
                continue
            for step in range(steps):
                ctx.check_cancel()
                ctx.progress(stage, step + 1, steps, {"loss": 1.0 / (step + 1)})
            vertices = (octahedron(1.0 + 0.25 * index).vertices + offset).tolist()
            self._end_stage(ctx, spec, stage, index, vertices, done, checkpoint)
        return RunOutcome()

    def _end_stage(self, ctx, spec, stage, index, vertices, done, checkpoint) -> None:
        def save() -> None:
            done[stage] = vertices
            tmp = checkpoint.with_suffix(".tmp")
            tmp.write_text(json.dumps(done))
            os.replace(tmp, checkpoint)

        def report() -> None:
            ctx.stage_result(stage, index, self._mesh(vertices))

        first, second = (report, save) if self.OLD_ORDER else (save, report)
        first()
        _crash_here(ctx, spec, stage, "between")
        second()
        _crash_here(ctx, spec, stage, "after")

    @staticmethod
    def _mesh(vertices: list[list[float]]) -> MeshPayload:
        mesh = octahedron()
        mesh.vertices = np.asarray(vertices, np.float32)
        return mesh


class OldOrderPipeline(ContractPipeline):
    """Today's order: the result is reported before the checkpoint is saved."""

    OLD_ORDER = True


CRASH_ENV = "DREAMPOLISH_TEST_CRASH"
"""STAGE:before|after — CrashingDreamPolish kills its process around that stage's ctx.stage_result."""


class _CrashingContext:
    """Passes every report on; SIGKILLs the process once, before or after one stage result."""

    def __init__(self, ctx: JobContext, crash: str) -> None:
        self._ctx, self._crash = ctx, crash
        self.job_id, self.work_dir, self.device = ctx.job_id, ctx.work_dir, ctx.device

    def _maybe_crash(self, stage: str, point: str) -> None:
        marker = self.work_dir / "crashed"
        if self._crash == f"{stage}:{point}" and not marker.exists():
            marker.write_text(self._crash)
            os.kill(os.getpid(), signal.SIGKILL)

    def progress(self, *args, **kwargs) -> None:
        self._ctx.progress(*args, **kwargs)

    def stage_result(self, stage: str, index: int, mesh: MeshPayload) -> None:
        self._maybe_crash(stage, "before")
        self._ctx.stage_result(stage, index, mesh)
        self._maybe_crash(stage, "after")

    def check_cancel(self) -> None:
        self._ctx.check_cancel()


class CrashingDreamPolish:
    """The DreamPolish pipeline, killed once around one stage result (CRASH_ENV, read at start)."""

    def __init__(self) -> None:
        from dreampolish.backend.pipeline import DreamPolishPipeline

        self._inner = DreamPolishPipeline()
        self._crash = os.environ.get(CRASH_ENV, "")

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def run(self, spec: JobSpec, ctx: JobContext, resume: ResumePoint | None = None) -> RunOutcome:
        return self._inner.run(spec, _CrashingContext(ctx, self._crash) if self._crash else ctx, resume)
