"""The contract between the job system and whatever runs a job (the DreamPolish pipeline, or a test pipeline).

The job system calls `Pipeline.run(spec, ctx, resume)` on a worker thread. The
pipeline reports through `ctx`, calls `ctx.check_cancel()` at least once per
optimisation step, owns its checkpoints under `ctx.work_dir`, and returns a
RunOutcome: finished, or paused after a stage (stage gate). To continue a paused
job, or one interrupted by a backend restart, the job system calls `run` again
on the same work_dir with a ResumePoint; the pipeline picks up after its last
finished stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import MeshPayload

from .errors import JobFailed as JobFailed  # part of the contract; defined below it (models raise it too)


class JobCancelled(Exception):
    """Raised by JobContext.check_cancel() when the client cancelled the job."""


@dataclass
class ResumePoint:
    edited_mesh: MeshPayload | None = None
    """The client's edited mesh sent with resume; None continues from the pipeline's own checkpoint."""


@dataclass
class RunOutcome:
    paused_after: str | None = None
    """Stage name when the job paused at a stage gate; None when it finished."""
    result_files: dict[str, Path] = field(default_factory=dict)
    """Final artefacts (e.g. {"glb": path}) inside ctx.work_dir."""


class JobContext(Protocol):
    job_id: str
    work_dir: Path
    """This job's private folder in the job store (checkpoints, intermediate files)."""
    device: str
    """torch device string chosen by the backend, e.g. "cuda:0" or "cpu"."""

    def progress(
        self,
        stage: str,
        step: int,
        total: int,
        losses: dict[str, float] | None = None,
        preview_png: bytes | None = None,
    ) -> None: ...

    def stage_result(self, stage: str, index: int, mesh: MeshPayload) -> None:
        """Persist and stream the mesh (with its textures) that a stage ended with."""
        ...

    def check_cancel(self) -> None:
        """Raise JobCancelled if the job was cancelled. Cheap; call every step."""
        ...


class Pipeline(Protocol):
    def presets(self) -> list[str]:
        """Preset names this pipeline accepts (announced in welcome)."""
        ...

    def check(self, spec: JobSpec) -> None:
        """Reject a spec before it is queued (unknown preset/stage/option, empty prompt, bad mesh):
        raise dreampolish.protocol.errors.ValidationError with a message naming the field. No GPU work."""
        ...

    def run(self, spec: JobSpec, ctx: JobContext, resume: ResumePoint | None = None) -> RunOutcome: ...
