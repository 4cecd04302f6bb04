"""A toy stage added to the DreamPolish pipeline's runners, and nothing else, as docs/adding-a-stage.md
says: the add-on's test (tests/addon/test_stage_chain.py) serves it from a real backend and finds it
in the panel's Run Up To, runs it from there, and gets its mesh back.

    .venv/bin/dreampolish-backend serve --pipeline tests.support.toy_stage:pipeline --preset tiny --device cpu
"""

from __future__ import annotations

import torch
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.pipeline import STAGE_RUNNERS, DreamPolishPipeline, StageRunner
from dreampolish.backend.pipeline.checkpoint_format import mesh_from_ckpt, mesh_to_ckpt
from dreampolish.backend.pipeline.context import JobSetup, StageCarry, StageContext

TOY_RADIUS = 0.5
"""The toy's octahedron fills the object frame's ball (radius 0.5), as every stage's object does."""


class ToyRunner(StageRunner):
    """Makes an octahedron in the job's object frame: the first stage of a generate job."""

    name = "toy"
    modes = ("generate",)

    def run(self, c: StageContext) -> dict:
        c.reporter.check_cancel()
        v = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
                         dtype=torch.float32) * TOY_RADIUS
        f = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
        c.carry.mesh = TriMesh(v.to(c.device), f.to(c.device))
        c.reporter.progress(1, 1, {})
        return {"mesh": mesh_to_ckpt(c.carry.mesh)}

    def restore(self, ckpt: dict, job: JobSetup, carry: StageCarry) -> None:
        carry.mesh = mesh_from_ckpt(ckpt["mesh"], job.device)


def pipeline() -> DreamPolishPipeline:
    """The DreamPolish pipeline with the toy stage first in its runners."""
    return DreamPolishPipeline(stages=(ToyRunner(), *STAGE_RUNNERS))
