"""How close a generated object is to the procedural object its prompt names.

The final mesh (the export stage's, textured) against the world's mesh of the prompt's shape:

- Chamfer distance in % of the target's bounding-box diagonal (geometry/metrics.py), both meshes first
  normalised to the object frame (bounding-box centre at the origin, bounding-sphere radius 0.5), so that
  position and scale do not count, and the target turned so that its front faces the reference camera
  (the world's objects face +X; the pipeline's front is the reference camera's azimuth);
- silhouette IoU over held-out views (cameras the stages never sampled);
- the colour: ΔE*ab (CIELAB, render/colour.py) between the mean texture colour the held-out views see and
  the mean colour the world's renders of that colour show (the priors learnt the lit colour, not the
  albedo).

A hard-coded or looked-up shape would score here too, which is why the quality test runs the real
pipeline: the objects come out of score distillation with the micro priors.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from dreampolish.protocol.scene import MeshPayload
from PIL import Image

from ..geometry.mesh import TriMesh, normalize_to_unit
from ..geometry.metrics import chamfer_fraction, silhouette_iou
from ..guidance.oracle import OracleTarget
from ..render.cameras import ViewSampler
from ..render.colour import delta_e
from ..render.rasterize import MeshRasterizer
from . import world

HELD_OUT_CAMERAS = ViewSampler(elevation_range=(-10.0, 50.0), distance_range=(world.VIEW_DISTANCE,) * 2,
                               fovy_range=(world.VIEW_FOVY_DEG,) * 2)
"""Where the held-out views come from: the prior views' orbit, drawn with a seed of their own."""
HELD_OUT_SEED = 7919


@dataclass
class Quality:
    chamfer_pct: float
    """Chamfer distance, % of the target's bounding-box diagonal (lower is better)."""
    iou: float
    """Silhouette IoU over the held-out views (higher is better)."""
    colour_delta_e: float
    """ΔE*ab of the mean seen colour against the prompt's colour (lower is better; ~2.3 is just noticeable)."""

    def as_dict(self) -> dict[str, float]:
        return {"chamfer_pct": self.chamfer_pct, "iou": self.iou, "colour_delta_e": self.colour_delta_e}


def turned_to_front(mesh: TriMesh, front_azimuth_deg: float) -> TriMesh:
    """The mesh turned about +Z so that the side facing +X (azimuth 0) faces `front_azimuth_deg`."""
    a = math.radians(front_azimuth_deg)
    rot = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    return TriMesh(mesh.vertices @ rot.T, mesh.faces, mesh.uvs, mesh.vertex_colors)


def base_colour_image(payload: MeshPayload) -> torch.Tensor | None:
    """[H,W,3] display colour of the payload's base-colour texture, or None."""
    tex = payload.texture("base_color")
    if tex is None or tex.png is None:
        return None
    rgb = np.asarray(Image.open(io.BytesIO(tex.png)).convert("RGB"), np.float32) / 255.0
    return torch.from_numpy(rgb)


def _covered_mean(rgb: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Mean colour [3] over the fully covered pixels (coverage > 0.99) of renders [B,H,W,3], NaN if none."""
    inside = mask[..., 0] > 0.99
    return rgb[inside].mean(0).numpy() if bool(inside.any()) else np.full(3, np.nan)


def _seen_colour(mesh: TriMesh, texture: torch.Tensor | None, cameras, rasterizer: MeshRasterizer) -> np.ndarray:
    """Mean display colour over the fully covered pixels of the mesh's views."""
    tgt = OracleTarget(mesh, rasterizer, texture).render(cameras)
    return _covered_mean(tgt.albedo, tgt.mask)


def world_colour(colour: str, shape: str, cameras, rasterizer: MeshRasterizer) -> np.ndarray:
    """Mean colour the world's renders of the object show from these cameras (lit, as the priors saw it)."""
    r = world.render_object(world.coloured_mesh(colour, shape), cameras, rasterizer)
    return _covered_mean(r.rgb, r.mask)


def score(payload: MeshPayload, colour: str, shape: str, front_azimuth_deg: float, views: int = 8,
          size: int = 64) -> Quality:
    """The figures of one result (module docstring); `payload` in the object frame (its vertices as sent)."""
    rasterizer = MeshRasterizer("torch")
    pred_raw = TriMesh.from_payload(payload, apply_transform=False)
    pred = TriMesh(pred_raw.vertices, pred_raw.faces, pred_raw.uvs)
    pred, _ = normalize_to_unit(pred)
    target, _ = normalize_to_unit(turned_to_front(world.shape_mesh(shape), front_azimuth_deg))
    cams = HELD_OUT_CAMERAS.sample(views, size, size, torch.Generator().manual_seed(HELD_OUT_SEED))
    seen = _seen_colour(pred, base_colour_image(payload), cams, rasterizer)
    expected = world_colour(colour, shape, cams, rasterizer)
    return Quality(
        chamfer_pct=100.0 * chamfer_fraction(pred, target, 8000),
        iou=silhouette_iou(pred, target, cams, rasterizer),
        colour_delta_e=float(delta_e(seen, expected)),
    )


# -- one generation, in process ------------------------------------------------------------------------------


@dataclass
class Generation:
    """What one prompt made: the final mesh, every stage's mesh and its seconds, and the front's azimuth."""

    final: MeshPayload
    stages: dict[str, MeshPayload]
    seconds: dict[str, float]
    front_azimuth_deg: float
    losses: dict[str, dict[str, float]] | None = None
    """Each stage's last reported losses."""
    previews: dict[str, bytes] | None = None
    """Each stage's last preview (PNG)."""


@dataclass
class _Recorder:
    """A JobContext (backend/pipeline_api.py) that keeps each stage's mesh and the time it ended."""

    work_dir: Path
    job_id: str = "micro"
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.results: dict[str, MeshPayload] = {}
        self.ended: dict[str, float] = {}
        self.started = time.monotonic()
        self.first_step: dict[str, float] = {}
        self.last_losses: dict[str, dict[str, float]] = {}
        self.previews: dict[str, bytes] = {}

    def progress(self, stage, step, total, losses=None, preview_png=None) -> None:
        self.first_step.setdefault(stage, time.monotonic())
        if losses:
            self.last_losses[stage] = dict(losses)
        if preview_png is not None:
            self.previews[stage] = preview_png

    def stage_result(self, stage: str, index: int, mesh: MeshPayload) -> None:
        self.results[stage] = mesh
        self.ended[stage] = time.monotonic()

    def check_cancel(self) -> None:
        return None

    def seconds(self) -> dict[str, float]:
        out, last = {}, self.started
        for stage in sorted(self.first_step, key=self.first_step.get):
            end = self.ended.get(stage, last)
            out[stage] = round(end - last, 1)
            last = max(last, end)
        return out


def front_azimuth_deg(prompt: str, seed: int = 0, preset: str = "micro", options: dict | None = None) -> float:
    """Azimuth of the job's reference camera (the pipeline's front) for a request without cameras."""
    from dreampolish.protocol.job import JobSpec

    from ..pipeline.frame import job_frame
    from ..presets import get_preset

    spec = JobSpec(prompt, preset=preset, seed=seed, options=dict(options or {}))
    return float(job_frame(spec, get_preset(preset, spec.options)).reference_camera.azimuth_deg[0])


def generate(prompt: str, work_dir: Path, options: dict | None = None, seed: int = 0, preset: str = "micro",
             priors=None, stages: list[str] | None = None) -> Generation:
    """Run the pipeline (the real one: stages, priors loaded through `from_pretrained`) on one prompt."""
    from dreampolish.protocol.job import JobSpec

    from ..pipeline import DreamPolishPipeline

    spec = JobSpec(prompt, preset=preset, seed=seed, options=dict(options or {}), stages=stages)
    pipeline = DreamPolishPipeline(priors=priors) if priors is not None else DreamPolishPipeline()
    ctx = _Recorder(Path(work_dir))
    pipeline.run(spec, ctx)
    # the last mesh with faces: the export stage may end on files alone
    final = [m for m in ctx.results.values() if m.faces is not None and len(m.faces)][-1]
    return Generation(final, dict(ctx.results), ctx.seconds(), front_azimuth_deg(prompt, seed, preset, options),
                      ctx.last_losses, ctx.previews)


def normal_error_deg(estimator, colour: str, shape: str, views: int = 8, size: int = 64) -> tuple[float, float]:
    """(mean angular error in degrees of `estimator`'s normals on the world's object from held-out views,
    the same for the guess "every normal faces the camera"), over fully covered pixels. `estimator` is a
    NormalTargets (guidance/base.py), e.g. MarigoldNormalTargets on the micro normals pipeline."""
    cams = HELD_OUT_CAMERAS.sample(views, size, size, torch.Generator().manual_seed(HELD_OUT_SEED))
    r = world.render_object(world.coloured_mesh(colour, shape), cams)
    n = estimator(r.rgb, r.mask, cams)
    fg = (r.mask[..., 0] > 0.99) & (n.norm(dim=-1) > 0)

    def error(pred: torch.Tensor) -> float:
        return float(torch.rad2deg(torch.acos((pred * r.normal).sum(-1)[fg].clamp(-1, 1))).mean())

    return error(n), error(torch.tensor([0.0, 0.0, 1.0]).expand_as(r.normal))
