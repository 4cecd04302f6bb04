"""Surface polishing (DreamPolish §3.2): pull the DMTet mesh's rendered normals towards a normal
estimator's targets on views whose field of view and distance vary.

Loss (per step, over the views' foreground pixels where the estimator gives a normal):
    L = λ_n · mean(1 − cos(n_rendered, n_target)) + λ_nc · L_nc(mesh) + λ_lap · L_lap(δ)
with n_rendered the rendered world normals rotated into the camera frame (the frame the estimator
answers in), L_nc the mesh normal consistency (1 − cos between faces sharing an edge) and L_lap the
uniform Laplacian of the vertex offsets δ, so that the mesh moves smoothly rather than per vertex.

With several reference pictures (a multi-view request: exact cameras) and silhouette_weight above 0 (off by
default), each step adds
    λ_sil · mean over the pictures of MSE(coverage at the picture's camera, the picture's mask)
(silhouette_weight): the geometry stages carved what the pictures show (a torus's hole seen from above), and
nothing in L above knows it (polish_silhouettes). With silhouette_hull (off by default), a vertex that a step
moves out of the pictures' visual hull is put back onto it (polish_hull).

Ablation ("smoothness"): no estimator at all, only λ_smooth · L_nc — the plain normal-smoothness
loss that the paper shows is not enough.

The optimised variables are per-vertex offsets δ of the input mesh (topology is kept).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config_fields import ranged
from ..device import to_device
from ..geometry.mesh import TriMesh
from ..geometry.regularisers import mesh_laplacian, mesh_normal_consistency
from ..geometry.visual_hull import VisualHull
from ..guidance.base import NormalTargets
from ..guidance.normals import NormalEstimatorConfig
from ..render.cameras import CameraBatch, ViewSampler
from ..render.rasterize import MeshRasterizer, RasterOutput
from .base import ReferenceView, ScaledReference, StageReporter, normals_to_camera, scaled_references
from .step import draw_seed

logger = logging.getLogger(__name__)


SILHOUETTE_WEIGHT = 100.0
"""PolishConfig.silhouette_weight: the reference mask's weight in the geometry stages (DreamCraft3D's
lambda_mask 100, configs/dreamcraft3d-geometry.yaml; stages/dmtet.py) beside a unit-weight normal loss."""


@dataclass
class PolishConfig:
    steps: int = ranged(300, 1, 200_000)
    """Optimisation steps (the method: a short stage of a few hundred steps)."""
    lr: float = ranged(1e-3, 0, 1)
    """Adam learning rate of the vertex offsets (object radius is 0.5)."""
    render_size: int = ranged(512, 16, 2048)
    """Side in pixels of the square views the estimator sees."""
    batch_size: int = ranged(4, 1, 64)
    """Views per step."""
    loss: Literal["normal_estimator", "smoothness"] = "normal_estimator"
    """normal_estimator: the method; smoothness: the plain normal-smoothness ablation."""
    fovy_range_deg: tuple[float, float] = ranged((15.0, 60.0), 1, 170)
    """Vertical field of view drawn uniformly per view (the estimator, unlike Zero123, takes any)."""
    elevation_range_deg: tuple[float, float] = ranged((-10.0, 45.0), -90, 90)
    """Orbit elevation drawn uniformly per view."""
    fill_margin: float = ranged(1.1, 0.5, 4.0)
    """Frame-to-object size ratio: the camera distance is set so that the object fills the frame."""
    view_pool: int = ranged(32, 1, 4096)
    """Views are drawn from this many fixed random views (0: fresh views every step); the estimator's
    targets are cached per view, so a pool costs one estimate per view."""
    rendered_normals: Literal["smooth", "face"] = "smooth"
    """Which rendered normals are compared with the targets: interpolated vertex normals, or flat face normals."""
    normal_weight: float = ranged(1.0, 0, 1e6)
    """λ_n, weight of 1 − cos(n_rendered, n_target)."""
    consistency_weight: float = ranged(0.1, 0, 1e6)
    """λ_nc, the small normal-consistency term on the mesh."""
    laplacian_weight: float = ranged(1.0, 0, 1e6)
    """λ_lap, uniform Laplacian of the vertex offsets."""
    silhouette_weight: float = ranged(0.0, 0, 1e6)
    """λ_sil: with several reference pictures, weight of the mean over them of the MSE between the mesh's
    antialiased coverage at each picture's camera and the picture's mask (0: off, the default; SILHOUETTE_WEIGHT
    is the measured value). One picture adds nothing. Off by default: it holds the pictures' silhouettes
    (0.98-0.99 where the method's polish moves them to 0.92-0.97) but not the torus's hole from above: from
    two pictures, seed 1, the same DMTet mesh ended at 0.881 with it and 0.917 without it (BENCHMARKS.md,
    "Several pictures, several cameras")."""
    silhouette_hull: bool = False
    """With several reference pictures (exact cameras), after every step put each vertex that left the
    pictures' visual hull back onto it (geometry/visual_hull.py VisualHull.project_inside). Why: on the torus
    from two pictures (seed 2) polish moved 700-800 vertices out of the pictures' silhouettes, up to 0.02 (a
    picture's pixel), and the mesh's bounding sphere with them (0.504 -> 0.506), which the score's
    normalisation turns into a smaller hole from above (0.900 -> 0.883; with the hull 0.906). Unlike
    silhouette_weight it only bounds the mesh: inside the hull the method's loss acts alone. Off by default,
    as DmtetConfig.silhouette_hull: the hull cuts the red cone's thin tip (BENCHMARKS.md, "Several pictures,
    several cameras")."""
    smoothness_weight: float = ranged(1.0, 0, 1e6)
    """λ_smooth, weight of the normal-consistency loss in the smoothness ablation."""
    estimator: NormalEstimatorConfig = field(default_factory=NormalEstimatorConfig)
    """How the normal estimator (Marigold) is run and its estimates cached."""
    estimator_batch: int = ranged(1, 1, 64)
    """Pool views per estimator call when the pool's targets are estimated, before the first step. One: each
    view at Marigold's 768-px processing size holds about 3.5 GB of activations (the dry run), so the
    batch_size's four at once took standard's polish peak to 22.7 GB; estimated one at a time the stage
    fits a 16 GB card with the idle priors offloaded (BENCHMARKS.md). Each view's estimate is the same
    model call either way; only its initial noise is drawn per call."""


def normal_polish_loss(rendered_cam: Tensor, target_cam: Tensor, foreground: Tensor) -> tuple[Tensor, Tensor]:
    """mean over valid pixels of 1 − cos(rendered, target); valid = foreground and the target has an
    estimate (non-zero). Returns (loss, number of valid pixels)."""
    valid = foreground.squeeze(-1) & (target_cam.norm(dim=-1) > 0.5)
    count = valid.sum()
    cos = F.cosine_similarity(rendered_cam, target_cam, dim=-1, eps=1e-8)
    loss = ((1.0 - cos) * valid).sum() / count.clamp_min(1)
    return loss, count


def shade_for_estimator(mesh: TriMesh, raster: RasterOutput, cameras: CameraBatch,
                        rasterizer: MeshRasterizer) -> tuple[Tensor, Tensor]:
    """What the normal estimator looks at: the mesh's albedo (vertex colours, else light grey) under
    a headlight, on a white background. Returns (rgb [B,H,W,3] in [0,1], opacity [B,H,W,1])."""
    with torch.no_grad():
        if mesh.vertex_colors is not None:
            albedo = rasterizer.interpolate(mesh.vertex_colors, raster, mesh.faces)
        else:
            albedo = torch.full_like(raster.world_pos, 0.8)
        facing = normals_to_camera(raster.normal, cameras)[..., 2:3].clamp_min(0.0)
        shaded = albedo * (0.35 + 0.65 * facing)
        opacity = raster.mask.detach().clamp(0.0, 1.0)
        rgb = shaded * opacity + (1.0 - opacity)
    return rgb, opacity


def polish_view_sampler(cfg: PolishConfig) -> ViewSampler:
    """Views with varying field of view and distance that frame the object (radius 0.5)."""
    return ViewSampler(
        elevation_range=cfg.elevation_range_deg, fovy_range=cfg.fovy_range_deg,
        fill_frame=True, object_radius=0.5, fill_margin=cfg.fill_margin,
    )


@dataclass
class PolishState:
    """The polish stage's state as it runs: the current mesh (what previews show)."""

    mesh: TriMesh


class PoolTargets:
    """The estimator's targets of the fixed view pool, estimated once per view before the first step (from the
    stage's starting mesh, masked by its coverage) and kept on the device.

    Estimating is a diffusion pipeline's own sampling loop, which reads values back as it goes; done up front,
    in batches, no optimisation step calls it, so the steps never wait for the device (issue 28). Which views
    a step draws is decided on the host (a Python RNG seeded once from the job's generator) and their indices
    go to the device without waiting (backend/device.py). A pool of P views drawn N times shows the
    estimator P·(1 − (1 − 1/P)^N) distinct views when it estimates on first draw (all 32, to 0.001, for the
    standard preset's 300 steps of 4), so estimating all P up front costs the same."""

    def __init__(self, cameras: CameraBatch, generator: torch.Generator | None):
        self.cameras = cameras
        self.rng = random.Random(draw_seed(generator))
        self.targets: Tensor | None = None
        """[P,H,W,3] camera-frame targets, one per pool view."""

    def estimate_all(self, mesh: TriMesh, rasterizer: MeshRasterizer, estimator: NormalTargets, batch: int,
                     smooth: bool) -> None:
        """Every pool view's target, from renders of `mesh`, `batch` views an estimator call."""
        rows = []
        with torch.no_grad():
            for start in range(0, self.cameras.batch_size, max(batch, 1)):
                cameras = self.cameras[start:start + max(batch, 1)]
                raster = rasterizer.rasterize(mesh, cameras, smooth_normals=smooth)
                rgb, opacity = shade_for_estimator(mesh, raster, cameras, rasterizer)
                rows.append(estimator(rgb, opacity, cameras))
        self.targets = torch.cat(rows)

    def draw(self, n: int) -> Tensor:
        """The pool indices of the next `n` views, on the pool's device."""
        views = [self.rng.randrange(self.cameras.batch_size) for _ in range(n)]
        return to_device(torch.tensor(views), self.cameras.c2w.device)

    def __getitem__(self, views: Tensor) -> Tensor:
        assert self.targets is not None  # estimate_all ran before the first step
        return self.targets[views]


def polish_hull(reference: ReferenceView | None, device: torch.device | str) -> VisualHull | None:
    """The pictures' visual hull (PolishConfig.silhouette_hull) from each picture at its own size; None for one
    picture (its camera is placed, not exact) or none."""
    if reference is None or not reference.more:
        return None
    views = reference.views()
    return VisualHull([v.camera.to(device) for v in views], [v.mask[..., 0].to(device) for v in views])


def polish_silhouettes(reference: ReferenceView | None, size: int, device: torch.device | str
                       ) -> list[ScaledReference]:
    """The pictures whose silhouettes polish keeps (module docstring): every picture of a multi-view request,
    at `size` pixels wide; none for one picture or none.

    Why (BENCHMARKS.md, "Several pictures, several cameras"): the torus from three pictures, seed 2, had its
    hole after DMTet (0.930 from above) and polish took 0.04 off it, ending under the bound. On one such DMTet
    mesh the method's polish moved the pictures' silhouettes (IoU with their masks 0.98 -> 0.93 / 0.96 / 0.95),
    and it is the normal estimator's targets that move them: without the estimator term they stay at 0.98,
    and without the normal-consistency or the Laplacian term they move as much. The micro estimator's
    normals on 64-px views from −10° to 45° do not see a thin rim or a hole from above; nothing else in
    the loss does either. The pictures are exact observations of the silhouette, which the method's polish
    means to keep (it corrects normals "inside the mask", METHOD.md) and which every other geometry stage
    holds with its reference mask loss (stages/base.py); with the term the silhouettes stay at 0.98-0.99.
    Weight 100 as SILHOUETTE_WEIGHT says."""
    if reference is None or not reference.more:
        return []
    refs = scaled_references(reference, size, device)
    return refs if isinstance(refs, list) else [refs]


def silhouette_loss(rasterizer: MeshRasterizer, mesh: TriMesh, refs: list[ScaledReference]) -> Tensor:
    """Mean over `refs` of MSE(the mesh's antialiased coverage at each picture's camera, its mask)."""
    losses = [F.mse_loss(rasterizer.rasterize(mesh, ref.camera).mask, ref.mask) for ref in refs]
    return torch.stack(losses).mean()


def _estimator_losses(cfg: PolishConfig, current: TriMesh, offsets: Tensor, cameras: CameraBatch,
                      target: Tensor, raster: RasterOutput) -> tuple[Tensor, dict[str, Tensor]]:
    """The method's loss (module docstring) on one batch of views, rasterised as `raster`, against `target`."""
    rendered = normals_to_camera(raster.normal, cameras)
    losses: dict[str, Tensor] = {}
    losses["normal"], _ = normal_polish_loss(rendered, target.to(rendered.dtype), raster.foreground)
    losses["normal_consistency"] = mesh_normal_consistency(current.vertices, current.faces)
    losses["laplacian"] = mesh_laplacian(offsets, current.faces)
    total = (cfg.normal_weight * losses["normal"]
             + cfg.consistency_weight * losses["normal_consistency"]
             + cfg.laplacian_weight * losses["laplacian"])
    return total, losses


def run_polish(cfg: PolishConfig, mesh: TriMesh, targets: NormalTargets | None, reference: ReferenceView | None,
               reporter: StageReporter, *, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu", rasterizer: MeshRasterizer | None = None,
               move_weights: Tensor | None = None) -> TriMesh:
    """Polish `mesh` (object frame, radius 0.5) and return the polished mesh (same topology).

    The geometry stages' signature: `targets` (the normal estimator) is the guidance, and may be None only
    for the smoothness ablation; the reference view is used only when it has several pictures (their
    silhouettes, polish_silhouettes).
    `move_weights` [V] (a masked refine, backend/refine_mask.py) scales each vertex's offset: a vertex of
    weight 0 stays exactly where it is."""
    if cfg.loss == "normal_estimator" and targets is None:
        raise ValueError("the normal_estimator polish loss needs a NormalTargets provider")
    rasterizer = rasterizer or MeshRasterizer()
    mesh = mesh.detach().to(device)
    base = mesh.vertices.clone()
    offsets = torch.zeros_like(base, requires_grad=True)
    scale = None if move_weights is None else move_weights.to(device=device, dtype=base.dtype)[:, None]

    def moved() -> Tensor:
        return base + (offsets if scale is None else scale * offsets)

    # fused: one kernel per step, step count on the parameters' device. The default Adam reads its step count
    # (.item()) every step; that count is a CPU tensor, so no device sync, but the sync counter cannot tell.
    optimiser = torch.optim.Adam([offsets], lr=cfg.lr, fused=True)
    sampler = polish_view_sampler(cfg)
    pool = None
    if cfg.view_pool > 0 and cfg.loss == "normal_estimator":
        pool = PoolTargets(sampler.sample(cfg.view_pool, cfg.render_size, cfg.render_size, generator, device),
                           generator)
    smooth = cfg.rendered_normals == "smooth"
    silhouettes = polish_silhouettes(reference, cfg.render_size, device) if cfg.silhouette_weight > 0 else []
    hull = polish_hull(reference, device) if cfg.silhouette_hull else None
    if pool is not None:
        pool.estimate_all(mesh, rasterizer, targets, cfg.estimator_batch, smooth)
    state = PolishState(mesh)
    reporter.watch(state)
    for step in range(cfg.steps):
        reporter.check_cancel()
        current = mesh.with_vertices(moved())
        if cfg.loss == "normal_estimator" and targets is not None:
            if pool is not None:
                views = pool.draw(cfg.batch_size)
                cameras = pool.cameras[views]
                raster = rasterizer.rasterize(current, cameras, smooth_normals=smooth)
                target = pool[views]
            else:
                cameras = sampler.sample(cfg.batch_size, cfg.render_size, cfg.render_size, generator, device)
                raster = rasterizer.rasterize(current, cameras, smooth_normals=smooth)
                rgb, opacity = shade_for_estimator(current, raster, cameras, rasterizer)
                with torch.no_grad():
                    target = targets(rgb, opacity, cameras)
            total, losses = _estimator_losses(cfg, current, offsets, cameras, target, raster)
        else:
            losses = {"normal_consistency": mesh_normal_consistency(current.vertices, current.faces)}
            total = cfg.smoothness_weight * losses["normal_consistency"]
        if silhouettes:
            losses["silhouette"] = silhouette_loss(rasterizer, current, silhouettes)
            total = total + cfg.silhouette_weight * losses["silhouette"]
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = offsets.grad.detach().norm() if offsets.grad is not None else torch.zeros((), device=device)
        optimiser.step()
        if hull is not None:
            with torch.no_grad():
                # the offset that puts the vertex where the hull allows (a vertex of move weight 0 never leaves)
                inside = hull.project_inside(moved())
                offsets.copy_(inside - base if scale is None
                              else torch.where(scale > 0, (inside - base) / scale.clamp_min(1e-12), offsets))
        state.mesh = mesh.with_vertices(moved().detach())
        # 0-dim device tensors: the reporter reads them back at its reporting steps only.
        report: dict[str, Tensor | float] = {k: v.detach() for k, v in losses.items()}
        report["total"] = total.detach()
        report["grad_norm"] = grad_norm
        reporter.progress(step + 1, cfg.steps, report)
    return mesh.with_vertices(moved().detach())
