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

import contextlib
import io
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from dreampolish.protocol.image import ReferenceImage
from dreampolish.protocol.scene import CameraSpec, MeshPayload
from PIL import Image

from ..geometry.mesh import TriMesh, normalize_to_unit
from ..geometry.metrics import chamfer_fraction, silhouette_iou
from ..guidance import zero123
from ..guidance.oracle import OracleTarget
from ..render.cameras import ViewSampler
from ..render.colour import delta_e
from ..render.rasterize import MeshRasterizer
from . import world

MAX_CHAMFER_PCT = 5.0
MIN_IOU = 0.72
MAX_DELTA_E = 20.0
"""The quality tests' bounds on `score` (tests/backend/micro/): between what the method reaches on the held-out
prompts (BENCHMARKS.md, "Micro priors") and what the wrong object scores. The robustness grid counts a cell's
colour right under the same MAX_DELTA_E."""

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


OVERHEAD_ELEVATIONS = (60.0, 75.0, 89.0)
"""Views from above (azimuths 0°, 90°, 180°, 270° each): where a torus shows whether its hole was carved,
which the held-out views (−10°…50°) hardly see (PITFALLS)."""


def _object_frame(payload: MeshPayload) -> TriMesh:
    """The payload's mesh as sent (object frame), without its colours, normalised to the unit sphere."""
    raw = TriMesh.from_payload(payload, apply_transform=False)
    return normalize_to_unit(TriMesh(raw.vertices, raw.faces, raw.uvs))[0]


def _world_target(shape: str, front_azimuth_deg: float) -> TriMesh:
    return normalize_to_unit(turned_to_front(world.shape_mesh(shape), front_azimuth_deg))[0]


def shape_distances(payload: MeshPayload, front_azimuth_deg: float, samples: int = 8000) -> dict[str, float]:
    """Chamfer distance (% of each target's diagonal) from the payload's mesh to every shape of the world,
    each turned to the front and normalised as `score` does: the nearest names what the chain made."""
    pred = _object_frame(payload)
    return {shape: 100.0 * chamfer_fraction(pred, _world_target(shape, front_azimuth_deg), samples)
            for shape in world.SHAPES}


def overhead_iou(payload: MeshPayload, shape: str, front_azimuth_deg: float, size: int = 64) -> float:
    """Silhouette IoU against the world's `shape` over the OVERHEAD_ELEVATIONS views."""
    el = torch.tensor(OVERHEAD_ELEVATIONS).repeat_interleave(4)
    az = torch.tensor([0.0, 90.0, 180.0, 270.0]).repeat(len(OVERHEAD_ELEVATIONS))
    cams = world.view_cameras(el, az, size)
    return silhouette_iou(_object_frame(payload), _world_target(shape, front_azimuth_deg), cams,
                          MeshRasterizer("torch"))


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


def generate(prompt: str, work_dir: Path, options: dict | None = None, seed: int = 0, preset: str = "micro",
             priors=None, stages: list[str] | None = None, image: ReferenceImage | None = None,
             cameras: list[CameraSpec] | None = None, views: list | None = None) -> Generation:
    """Run the pipeline (the real one: stages, priors loaded through `from_pretrained`) on one prompt, with
    the artist's `image` seen from `cameras[0]` when given (image to 3D), or several pictures with their
    cameras (`views`, PictureView)."""
    from dreampolish.protocol.job import JobSpec

    from ..pipeline import DreamPolishPipeline

    spec = JobSpec(prompt, preset=preset, seed=seed, options=dict(options or {}), stages=stages, image=image,
                   cameras=list(cameras or []), views=list(views or []))
    pipeline = DreamPolishPipeline(priors=priors) if priors is not None else DreamPolishPipeline()
    ctx = _Recorder(Path(work_dir))
    pipeline.run(spec, ctx)
    # the last mesh with faces: the export stage may end on files alone
    final = [m for m in ctx.results.values() if m.faces is not None and len(m.faces)][-1]
    return Generation(final, dict(ctx.results), ctx.seconds(), front_azimuth_deg(spec), ctx.last_losses,
                      ctx.previews)


def front_azimuth_deg(spec) -> float:
    """The pipeline's front for a JobSpec: the azimuth of the job's reference camera (the default front camera
    without cameras), which `score` turns the world's object to."""
    from ..pipeline.frame import job_frame
    from ..presets import get_preset

    return float(job_frame(spec, get_preset(spec.preset, spec.options)).reference_camera.azimuth_deg[0])


def world_camera(elevation_deg: float, azimuth_deg: float = 0.0, size: int = 64) -> CameraSpec:
    """The Blender camera of an orbit view of the world (azimuth 0 faces the objects' front, +X; the prior
    views' distance and 20° field of view): a request's reference camera."""
    cams = world.view_cameras(torch.tensor([elevation_deg]), torch.tensor([azimuth_deg]), size)
    # VERTICAL fit: fovy = 2 atan(sensor_height / 2 / lens)
    lens = 12.0 / math.tan(math.radians(world.VIEW_FOVY_DEG) / 2)
    return CameraSpec(matrix_world=cams.c2w[0].numpy().astype(np.float32), lens_mm=lens, sensor_height_mm=24.0,
                      sensor_fit="VERTICAL", resolution=(size, size), name="world view")


def world_picture(colour: str, shape: str, elevation_deg: float, azimuth_deg: float = 0.0,
                  size: int = 64) -> tuple[ReferenceImage, CameraSpec]:
    """The world's render of the object from an orbit view (azimuth 0 faces the object's front, +X), as an
    artist's picture (RGBA PNG), and the Blender camera that took it (`world_camera`), for an image-to-3D
    request; `generate` with it scores against the object turned as the camera saw it."""
    cams = world.view_cameras(torch.tensor([elevation_deg]), torch.tensor([azimuth_deg]), size)
    r = world.render_object(world.coloured_mesh(colour, shape), cams)
    rgba = (torch.cat([r.rgb[0], r.mask[0]], -1).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return ReferenceImage(png=buf.getvalue()), world_camera(elevation_deg, azimuth_deg, size)


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


# -- what the view-conditioned prior does with its camera ----------------------------------------------------

NOVEL_REFERENCE = (15.0, 0.0)
"""(elevation, azimuth) of the reference view the novel-view check conditions on."""
NOVEL_VIEWS = ((55.0, 0.0), (55.0, 90.0), (15.0, 90.0), (15.0, 180.0), (-10.0, 45.0), (40.0, -120.0))
"""The views it asks for: Δpolar −40° and +25°, Δazimuth up to 180°, inside the world's orbits."""


@torch.no_grad()
def novel_views(models, colour: str, shape: str, reference: tuple[float, float] = NOVEL_REFERENCE,
                views: tuple[tuple[float, float], ...] = NOVEL_VIEWS, steps: int = 20, guidance_scale: float = 3.0,
                seed: int = 0, size: int = world.WorldConfig.size) -> tuple[torch.Tensor, torch.Tensor]:
    """(Zero123's DDIM samples of `views` [V,H,W,3], the world's renders there [V,H,W,3]), both over white, from
    the world's render of the object at `reference`. `models` are Zero123Models; the conditioning and the
    CFG noise prediction are guidance/zero123.py's, so a wrong camera there shows here."""
    from diffusers import DDIMScheduler

    el = torch.tensor([reference[0]] + [v[0] for v in views])
    az = torch.tensor([reference[1]] + [v[1] for v in views])
    n = len(el)
    r = world.render_object(world.coloured_mesh(colour, shape), world.view_cameras(el, az, size))
    rgb = r.rgb  # already over white (world.BACKGROUND)
    guidance = zero123.Zero123Guidance(models, rgb[0], r.mask[0],
                                       zero123.ReferenceView(reference[0], reference[1], world.VIEW_DISTANCE),
                                       zero123.Zero123GuidanceConfig(guidance_scale=guidance_scale))
    context = guidance.conditioning(el[1:], az[1:], torch.full((n - 1,), world.VIEW_DISTANCE))
    scheduler = DDIMScheduler.from_config(models.scheduler.config)  # set_timesteps must not touch the guidance's
    scheduler.set_timesteps(steps)
    side = guidance.resolution // 2 ** (len(models.vae.config.block_out_channels) - 1)
    x = torch.randn((n - 1, 4, side, side), generator=torch.Generator().manual_seed(seed))
    for t in scheduler.timesteps:
        eps = guidance.noise_prediction(x, torch.full((n - 1,), int(t)), context)
        x = scheduler.step(eps, t, x).prev_sample
    image = models.vae.decode((x / models.vae.config.scaling_factor).to(models.dtype)).sample.float()
    return ((image + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1), rgb[1:]


def novel_view_error(models, colour: str, shape: str, **kwargs) -> float:
    """Mean squared colour error of `novel_views` against the world's renders (lower is better)."""
    samples, truth = novel_views(models, colour, shape, **kwargs)
    return float(((samples - truth) ** 2).mean())


def flip_polar(camera: torch.Tensor) -> torch.Tensor:
    """The Zero123 camera [..,4] with its polar difference's sign flipped (elevation taken for polar angle)."""
    return torch.cat([-camera[..., :1], camera[..., 1:]], dim=-1)


def reference_camera(camera: torch.Tensor) -> torch.Tensor:
    """Every view's Zero123 camera as the reference's own (the camera left out of the condition)."""
    same = torch.zeros_like(camera)
    same[..., 2] = 1.0  # Δpolar 0, sin Δazimuth 0, cos Δazimuth 1, Δradius 0
    return same


CAMERA_BUGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "camera polar sign flipped": flip_polar,
    "camera removed (every view as the reference)": reference_camera,
}
"""Method bugs in the Zero123 camera: `novel_view_error` catches both; the geometry figures of a text prompt do
not (its reference is at elevation 0 and the world's shapes are symmetric: BENCHMARKS.md)."""


@contextlib.contextmanager
def wrong_camera(rewrite: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Zero123 conditioned on `rewrite(camera)` instead of guidance/zero123.py's relative camera."""
    original = zero123.relative_camera
    zero123.relative_camera = lambda *args, **kwargs: rewrite(original(*args, **kwargs))
    try:
        yield
    finally:
        zero123.relative_camera = original
