"""NeuS stage: a hash-grid SDF + albedo field, initialised from the NeRF, fitted by NeuS volume rendering.

Sharpness schedule: NeuS's logistic density uses an inverse standard deviation s
(`sharpness`), ramped up so that the surface starts soft (wide gradients) and ends sharp;
the section-cosine annealing (`cos_anneal`) goes from 0 to 1 in the first steps as in NeuS.
Normals are the normalised SDF gradients, which the alpha computation needs anyway, so
the guidance always gets them. The occupancy grid keeps only a band |sdf| < band around
the surface, band = max(occupancy_band_cells * cell diagonal, occupancy_band_sharpness / s),
which is where NeuS's alpha is non-negligible.

The stage ends with NeusState.extract_mesh(): marching cubes on the SDF at 0.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config_fields import ranged
from ..geometry.fields import FieldConfig, SdfField, evaluate_on_grid
from ..geometry.hashgrid import HashGridConfig
from ..geometry.marching import keep_main_solid, marching_cubes
from ..geometry.mesh import TriMesh
from ..geometry.regularisers import eikonal_loss
from ..geometry.transitions import sdf_field_from_density, sdf_field_from_mesh
from ..guidance.base import Guidance, GuidanceInput
from ..render.cameras import CameraBatch, ViewSampler
from ..render.volume import NeusVolume, OccupancyGrid, VolumeRenderConfig, render_volume
from ..schedules import stage_progress
from .base import (
    Ramp,
    ReferenceView,
    ReferenceWeights,
    ResolutionSchedule,
    StageRender,
    StageReporter,
    adam_groups,
    scaled_references,
)
from .nerf import NerfState, _finish_mesh, draw_generator
from .step import StepLoss, optimiser_step, reference_or_guidance, seeded_init

log = logging.getLogger(__name__)


def _neus_field() -> FieldConfig:
    return FieldConfig(grid=HashGridConfig(n_levels=16, log2_hashmap_size=19, base_resolution=16,
                                           start_levels=16))


def _reference_weights() -> ReferenceWeights:
    # DreamCraft3D configs/dreamcraft3d-coarse-neus.yaml: lambda_rgb 1000, lambda_mask 100, lambda_depth_rel
    # 0.05; freq.ref_or_guidance "alternate", n_ref 2
    return ReferenceWeights(rgb=Ramp(1000.0), mask=Ramp(100.0), depth=Ramp(0.05), resolution=128, alternate_every=2)


@dataclass
class NeusConfig:
    steps: int = ranged(5000, 1, 200_000)
    """Optimisation steps."""
    batch_size: int = ranged(1, 1, 64)
    """Training views per step."""
    resolution: ResolutionSchedule = field(default_factory=lambda: ResolutionSchedule(256))
    """Training-view render size."""
    views: ViewSampler = field(default_factory=ViewSampler)
    """Training-view distribution."""
    sdf: FieldConfig = field(default_factory=_neus_field)
    """SDF field (hash grid + MLPs)."""
    render: VolumeRenderConfig = field(default_factory=VolumeRenderConfig)
    """Volume rendering (samples per ray, occupancy grid, background)."""
    lr_encoding: float = ranged(1e-2, 0, 1)
    """Adam learning rate of the hash tables."""
    lr_network: float = ranged(1e-3, 0, 1)
    """Adam learning rate of the MLPs."""
    sharpness: Ramp = field(default_factory=lambda: Ramp(50.0, 800.0))
    """NeuS inverse standard deviation s of the logistic density (ramped up over the stage: soft -> sharp)."""
    cos_anneal: Ramp = field(default_factory=lambda: Ramp(0.0, 1.0, end_at=0.1))
    """NeuS cosine annealing ratio (0 -> 1 over the first tenth of the stage)."""
    reference: ReferenceWeights = field(default_factory=_reference_weights)
    """Reference-view loss weights."""
    guidance_weight: Ramp = field(default_factory=lambda: Ramp(1.0))
    """Weight of the guidance loss."""
    eikonal_weight: Ramp = field(default_factory=lambda: Ramp(0.1))
    """Eikonal regulariser weight."""
    eikonal_points: int = ranged(4096, 0, 1 << 22)
    """Random points in the box per step for the eikonal term."""
    occupancy_every: int = ranged(16, 1, 1_000_000)
    """Steps between occupancy-band refreshes."""
    occupancy_band_cells: float = ranged(1.5, 0, 1000)
    """Band half-width in occupancy-cell diagonals."""
    occupancy_band_sharpness: float = ranged(4.0, 0, 1000)
    """Band half-width in units of 1/s (where the logistic density has decayed)."""
    init_steps: int = ranged(300, 0, 100_000)
    """Regression steps fitting the SDF to the NeRF's thresholded density."""
    init_batch: int = ranged(8192, 1, 1 << 22)
    """Points per regression step."""
    init_resolution: int = ranged(96, 8, 1024)
    """Lattice resolution of the density -> signed distance conversion."""
    mesh_resolution: int = ranged(128, 8, 1024)
    """Lattice points per axis for marching cubes."""


@dataclass
class NeusState:
    field: SdfField
    cfg: NeusConfig
    occupancy: OccupancyGrid
    sharpness: float
    cos_anneal: float = 1.0
    steps_done: int = 0
    seconds: float = 0.0

    def volume(self) -> NeusVolume:
        return NeusVolume(self.field, self.sharpness, self.cos_anneal)

    def render(self, cameras: CameraBatch, *, generator: torch.Generator | None = None) -> StageRender:
        """Volume render with normals (render.volume.render_volume)."""
        return StageRender.from_volume(render_volume(self.volume(), cameras, self.field.bound, self.cfg.render,
                                                     self.occupancy, want_normals=True, generator=generator))

    def update_occupancy(self, generator: torch.Generator | None = None) -> None:
        occ = self.occupancy
        cell_diag = 2 * occ.bound / occ.resolution * math.sqrt(3)
        band = max(self.cfg.occupancy_band_cells * cell_diag, self.cfg.occupancy_band_sharpness / self.sharpness)
        occ.update(lambda x: self.field.sdf(x).abs() < band, generator)

    @torch.no_grad()
    def extract_mesh(self, normalize: bool = True) -> TriMesh:
        """Marching-cubes zero level set, cleaned, with vertex albedo; with `normalize` in the object
        frame (bbox centre at the origin, bounding-sphere radius 0.5, Z up)."""
        dev = next(self.field.parameters()).device
        values = evaluate_on_grid(self.field.sdf, self.field.bound, self.cfg.mesh_resolution, dev)
        lattice = keep_main_solid(values.cpu().numpy(), 0.0, inside="below")
        verts, faces = marching_cubes(lattice, self.field.bound, 0.0, inside="below")
        return _finish_mesh(verts, faces, self.field.color, dev, normalize)

    def state_dict(self) -> dict[str, Any]:
        return {"field": self.field.state_dict(), "occupancy": self.occupancy.cells.cpu(),
                "sharpness": self.sharpness, "cos_anneal": self.cos_anneal, "steps_done": self.steps_done,
                "active_levels": self.field.encoding.active_levels}

    @classmethod
    def from_state_dict(cls, cfg: NeusConfig, state: dict[str, Any], device: torch.device | str = "cpu"
                        ) -> NeusState:
        f = SdfField(cfg.sdf).to(device)
        f.load_state_dict(state["field"])
        f.encoding.active_levels = int(state["active_levels"])
        occ = OccupancyGrid(cfg.sdf.bound, cfg.render.occupancy_resolution, device)
        occ.cells = state["occupancy"].to(device)
        return cls(f, cfg, occ, float(state["sharpness"]), float(state["cos_anneal"]), int(state["steps_done"]))


def neus_from_nerf(cfg: NeusConfig, init: NerfState | TriMesh, *, generator: torch.Generator, device) -> NeusState:
    """NeRF -> NeuS hand-over (geometry/transitions.py): fit the SDF field to the density's surface, or to
    a mesh's signed distance when the artist edited the NeRF stage's mesh (in the object frame)."""
    with seeded_init(generator):
        sdf = SdfField(cfg.sdf).to(device)
    sdf.update_progress(0.0)
    fit = dict(resolution=cfg.init_resolution, steps=cfg.init_steps, batch=cfg.init_batch, lr=cfg.lr_encoding,
               generator=generator, device=device)
    if isinstance(init, TriMesh):
        sdf_field_from_mesh(init, sdf, **fit)
    else:
        sdf_field_from_density(init.field, sdf, threshold=init.level, **fit)
    state = NeusState(sdf, cfg, OccupancyGrid(cfg.sdf.bound, cfg.render.occupancy_resolution, device),
                      sharpness=cfg.sharpness.at(0.0), cos_anneal=cfg.cos_anneal.at(0.0))
    state.update_occupancy(generator)
    return state


def run_neus(cfg: NeusConfig, init: NerfState | TriMesh, guidance: Guidance, reference: ReferenceView | None,
             reporter: StageReporter, *, generator: torch.Generator, device: torch.device | str) -> NeusState:
    start = time.perf_counter()
    state = neus_from_nerf(cfg, init, generator=generator, device=device)
    reporter.watch(state)
    sdf = state.field
    opt = adam_groups([(list(sdf.encoding.parameters()), cfg.lr_encoding),
                       (list(sdf.geometry_net.parameters()) + list(sdf.color_net.parameters()), cfg.lr_network)])
    ref = scaled_references(reference, cfg.reference.resolution, device)
    bound = sdf.bound
    draws = draw_generator(generator, device)
    loss: StepLoss | None = None
    for step in range(cfg.steps):
        reporter.check_cancel()
        p = stage_progress(step, cfg.steps)
        sdf.update_progress(p)
        state.sharpness = cfg.sharpness.at(p)
        state.cos_anneal = cfg.cos_anneal.at(p)
        if step > 0 and step % cfg.occupancy_every == 0:
            state.update_occupancy(generator)
        loss = StepLoss.start(device, loss)
        do_reference, do_guidance = reference_or_guidance(step, cfg.reference.alternate_every, ref is not None)
        if do_reference:
            loss.add_reference(lambda cam: state.render(cam, generator=draws), ref, cfg.reference, p)
        if do_guidance:
            res = cfg.resolution.at(p)
            cams = cfg.views.sample(cfg.batch_size, res, res, generator, device)
            out = state.render(cams, generator=draws)
            loss.add_guidance(guidance, GuidanceInput(out.rgb, out.opacity, cams, normal=out.normal,
                                                      shading="albedo", step=step, total_steps=cfg.steps),
                              cfg.guidance_weight.at(p))
        # 3. eikonal regulariser at random points of the box
        w_eik = cfg.eikonal_weight.at(p)
        if w_eik > 0:
            x = (torch.rand(cfg.eikonal_points, 3, generator=draws, device=draws.device).to(device) * 2 - 1) * bound
            loss.add("eikonal", w_eik, eikonal_loss(sdf.gradient(x)))
        optimiser_step(opt, loss, reporter, step, cfg.steps, {"sharpness": state.sharpness},
                       capacities=[state.occupancy.kept])
    state.steps_done = cfg.steps
    state.seconds = time.perf_counter() - start
    return state
