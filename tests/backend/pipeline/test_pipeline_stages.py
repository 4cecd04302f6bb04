"""The pipeline's stage list and stage boundaries: runners listed once, a stage added by a test (the worked
example of docs/adding-a-stage.md), and a backend killed at a stage boundary sending each result once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from dreampolish.backend.checkpoints import CheckpointStore
from dreampolish.backend.geometry.mesh import TriMesh, normalize_to_unit
from dreampolish.backend.pipeline import STAGE_RUNNERS, DreamPolishPipeline, OraclePriors, StageRunner
from dreampolish.backend.pipeline.checkpoint_format import mesh_from_ckpt, mesh_to_ckpt
from dreampolish.backend.pipeline.context import JobSetup, StageCarry, StageContext
from dreampolish.backend.pipeline_api import ResumePoint
from dreampolish.protocol.job import JobSpec

from tests.support.pipelines import ScriptedPipeline
from tests.support.recording import RecordingContext, box_payload

# Small enough for a few seconds on the CPU; the oracle needs no model weights.
FAST = {"dmtet.steps": 2, "dmtet.grid_resolution": 12, "polish.steps": 2, "polish.render_size": 32,
        "polish.view_pool": 4, "polish.batch_size": 1, "texture.steps": 2, "texture.render_size": 32,
        "texture.atlas_size": 64, "dmtet.color_init_steps": 5, "preview_every": 0}


def _refine_spec(**kw) -> JobSpec:
    return JobSpec(prompt="a box", preset="tiny", mode="geometry", input_mesh=box_payload(), options=dict(FAST), **kw)


def _oracle_pipeline(**kw) -> DreamPolishPipeline:
    target, _ = normalize_to_unit(TriMesh.from_payload(box_payload(), apply_transform=True))
    return DreamPolishPipeline(priors=OraclePriors(target), **kw)


def test_the_runners_are_the_stages_in_order():
    stages = ["reference", "nerf", "neus", "dmtet", "polish", "finish", "texture", "export"]
    assert [r.name for r in STAGE_RUNNERS] == stages
    pipeline = DreamPolishPipeline()
    assert pipeline.mode_stages("generate") == stages
    assert pipeline.mode_stages("geometry") == ["dmtet", "polish", "finish", "texture", "export"]
    assert pipeline.mode_stages("texture") == ["texture", "export"]


def test_welcome_announces_the_runners_chains_and_the_test_pipeline_announces_the_same():
    # welcome.stage_chains: the stages a request may name; export follows texture by itself.
    chains = DreamPolishPipeline().stage_chains()
    assert chains == {"generate": ["reference", "nerf", "neus", "dmtet", "polish", "finish", "texture"],
                      "geometry": ["dmtet", "polish", "finish", "texture"], "texture": ["texture"]}
    assert ScriptedPipeline().stage_chains() == chains  # tests/support/pipelines.py's written-out copy


# -- the worked example of docs/adding-a-stage.md --------------------------------------------------------


class IdentityRunner(StageRunner):
    """Hands the mesh it gets to the next stage unchanged."""

    name = "identity"
    modes = ("geometry",)

    def run(self, c: StageContext) -> dict:
        c.reporter.check_cancel()
        c.reporter.progress(1, 1, {})
        return {"mesh": mesh_to_ckpt(c.carry.mesh)}

    def restore(self, ckpt: dict, job: JobSetup, carry: StageCarry) -> None:
        carry.mesh = mesh_from_ckpt(ckpt["mesh"], job.device)


def _with_identity() -> tuple[StageRunner, ...]:
    at = [r.name for r in STAGE_RUNNERS].index("dmtet") + 1
    return (*STAGE_RUNNERS[:at], IdentityRunner(), *STAGE_RUNNERS[at:])


def test_a_stage_added_by_one_runner_runs_in_its_place_and_comes_back_after_a_restart(tmp_path):
    pipeline = _oracle_pipeline(stages=_with_identity())
    spec = _refine_spec()
    assert pipeline.stage_plan(spec) == ["dmtet", "identity", "polish", "texture", "export"]

    # The backend stops in polish: dmtet and identity are done, each sent once, identity's mesh is dmtet's.
    first = RecordingContext(tmp_path, stop_in="polish")
    with pytest.raises(Exception, match="stopped in polish"):
        pipeline.run(spec, first)
    assert [(s, i) for s, i, _ in first.results] == [("dmtet", 0), ("identity", 1)]
    np.testing.assert_array_equal(first.result("identity").vertices, first.result("dmtet").vertices)
    assert ("identity", 1, 1) in {(e[0], e[1], e[2]) for e in first.progress_events}

    # After a restart identity is restored from its checkpoint, not run again; the chain goes on from it.
    second = RecordingContext(tmp_path)
    outcome = _oracle_pipeline(stages=_with_identity()).run(spec, second, ResumePoint())
    assert outcome.paused_after is None and outcome.result_files["glb"].exists()
    assert {e[0] for e in second.progress_events} == {"polish", "texture", "export"}
    assert [(s, i) for s, i, _ in second.results] == [("polish", 2), ("texture", 3), ("export", 4)]
    assert second.repeated == [("dmtet", 0), ("identity", 1)]  # re-sent on restore, already recorded


# -- stage boundaries ---------------------------------------------------------------------------------------


class Killed(BaseException):
    """The backend process dying (kill -9): nothing after it runs."""


@dataclass
class StoreContext:
    """A JobContext with the job store's contract: stage_result records a result once per (stage, index),
    durably (kept in the job's folder across runs), and a later call for a recorded one is dropped.
    `kill_at` raises Killed from the first stage_result call of that stage, before it is recorded (a kill
    between checkpoint and result); `kill_after` raises it at the first cancel check after that stage's
    result is recorded (a kill after both)."""

    work_dir: Path
    kill_at: str | None = None
    kill_after: str | None = None
    job_id: str = "job"
    device: str = "cpu"
    calls: list[tuple[str, int]] = field(default_factory=list)
    sent: list[tuple[str, int]] = field(default_factory=list)
    stages_seen: set[str] = field(default_factory=set)

    @property
    def _log(self) -> Path:
        return self.work_dir / "results.log"

    def recorded(self) -> list[tuple[str, int]]:
        if not self._log.exists():
            return []
        return [(s, int(i)) for s, i in (line.split() for line in self._log.read_text().splitlines())]

    def stage_result(self, stage, index, mesh):
        mesh.validate(require_faces=False)
        self.calls.append((stage, index))
        if stage == self.kill_at:
            self.kill_at = None
            raise Killed(f"killed before the {stage} result was recorded")
        if (stage, index) in self.recorded():
            return
        with self._log.open("a") as f:
            f.write(f"{stage} {index}\n")
        self.sent.append((stage, index))

    def progress(self, stage, step, total, losses=None, preview_png=None):
        self.stages_seen.add(stage)

    def check_cancel(self):
        if self.kill_after is not None and any(s == self.kill_after for s, _ in self.recorded()):
            stage, self.kill_after = self.kill_after, None
            raise Killed(f"killed after the {stage} result")


EXPECTED = [("dmtet", 0), ("polish", 1), ("texture", 2), ("export", 3)]


def test_a_kill_between_checkpoint_and_result_sends_the_result_once_after_the_restart(tmp_path):
    spec = _refine_spec()
    first = StoreContext(tmp_path, kill_at="polish")
    with pytest.raises(Killed):
        _oracle_pipeline().run(spec, first)
    # The checkpoint came first: polish is finished on disk, though its result never reached the store.
    assert CheckpointStore(tmp_path).finished() == ["dmtet", "polish"]
    assert first.recorded() == [("dmtet", 0)]

    second = StoreContext(tmp_path)
    _oracle_pipeline().run(spec, second, ResumePoint())
    assert "polish" not in second.stages_seen  # restored, not run again
    assert second.calls[:2] == [("dmtet", 0), ("polish", 1)]  # restored stages hand their results again
    assert second.sent == [("polish", 1), ("texture", 2), ("export", 3)]
    assert second.recorded() == EXPECTED  # every stage once


def test_a_kill_after_checkpoint_and_result_sends_nothing_twice(tmp_path):
    spec = _refine_spec()
    first = StoreContext(tmp_path, kill_after="polish")
    with pytest.raises(Killed):
        _oracle_pipeline().run(spec, first)
    assert first.recorded() == [("dmtet", 0), ("polish", 1)]

    second = StoreContext(tmp_path)
    _oracle_pipeline().run(spec, second, ResumePoint())
    assert second.stages_seen == {"texture", "export"}
    assert second.sent == [("texture", 2), ("export", 3)]
    assert second.recorded() == EXPECTED


def test_a_kill_after_the_last_checkpoint_still_delivers_the_last_result(tmp_path):
    spec = _refine_spec()
    first = StoreContext(tmp_path, kill_at="export")
    with pytest.raises(Killed):
        _oracle_pipeline().run(spec, first)
    second = StoreContext(tmp_path)
    outcome = _oracle_pipeline().run(spec, second, ResumePoint())
    assert second.stages_seen == set()  # nothing left to run
    assert second.sent == [("export", 3)]
    assert second.recorded() == EXPECTED
    assert outcome.result_files["glb"].exists()
