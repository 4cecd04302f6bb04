"""NeRF stage: a hash-grid density + albedo field fitted by volume rendering.

Per step: reference-view losses (if a reference is given), the guidance loss on a batch of
sampled views (albedo shading, with volume normals when the orientation term or the guidance
wants them), orientation / sparsity / opacity regularisers. The occupancy grid that lets the
volume renderer skip empty space is refreshed every `occupancy_every` steps.

The stage ends with NerfState.extract_mesh(): marching cubes on the density at `iso_density`, or, with
several reference pictures (exact cameras) and NerfConfig.iso_fit (off by default), at the level whose solid
reproduces their silhouettes best (fit_iso_level); the NeuS stage starts from the solid at the same level.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config_fields import ranged
from ..geometry.fields import DensityField, FieldConfig, evaluate_on_grid
from ..geometry.hashgrid import HashGridConfig
from ..geometry.marching import keep_main_solid, marching_cubes
from ..geometry.mesh import TriMesh, clean_mesh, normalize_to_unit
from ..geometry.metrics import mask_iou
from ..geometry.regularisers import opacity_entropy_loss, orientation_loss, sparsity_loss
from ..guidance.base import Guidance, GuidanceInput
from ..render.cameras import CameraBatch, ViewSampler
from ..render.rasterize import MeshRasterizer
from ..render.volume import NerfVolume, OccupancyGrid, VolumeRenderConfig, render_volume
from ..schedules import stage_progress
from .alignment import AlignmentConfig, ReferenceAlignment
from .base import (
    Ramp,
    ReferenceView,
    ReferenceWeights,
    ResolutionSchedule,
    ScaledReference,
    StageRender,
    StageReporter,
    adam_groups,
    scaled_references,
)
from .step import StepLoss, optimiser_step, reference_or_guidance, seeded_init

log = logging.getLogger(__name__)


def _nerf_field() -> FieldConfig:
    # DreamCraft3D's coarse NeRF takes normals by forward differences at 0.01 world units
    # (configs/dreamcraft3d-coarse-nerf.yaml `normal_type: "finite_difference"`, which its
    # threestudio/models/geometry/implicit_volume.py computes as (f(x + eps e_i) - f(x)) / eps); they are one
    # option away. The default stays analytic: with the fused double backward it is the cheaper of the two
    # (one NeRF training render + backward at 128 px, 64 samples: 45.9 GFLOP analytic, 84.6 forward
    # differences, FlopCounterMode; 3.3 s against 6.0 s on the CPU at 32 px).
    return FieldConfig(grid=HashGridConfig(n_levels=16, log2_hashmap_size=19, base_resolution=16,
                                           start_levels=8, unlock_until=0.8),
                       normal_stencil="forward", normal_eps=0.01)


def _reference_weights() -> ReferenceWeights:
    # DreamCraft3D configs/dreamcraft3d-coarse-nerf.yaml: lambda_rgb 1000, lambda_mask 100, lambda_depth_rel
    # 0.05; freq.ref_or_guidance "alternate", n_ref 2
    return ReferenceWeights(rgb=Ramp(1000.0), mask=Ramp(100.0), depth=Ramp(0.05), resolution=128, alternate_every=2)


@dataclass
class NerfConfig:
    steps: int = ranged(5000, 1, 200_000)
    """Optimisation steps."""
    batch_size: int = ranged(1, 1, 64)
    """Training views per step."""
    resolution: ResolutionSchedule = field(default_factory=lambda: ResolutionSchedule(128, 384, 0.6))
    """Training-view render size (DreamCraft3D coarse-nerf: 128 then 384 px from step 3000 of 5000)."""
    views: ViewSampler = field(default_factory=ViewSampler)
    """Training-view distribution (elevation, azimuth, distance, field of view)."""
    density: FieldConfig = field(default_factory=_nerf_field)
    """Density field (hash grid + MLPs)."""
    render: VolumeRenderConfig = field(default_factory=VolumeRenderConfig)
    """Volume rendering (samples per ray, occupancy grid, background)."""
    lr_encoding: float = ranged(1e-2, 0, 1)
    """Adam learning rate of the hash tables."""
    lr_network: float = ranged(1e-3, 0, 1)
    """Adam learning rate of the MLPs."""
    reference: ReferenceWeights = field(default_factory=_reference_weights)
    """Reference-view loss weights."""
    align: AlignmentConfig = field(default_factory=AlignmentConfig)
    """Learn where an artist's picture puts its object (stages/alignment.py): off by default."""
    guidance_weight: Ramp = field(default_factory=lambda: Ramp(1.0))
    """Weight of the guidance loss."""
    guidance_normals: bool = False
    """Render normals for the guidance (their cost per sample: density.normals)."""
    orientation_weight: Ramp = field(default_factory=lambda: Ramp(1.0, 10.0))
    """Ref-NeRF orientation penalty (needs normals; 0 skips them)."""
    sparsity_weight: Ramp = field(default_factory=lambda: Ramp(0.1, 10.0))
    """Mean opacity penalty."""
    opacity_weight: Ramp = field(default_factory=lambda: Ramp(0.1, 10.0))
    """Binary-entropy penalty on opacity."""
    occupancy_every: int = ranged(16, 1, 1_000_000)
    """Steps between occupancy-grid refreshes."""
    occupancy_warmup: int = ranged(32, 0, 1_000_000)
    """Steps before the first refresh (everything counts as occupied until then)."""
    occupancy_density: float = ranged(0.01, 0, 1e6)
    """Cells whose density stays below this are skipped."""
    iso_density: float = ranged(5.0, 0, 1e6)
    """Density level of the extracted surface (and of the solid the NeuS stage starts from)."""
    iso_fit: bool = False
    """With several reference pictures, take the surface at the level of ISO_LADDER × iso_density whose solid's
    silhouettes agree best with the pictures' masks (fit_iso_level) instead of at iso_density itself. One
    picture keeps iso_density (its silhouette leaves the depth free). Off by default: it mends the torus from
    three pictures at seed 0 (from above 0.70 -> 0.90), but alone it leaves the hole from above under the
    bound at seed 2 (two pictures 0.883, three 0.859). Its DMTet "ends lower" not by a worse shape (in the NeuS
    mesh's normalisation 0.952 against 0.938 without the fit) but because the fit makes NeuS's torus its true
    size, and the bumps that DMTet and polish grow on the rim where no silhouette holds it then widen the
    bounding sphere the score normalises by (DmtetConfig.silhouette_hull; BENCHMARKS.md, "Several pictures,
    several cameras")."""
    mesh_resolution: int = ranged(128, 8, 1024)
    """Lattice points per axis for marching cubes."""


@dataclass
class NerfState:
    field: DensityField
    cfg: NerfConfig
    occupancy: OccupancyGrid
    steps_done: int = 0
    seconds: float = 0.0
    alignment: ReferenceAlignment | None = None
    """The picture's learnt shift and scale (NerfConfig.align), or None."""
    iso_level: float | None = None
    """The surface's density level when fit_iso_level chose it; None: cfg.iso_density."""

    @property
    def level(self) -> float:
        """The density level of the extracted surface and of the solid NeuS starts from."""
        return float(self.cfg.iso_density if self.iso_level is None else self.iso_level)

    def render(self, cameras: CameraBatch, *, want_normals: bool = True,
               generator: torch.Generator | None = None) -> StageRender:
        """Volume render (render.volume.render_volume); normal and orientation only with want_normals."""
        return StageRender.from_volume(render_volume(NerfVolume(self.field), cameras, self.field.bound,
                                                     self.cfg.render, self.occupancy, want_normals=want_normals,
                                                     generator=generator))

    @torch.no_grad()
    def extract_mesh(self, normalize: bool = True) -> TriMesh:
        """Marching-cubes surface at `level`, cleaned, with vertex albedo; with `normalize`
        in the object frame (bbox centre at the origin, bounding-sphere radius 0.5, Z up)."""
        dev = next(self.field.parameters()).device
        values = evaluate_on_grid(self.field.density, self.field.bound, self.cfg.mesh_resolution, dev)
        verts, faces = _main_surface(values.cpu().numpy(), self.field.bound, self.level)
        return _finish_mesh(verts, faces, self.field.color, dev, normalize)

    def state_dict(self) -> dict[str, Any]:
        return {"field": self.field.state_dict(), "occupancy": self.occupancy.cells.cpu(),
                "steps_done": self.steps_done, "active_levels": self.field.encoding.active_levels,
                "alignment": None if self.alignment is None else self.alignment.raw.detach().cpu(),
                "iso_level": self.iso_level}

    @classmethod
    def from_state_dict(cls, cfg: NerfConfig, state: dict[str, Any], device: torch.device | str = "cpu"
                        ) -> NerfState:
        f = DensityField(cfg.density).to(device)
        f.load_state_dict(state["field"])
        f.encoding.active_levels = int(state["active_levels"])
        occ = OccupancyGrid(cfg.density.bound, cfg.render.occupancy_resolution, device)
        occ.cells = state["occupancy"].to(device)
        raw = state.get("alignment")
        alignment = None if raw is None else ReferenceAlignment(cfg.align, raw).to(device)
        return cls(f, cfg, occ, int(state["steps_done"]), alignment=alignment, iso_level=state.get("iso_level"))


def _main_surface(values: np.ndarray, bound: float, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of the main solid of a density lattice above `level` (keep_main_solid)."""
    lattice = keep_main_solid(values, level, inside="above")
    return marching_cubes(lattice, bound, level, inside="above")


ISO_LADDER = (1.0,) + tuple(2.0 ** (k / 4) for k in range(-8, 5) if k != 0)
"""The levels fit_iso_level tries, as multiples of iso_density: 1 first (kept on a tie), then 2^(k/4) for k in
-8..4 (0.25 to 2 times, quarter octaves)."""


@torch.no_grad()
def fit_iso_level(state: NerfState, refs: list[ScaledReference], rasterizer: MeshRasterizer | None = None
                  ) -> tuple[float, float]:
    """(level, mean silhouette IoU): the density level of ISO_LADDER × iso_density whose main solid, seen from
    each reference picture's camera, covers that picture's mask best (IoU of the covered pixels with
    mask > 0.5, averaged over the pictures).

    Why: the density's scale is what the stage's steps made of it, not a constant. In the micro preset's 160
    steps it peaks at 6.4-6.8 (the torus from two and from three pictures, seed 0), just above iso_density 5,
    and the solid above 5 is a few peaks: from three pictures it fell into two half rings (618 and 473 of
    48³ cells), the main solid kept one, and the NeuS stage started from a broken ring (from above 0.18 after
    NeRF, 0.70 after NeuS). The same field at level 3.5 is one ring with its hole (silhouette IoU 0.85 / 0.92 /
    0.95 with the three pictures, 0.91 from above): the volume render had the object, the fixed level lost
    it (BENCHMARKS.md, "Several pictures, several cameras"). With several exact cameras the pictures'
    silhouettes pin the solid from several sides, so the level that reproduces them is measured, not
    assumed; threestudio's own answer to the same problem is an "auto" isosurface threshold
    (models/geometry/base.py, the mean of the density grid above 1e-5), which ignores the pictures."""
    rasterizer = rasterizer or MeshRasterizer()
    dev = next(state.field.parameters()).device
    values = evaluate_on_grid(state.field.density, state.field.bound, state.cfg.mesh_resolution, dev).cpu().numpy()
    best_level, best_iou = state.cfg.iso_density, -1.0
    for factor in ISO_LADDER:
        level = state.cfg.iso_density * factor
        verts, faces = _main_surface(values, state.field.bound, level)
        if len(faces) == 0:
            continue
        mesh = TriMesh(torch.as_tensor(verts, device=dev, dtype=torch.float32), torch.as_tensor(faces, device=dev))
        iou = float(np.mean([mask_iou(rasterizer.rasterize(mesh, ref.camera.to(dev)).foreground.float(), ref.mask)
                             for ref in refs]))
        if iou > best_iou:
            best_level, best_iou = level, iou
    return best_level, best_iou


def _finish_mesh(verts: np.ndarray, faces: np.ndarray, color_fn, device, normalize: bool) -> TriMesh:
    mesh = TriMesh(torch.as_tensor(verts, device=device), torch.as_tensor(faces, device=device))
    if mesh.num_faces == 0:
        log.warning("extracted surface is empty")
        return mesh
    mesh = clean_mesh(mesh)
    colors = torch.cat([color_fn(mesh.vertices[i:i + 65536]) for i in range(0, mesh.num_vertices, 65536)])
    mesh = TriMesh(mesh.vertices, mesh.faces, None, colors.clamp(0, 1))
    if normalize:
        mesh, _ = normalize_to_unit(mesh)
    return mesh


def draw_generator(generator: torch.Generator, device: torch.device | str) -> torch.Generator:
    """The generator for a step's per-sample random draws (ray jitter, eikonal points): `generator` itself
    where it lives on `device` (a CPU run keeps its random stream), else one on `device` seeded once from it,
    so that the millions of numbers a render jitters by are drawn where they are used, not by the host and
    copied (issue 28)."""
    dev = torch.device(device)
    if generator.device.type == dev.type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(dev).manual_seed(seed)


def run_nerf(cfg: NerfConfig, guidance: Guidance, reference: ReferenceView | None, reporter: StageReporter,
             *, generator: torch.Generator, device: torch.device | str, picture: bool = False) -> NerfState:
    """The stage; when the reference is an artist's `picture` and cfg.align.enabled, the picture's shift and
    scale are learnt with the field (stages/alignment.py) and kept in the state."""
    start = time.perf_counter()
    with seeded_init(generator):  # MLP initialisation
        density = DensityField(cfg.density).to(device)
    state = NerfState(density, cfg, OccupancyGrid(cfg.density.bound, cfg.render.occupancy_resolution, device))
    reporter.watch(state)
    groups = [(list(density.encoding.parameters()), cfg.lr_encoding),
              (list(density.geometry_net.parameters()) + list(density.color_net.parameters()), cfg.lr_network)]
    ref = scaled_references(reference, cfg.reference.resolution, device)
    if picture and cfg.align.enabled and ref is not None and not isinstance(ref, list):  # exact cameras: no shift
        state.alignment = ReferenceAlignment(cfg.align).to(device)
        groups.append((list(state.alignment.parameters()), cfg.align.lr))
    opt = adam_groups(groups)
    draws = draw_generator(generator, device)
    loss: StepLoss | None = None
    for step in range(cfg.steps):
        reporter.check_cancel()
        p = stage_progress(step, cfg.steps)
        density.update_progress(p)
        if step >= cfg.occupancy_warmup and step % cfg.occupancy_every == 0:
            state.occupancy.update(lambda x: density.density(x) > cfg.occupancy_density, generator)
        w_orient = cfg.orientation_weight.at(p)
        want_normals = cfg.guidance_normals or w_orient > 0
        loss = StepLoss.start(device, loss)
        do_reference, do_guidance = reference_or_guidance(step, cfg.reference.alternate_every, ref is not None)
        if do_reference:
            # normals on the reference view only for the reference normal loss
            loss.add_reference(functools.partial(state.render, want_normals=cfg.reference.normal.at(p) > 0,
                                                 generator=draws),
                               ref if state.alignment is None else state.alignment.apply(ref), cfg.reference, p)
        if do_guidance:
            res = cfg.resolution.at(p)
            cams = cfg.views.sample(cfg.batch_size, res, res, generator, device)
            out = state.render(cams, want_normals=want_normals, generator=draws)
            loss.add_guidance(guidance, GuidanceInput(out.rgb, out.opacity, cams,
                                                      normal=out.normal if cfg.guidance_normals else None,
                                                      shading="albedo", step=step, total_steps=cfg.steps),
                              cfg.guidance_weight.at(p))
            # 3. regularisers, on the sampled views
            if w_orient > 0 and out.orientation is not None:
                loss.add("orientation", w_orient, orientation_loss(out.orientation, out.opacity))
            for name, w, fn in (("sparsity", cfg.sparsity_weight, sparsity_loss),
                                ("opacity", cfg.opacity_weight, opacity_entropy_loss)):
                if w.at(p) > 0:
                    loss.add(name, w.at(p), fn(out.opacity))
        # the gather buffers' need (VolumeRenderConfig.empty_space) is read back when the losses are
        optimiser_step(opt, loss, reporter, step, cfg.steps, capacities=[state.occupancy.kept])
    state.steps_done = cfg.steps
    if cfg.iso_fit and isinstance(ref, list) and len(ref) > 1:
        state.iso_level, iou = fit_iso_level(state, ref)  # exact cameras: no alignment
        log.info("NeRF surface at density %.3g (pictures' silhouette IoU %.3f)", state.iso_level, iou)
    state.seconds = time.perf_counter() - start
    return state
