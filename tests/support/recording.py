"""Shared by the pipeline tests: a JobContext that records every report, and a test mesh. (The tiny
models as a model cache are fixtures: tests/backend/conftest.py.)"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh
from dreampolish.protocol.scene import MeshPayload


class BackendStopped(Exception):
    """What the job system raises from check_cancel when the backend shuts down mid-job."""


@dataclass
class RecordingContext:
    """pipeline_api.JobContext that records every report; `stop_in` makes check_cancel raise in a stage.

    Like the job store, it records a stage result once per (stage, index): the pipeline hands the results
    of restored stages to the job again after a restart, and the store drops those it has (`repeated`
    counts them). One work_dir is one job: give a fresh job a fresh folder, as the job store does."""

    work_dir: Path
    job_id: str = "job"
    device: str = "cpu"
    stop_in: str | None = None
    progress_events: list[tuple[str, int, int, dict, bytes | None]] = field(default_factory=list)
    results: list[tuple[str, int, MeshPayload]] = field(default_factory=list)
    repeated: list[tuple[str, int]] = field(default_factory=list)

    def progress(self, stage, step, total, losses=None, preview_png=None):
        self.progress_events.append((stage, step, total, dict(losses or {}), preview_png))

    def stage_result(self, stage, index, mesh):
        mesh.validate(require_faces=False)
        if (stage, index) in self.recorded:
            self.repeated.append((stage, index))
            return
        self.results.append((stage, index, mesh))
        self._record(stage, index)

    def check_cancel(self):
        if self.stop_in is not None and self.progress_events and self.progress_events[-1][0] == self.stop_in:
            raise BackendStopped(f"stopped in {self.stop_in}")

    @property
    def _recorded_path(self) -> Path:
        # Kept in the job's folder, as the job store keeps its results: a later run of the same job (a
        # resume, a restart) sees what earlier runs recorded.
        return Path(self.work_dir) / "recorded_results.json"

    @property
    def recorded(self) -> set[tuple[str, int]]:
        """(stage, index) of every result this job already has, from any run of it."""
        if not self._recorded_path.exists():
            return set()
        return {(s, int(i)) for s, i in json.loads(self._recorded_path.read_text())}

    def _record(self, stage: str, index: int) -> None:
        keys = sorted(self.recorded | {(stage, int(index))})
        self._recorded_path.parent.mkdir(parents=True, exist_ok=True)
        self._recorded_path.write_text(json.dumps(keys))

    def result(self, stage: str) -> MeshPayload:
        return next(m for s, _, m in self.results if s == stage)

    @property
    def result_stages(self) -> list[str]:
        return [s for s, _, _ in self.results]


def box_payload(offset=(2.0, 0.0, 1.0), with_uvs: bool = False) -> MeshPayload:
    """A box in Blender's world away from the origin (what Refine Selected sends)."""
    box = trimesh.creation.box((1.0, 0.6, 0.8)).subdivide().subdivide()
    faces = np.asarray(box.faces, np.uint32)
    uvs = None
    if with_uvs:
        rng = np.random.default_rng(3)
        uvs = rng.random((len(faces), 3, 2)).astype(np.float32)
    return MeshPayload(vertices=(np.asarray(box.vertices) + offset).astype(np.float32), faces=faces, uvs=uvs)
