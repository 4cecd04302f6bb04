"""What a stage runner is given: the job's setup, the carry between stages, and its own context."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import MeshPayload

from ..geometry.mesh import TriMesh
from ..guidance.base import ReferenceView
from ..presets import PipelinePreset
from ..render.rasterize import MeshRasterizer
from ..stages.texture_bake import BakedTexture
from .frame import JobFrame
from .previews import StageProgress
from .priors import PriorSource


@dataclass
class JobSetup:
    """What every stage of one job sees, fixed for the whole run."""

    spec: JobSpec
    preset: PipelinePreset
    """The request's preset with its options applied."""
    frame: JobFrame
    device: torch.device
    rasterizer: MeshRasterizer
    work_dir: Path
    """The job's own folder (checkpoints, exported files)."""


@dataclass
class StageCarry:
    """What a stage hands to the next one (and what restoring a finished stage puts back)."""

    reference: ReferenceView | None = None
    geometry: Any = None
    """The last geometry stage's state (NerfState / NeusState / DmtetState), for the next hand-over;
    None after polish, or when the client's edited mesh replaces it."""
    mesh: TriMesh | None = None
    """The last stage's mesh (object frame)."""
    detail: TriMesh | None = None
    """The detailed geometry a normal map is baked from (the polish mesh)."""
    face_sizes: np.ndarray | None = None
    """The finish stage's faces (int64 corners per face) of `mesh`, whose triangles are their fans; None: a
    triangle mesh."""
    lods: list[tuple[TriMesh, np.ndarray]] = field(default_factory=list)
    """The finish stage's levels of detail (LOD1...), each a mesh with UVs and its face sizes."""
    baked: BakedTexture | None = None
    """The texture stage's atlas."""
    payload: MeshPayload | None = None
    """The final payload (texture stage onwards)."""
    files: dict[str, Path] = field(default_factory=dict)
    """Exported artefacts by kind ({"glb": path})."""


@dataclass
class StageContext:
    """Everything one stage's run gets: the job, the carry, its priors, reporter and random state."""

    job: JobSetup
    carry: StageCarry
    priors: PriorSource
    """Guidance, reference image and normal targets (diffusion models, or an oracle)."""
    reporter: StageProgress
    """Progress, previews and cancel for this stage."""
    generator: torch.Generator
    """Seeded by (request seed, stage name): every random draw of the stage comes from it."""
    seed: int
    """The stage's seed (pipeline.stage_seed), for priors that keep their own generators."""

    @property
    def spec(self) -> JobSpec:
        return self.job.spec

    @property
    def preset(self) -> PipelinePreset:
        return self.job.preset

    @property
    def frame(self) -> JobFrame:
        return self.job.frame

    @property
    def device(self) -> torch.device:
        return self.job.device
