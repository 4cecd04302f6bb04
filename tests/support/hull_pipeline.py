"""A pipeline whose NeRF fits the reference view exactly, for tests of where a generated object lands.

ReferenceHullPipeline runs the real job frame (backend/pipeline/frame.py: the object frame, its reference
camera and the preview the artist sees) and the real reference image path (the artist's picture, its mask,
centring and scale), then stands in for NeRF with the best fit any optimiser could reach: the visual hull
of the reference mask seen from the reference camera, inside the object frame's sphere. So an object that
lands where its reference does not look comes out cut or empty, as the trained fields come out smeared.
The tiny preset's few NeRF steps fit no silhouette (IoU 0.16 after 60 steps, 0.30 after 300): too few to
tell a framing fault from an unfinished fit.

    PYTHONPATH=. .venv/bin/dreampolish-backend serve --store /tmp/jobs --pipeline tests.support.hull_pipeline:ReferenceHullPipeline

Requests are generate jobs with an image (reference source IMAGE or CAMERA); options may set reference.* fields.
"""

from __future__ import annotations

import torch
from dreampolish.backend import bake
from dreampolish.backend.geometry.marching import marching_cubes
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.pipeline.frame import job_frame, reference_as_seen
from dreampolish.backend.pipeline.priors import given_reference
from dreampolish.backend.pipeline_api import JobContext, ResumePoint, RunOutcome
from dreampolish.backend.presets import get_preset
from dreampolish.backend.stages.export import mesh_payload
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.job import JobSpec, validate_spec

CHAIN = ("reference", "nerf")
HULL_RESOLUTION = 64
"""Lattice points per side of the hull's marching cubes."""


def visual_hull(mask: torch.Tensor, camera, resolution: int = HULL_RESOLUTION) -> TriMesh:
    """mask [H,W,1] seen by camera (B=1, object frame) -> the mesh of the points inside the radius-0.5
    sphere whose projection falls inside the mask."""
    bound = 0.52  # a lattice slightly larger than the sphere: the surface closes inside it
    axis = torch.linspace(-bound, bound, resolution)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    clip = torch.cat([points, torch.ones_like(points[:, :1])], -1) @ camera.mvp[0].T
    ndc = clip[:, :2] / clip[:, 3:].clamp_min(1e-9)
    grid = torch.stack([ndc[:, 0], -ndc[:, 1]], -1).reshape(1, 1, -1, 2)
    seen = torch.nn.functional.grid_sample(mask.permute(2, 0, 1)[None].float(), grid, align_corners=False)
    inside = seen.reshape(-1) * (points.norm(dim=-1) < 0.5) * (clip[:, 3] > 0)
    vertices, faces = marching_cubes(inside.reshape((resolution,) * 3).numpy(), bound, 0.5, inside="above")
    return TriMesh(torch.from_numpy(vertices), torch.from_numpy(faces))


class ReferenceHullPipeline:
    """Generate jobs through the real frame and image path, NeRF replaced by the reference's visual hull."""

    def presets(self) -> list[str]:
        return ["tiny"]

    def models(self) -> list[str]:
        return []

    def check(self, spec: JobSpec) -> None:
        validate_spec(spec)
        if spec.mode != "generate" or spec.image is None:
            raise ValidationError("this test pipeline makes generate jobs from a reference image only")
        get_preset("tiny", spec.options)

    def stage_chains(self) -> dict[str, list[str]]:
        return {"generate": list(CHAIN), "geometry": [], "texture": []}

    def stages(self, spec: JobSpec) -> list[str]:
        return [s for s in CHAIN if spec.stages is None or s in spec.stages]

    def run(self, spec: JobSpec, ctx: JobContext, resume: ResumePoint | None = None) -> RunOutcome:
        preset = get_preset("tiny", spec.options)
        frame = job_frame(spec, preset)
        rgb, mask = given_reference(spec, preset, frame)
        rgba = torch.cat([rgb, mask], -1)
        if frame.scene_camera is not None:
            rgba = reference_as_seen(rgba, frame.reference_camera, frame.scene_camera)
        ctx.progress("reference", 1, 1, {}, bake.encode_png(rgba.clamp(0, 1).numpy()))
        if "nerf" in self.stages(spec):
            ctx.check_cancel()
            ctx.stage_result("nerf", 1, mesh_payload(visual_hull(mask, frame.reference_camera), frame.transform))
        return RunOutcome()
