"""DMTet stage: a deformable tetrahedral SDF grid, rasterised, with its own hash-grid colour field.

Representation (Shen et al. 2021): per grid vertex an SDF value and an offset
delta = deformation_scale * spacing * tanh(d), so vertices never leave their cell's
neighbourhood; marching tetrahedra turns (deformed vertices, SDF) into a triangle mesh that
is differentiable w.r.t. both, and the mesh rasteriser renders it (antialiased mask, so
silhouettes pull on the surface).

Per step (the method's schedule): reference-view losses when a reference is given; the
guidance on normal-shaded renders ((n+1)/2, "normal" shading) on 3 of every 4 steps
(`normal_steps_of_4`) and on albedo renders otherwise, with the colour render alongside, which
Zero123 always reads (GuidanceInput.colour_render); normal consistency (ramped 10 -> 1)
and an optional Laplacian term on the extracted mesh. Refining a given mesh adds a term that keeps the
surface near the input shape (`input_shape_loss`): without it nothing holds the artist's object, and the
guidance and the smoothing terms re-shape it freely.

A step extracts the surface into fixed-size buffers (`step_surface`, marching.PaddedSurface: degenerate
padding faces, which the rasterisers do not draw and the regularisers weigh 0), so that it never waits
for the GPU; the buffers' capacity is read back and grown at reporting steps (marching.SurfaceCapacity).
Extractions outside the steps (`surface`, `extract_mesh`, previews) are compacted exactly.

Continuing from a DmtetState (polish, texture):
- `state.surface()` is the current mesh as a TriMesh whose vertices are differentiable
  w.r.t. `state.sdf` and `state.deform` (the grid parameters): polish can fine-tune those
  (or take `state.extract_mesh()` and optimise per-vertex offsets of the fixed mesh).
- `state.color_field` (a geometry.fields.ColorField over the same box) gives albedo at any
  world point; texture keeps the mesh of `state.extract_mesh()` fixed and can start from
  this field.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..config_fields import ranged
from ..geometry.fields import ColorField, FieldConfig
from ..geometry.hashgrid import HashGridConfig
from ..geometry.marching import (
    PaddedSurface,
    SurfaceCapacity,
    keep_main_solid,
    marching_tetrahedra,
    marching_tetrahedra_padded,
    needed_capacity,
)
from ..geometry.mesh import TriMesh, clean_mesh, normalize_to_unit
from ..geometry.regularisers import mesh_laplacian, mesh_normal_consistency
from ..geometry.tets import TetGrid, make_tet_grid
from ..geometry.transitions import (
    fit_color_field,
    grid_sdf_from_field,
    mesh_signed_distance,
    sample_volume,
    vertex_color_function,
)
from ..geometry.visual_hull import VisualHull
from ..guidance.base import Guidance, GuidanceInput
from ..render.cameras import CameraBatch, ViewSampler
from ..render.rasterize import MeshRasterizer, RasterBackend
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
    shade_normals,
)
from .neus import NeusState
from .step import StepLoss, optimiser_step, reference_or_guidance, seeded_init

log = logging.getLogger(__name__)


def _color_field() -> FieldConfig:
    return FieldConfig(grid=HashGridConfig(n_levels=16, log2_hashmap_size=19, start_levels=16))


def _reference_weights() -> ReferenceWeights:
    return ReferenceWeights(rgb=Ramp(1000.0), mask=Ramp(100.0), depth=Ramp(0.0), resolution=256)


@dataclass
class DmtetConfig:
    steps: int = ranged(5000, 1, 200_000)
    """Optimisation steps."""
    batch_size: int = ranged(1, 1, 64)
    """Training views per step."""
    resolution: ResolutionSchedule = field(default_factory=lambda: ResolutionSchedule(1024))
    """Training-view render size."""
    views: ViewSampler = field(default_factory=ViewSampler)
    """Training-view distribution."""
    grid_resolution: int = ranged(128, 8, 512)
    """Tet-grid cells per axis."""
    grid_bound: float = ranged(0.7, 0.1, 10)
    """Half-size of the cube the tet grid covers (the object lives within radius 0.5)."""
    deformation_scale: float = ranged(0.5, 0, 10)
    """Largest vertex offset, in cell edge lengths."""
    color: FieldConfig = field(default_factory=_color_field)
    """Colour field (hash grid + MLP)."""
    color_chunk: int = ranged(65536, 1, 1 << 24)
    """Pixels whose colour is evaluated at once in a training render; beyond that, each chunk's colour-field
    activations are recomputed for the backward pass (ColorField.color_in_chunks): the same images and
    gradients. At 1,024 px the whole render's activations were 3.0 GB of the stage's peak (PyTorch hash grid,
    the dry run's count), its colours at 16 chunks about 0.1 GB (BENCHMARKS.md, issue 27)."""
    lr_sdf: float = ranged(5e-3, 0, 1)
    """Adam learning rate of the vertex SDF values."""
    lr_deform: float = ranged(5e-3, 0, 1)
    """Adam learning rate of the vertex deformations (tanh-space)."""
    lr_color: float = ranged(1e-2, 0, 1)
    """Adam learning rate of the colour field."""
    reference: ReferenceWeights = field(default_factory=_reference_weights)
    """Reference-view loss weights."""
    guidance_weight: Ramp = field(default_factory=lambda: Ramp(1.0))
    """Weight of the guidance loss."""
    normal_steps_of_4: int = ranged(3, 0, 4)
    """Of every 4 steps, how many show the guidance normal-shaded renders (the rest albedo)."""
    normal_consistency_weight: Ramp = field(default_factory=lambda: Ramp(10.0, 1.0))
    """Normal consistency between adjacent faces."""
    laplacian_weight: Ramp = field(default_factory=lambda: Ramp(0.0))
    """Uniform Laplacian smoothing of the extracted mesh."""
    color_init_steps: int = ranged(200, 0, 100_000)
    """Regression steps transferring the previous stage's albedo into the colour field."""
    # No counterpart in DreamCraft3D (its geometry stage starts from its own NeuS). 1000 holds a 24³ grid against
    # an oracle pulling each pixel by ½·(x − x_target), the strength of an SDS gradient, that wants a 0.07
    # thicker shape: Chamfer to the input 0.013 instead of 0.025 (tests/backend/stages/test_dmtet_input_shape.py).
    input_shape_weight: float = ranged(1000.0, 0, 1e6)
    """Refining a given mesh: weight of the term that keeps the surface near the input shape, the mean
    over surface vertices v of (max(|d_in(v)| − input_shape_tolerance, 0) / h)², with d_in the input
    mesh's signed distance (trilinear from the grid vertices) and h the grid spacing. 0 lets it drift."""
    input_shape_tolerance: float = ranged(0.02, 0, 1)
    """Distance from the input surface (object frame, radius 0.5) within which the surface moves freely:
    the room for the detail the guidance adds (0.02: about two cells of the 128³ grid)."""
    silhouette_hull: bool = False
    """With several reference pictures (exact cameras), take the surface of the DMTet solid intersected with
    the pictures' visual hull (geometry/visual_hull.py): max(sdf, hull's signed distance) at the deformed grid
    vertices, at every step and in the mesh handed on, so that nothing sticks out of a silhouette a picture
    shows. One picture leaves it off (its camera is placed, not exact). Why: on the torus from two pictures the
    stage grew bumps of a third of a 32³ cell on the rim where no silhouette holds it (the reference losses grow
    them, normal consistency holds them back), the mesh's bounding sphere grew 3 %, and the shape, which the
    score normalises to that sphere, lost 0.05 from above. Off by default: with the NeRF's level fit and
    polish's hull it holds the torus's hole at every seed measured (0.900-0.943 from above, two and three
    pictures), but it cuts the red cone's tip, thinner than a pixel in the pictures (held-out IoU 0.907 ->
    0.881; BENCHMARKS.md, "Several pictures, several cameras", visual_hull.COVERAGE)."""
    rasterizer: RasterBackend = "auto"
    """Mesh rasteriser back end."""
    background: float = ranged(1.0, 0, 1)
    """Grey level behind the object."""


class DmtetState:
    """Tet grid + per-vertex SDF and deformation parameters + colour field."""

    def __init__(self, cfg: DmtetConfig, grid: TetGrid, sdf: Tensor, color_field: ColorField):
        self.cfg = cfg
        self.grid = grid
        self.sdf = nn.Parameter(sdf.clone())
        self.deform = nn.Parameter(torch.zeros_like(grid.vertices))
        self.color_field = color_field
        self.rasterizer = MeshRasterizer(cfg.rasterizer)
        self.input_sdf: Tensor | None = None
        """[V] the input mesh's signed distance at the grid vertices when refining a given mesh, else None."""
        self.hull: VisualHull | None = None
        """The pictures' visual hull the surface is cut to (DmtetConfig.silhouette_hull), or None."""
        self.capacity: SurfaceCapacity | None = None
        """Buffer size of `step_surface`, set from the surface at its first call."""
        self.steps_done = 0
        self.seconds = 0.0

    def deformed_vertices(self) -> Tensor:
        """[V,3] grid vertices moved by their (bounded) offsets."""
        return self.grid.vertices + self.cfg.deformation_scale * self.grid.spacing * torch.tanh(self.deform)

    def solid_sdf(self, vertices: Tensor) -> Tensor:
        """[V] the SDF the surface is taken of at the deformed vertices [V,3]: `sdf`, or with a hull
        max(sdf, hull's signed distance), the solid intersected with the hull (the hull's values are
        constants: the gradient reaches `sdf` where the solid's own surface is the one kept)."""
        if self.hull is None:
            return self.sdf
        return torch.maximum(self.sdf, self.hull.sdf(vertices.detach()))

    def cut_to_hull(self) -> None:
        """Write the hull into `sdf` and drop it: the state's own SDF then has the surface that the
        stage's steps saw, for the stages after it and for a checkpoint."""
        if self.hull is not None:
            with torch.no_grad():
                self.sdf.copy_(self.solid_sdf(self.deformed_vertices()))
            self.hull = None

    def surface(self) -> TriMesh:
        """Marching-tetrahedra mesh, differentiable w.r.t. `sdf` and `deform` (no clean-up, no colours);
        compacted, which reads counts back from the device (one-off use; steps use `step_surface`)."""
        vertices = self.deformed_vertices()
        verts, faces = marching_tetrahedra(vertices, self.solid_sdf(vertices), self.grid.tets)
        return TriMesh(verts, faces)

    def step_surface(self) -> PaddedSurface:
        """The surface of an optimisation step, differentiable like `surface` but in buffers of a fixed
        capacity, so that it reads nothing back (the first call sizes them from the surface, which does).
        The step's need is kept for `capacity.request` at the next reporting step."""
        vertices = self.deformed_vertices()
        sdf = self.solid_sdf(vertices)
        if self.capacity is None:
            self.capacity = SurfaceCapacity(needed_capacity(vertices.detach(), sdf.detach(), self.grid.tets))
        self.capacity.poll()
        surface = marching_tetrahedra_padded(vertices, sdf, self.grid.tets, self.capacity.capacity)
        self.capacity.track(surface)
        return surface

    def render(self, cameras: CameraBatch, mesh: TriMesh | None = None) -> StageRender:
        """Rasterised surface: albedo over the background, opacity, world normals (background 0), depth."""
        mesh = self.surface() if mesh is None else mesh
        b, h, w = cameras.batch_size, cameras.height, cameras.width
        dev = cameras.device
        if mesh.num_faces == 0:
            z = torch.zeros(b, h, w, 1, device=dev)
            return StageRender(rgb=torch.full((b, h, w, 3), self.cfg.background, device=dev), opacity=z,
                               depth=z, normal=z.expand(b, h, w, 3))
        out = self.rasterizer.rasterize(mesh, cameras)
        fg = out.foreground.to(out.mask.dtype)
        albedo = self.color_field.color_in_chunks(out.world_pos.reshape(-1, 3), self.cfg.color_chunk)
        albedo = albedo.reshape(b, h, w, 3) * fg
        rgb = albedo + self.cfg.background * (1 - fg)
        rgb = self.rasterizer.antialias(rgb, out, mesh, cameras)
        return StageRender(rgb=rgb, opacity=out.mask, depth=out.depth, normal=out.normal)

    @torch.no_grad()
    def extract_mesh(self, normalize: bool = True) -> TriMesh:
        """The current surface, cleaned, with vertex albedo; with `normalize` in the object frame
        (bbox centre at the origin, bounding-sphere radius 0.5, Z up)."""
        mesh = self.surface().detach()
        if mesh.num_faces == 0:
            log.warning("DMTet surface is empty")
            return mesh
        mesh = clean_mesh(mesh)
        colors = self.color_field.color(mesh.vertices).clamp(0, 1)
        mesh = TriMesh(mesh.vertices, mesh.faces, None, colors)
        if normalize:
            mesh, _ = normalize_to_unit(mesh)
        return mesh

    def geometry_parameters(self) -> list[nn.Parameter]:
        """[sdf, deform]: what polish may fine-tune through `surface()`."""
        return [self.sdf, self.deform]

    def input_shape_loss(self, vertices: Tensor, weights: Tensor | None = None) -> Tensor:
        """The input-shape term (DmtetConfig.input_shape_weight) at surface vertices [N,3], averaged with
        `weights` [N] when given (PaddedSurface.vertex_weights: 0 on padding rows); 0 without an input
        mesh or a surface."""
        if self.input_sdf is None or vertices.shape[0] == 0:
            return vertices.sum() * 0
        r = self.cfg.grid_resolution + 1
        distance = sample_volume(self.input_sdf.reshape(r, r, r), self.cfg.grid_bound, vertices).abs()
        per_vertex = (torch.relu(distance - self.cfg.input_shape_tolerance) / self.grid.spacing).square()
        if weights is None:
            return per_vertex.mean()
        return (per_vertex * weights).sum() / weights.sum().clamp_min(1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"sdf": self.sdf.detach().cpu(), "deform": self.deform.detach().cpu(),
                "color_field": self.color_field.state_dict(), "steps_done": self.steps_done,
                "input_sdf": None if self.input_sdf is None else self.input_sdf.cpu()}

    @classmethod
    def from_state_dict(cls, cfg: DmtetConfig, state: dict[str, Any], device: torch.device | str = "cpu"
                        ) -> DmtetState:
        grid = make_tet_grid(cfg.grid_resolution, cfg.grid_bound, device)
        color = ColorField(cfg.color).to(device)
        color.load_state_dict(state["color_field"])
        s = cls(cfg, grid, state["sdf"].to(device), color)
        with torch.no_grad():
            s.deform.copy_(state["deform"].to(device))
        s.steps_done = int(state["steps_done"])
        if state.get("input_sdf") is not None:
            s.input_sdf = state["input_sdf"].to(device)
        return s


def dmtet_from_neus(cfg: DmtetConfig, init: NeusState, *, generator: torch.Generator, device) -> DmtetState:
    """NeuS -> DMTet: vertex SDF from the SDF field (floaters and inner bubbles removed), zero deformation,
    albedo distilled from the NeuS field."""
    grid = make_tet_grid(cfg.grid_resolution, cfg.grid_bound, device)
    r = cfg.grid_resolution + 1
    sdf = grid_sdf_from_field(init.field.sdf, grid.vertices).reshape(r, r, r).cpu().numpy()
    sdf = torch.as_tensor(keep_main_solid(sdf, 0.0, inside="below"), device=device).reshape(-1)
    with seeded_init(generator):
        color = ColorField(cfg.color).to(device)
    state = DmtetState(cfg, grid, sdf, color)
    with torch.no_grad():
        surface_points = state.surface().vertices
    fit_color_field(color, init.field.color, surface_points, steps=cfg.color_init_steps, batch=4096,
                    lr=cfg.lr_color, generator=generator)
    return state


def dmtet_from_mesh(cfg: DmtetConfig, mesh: TriMesh, *, generator: torch.Generator, device) -> DmtetState:
    """Mesh -> DMTet (refining a user's mesh, already in the object frame): vertex SDF = the mesh's signed
    distance (winding-number sign, robust to holes), albedo from its vertex colours (grey without)."""
    grid = make_tet_grid(cfg.grid_resolution, cfg.grid_bound, device)
    sdf = mesh_signed_distance(mesh.to(device), grid.vertices, cfg.grid_resolution + 1, grid.spacing)
    with seeded_init(generator):
        color = ColorField(cfg.color).to(device)
    state = DmtetState(cfg, grid, sdf, color)
    state.input_sdf = sdf.detach().clone()
    with torch.no_grad():
        surface_points = state.surface().vertices
    fit_color_field(color, vertex_color_function(mesh.to(device)), surface_points, steps=cfg.color_init_steps,
                    batch=4096, lr=cfg.lr_color, generator=generator)
    return state


def run_dmtet(cfg: DmtetConfig, init: NeusState | TriMesh, guidance: Guidance, reference: ReferenceView | None,
              reporter: StageReporter, *, generator: torch.Generator, device: torch.device | str) -> DmtetState:
    start = time.perf_counter()
    if isinstance(init, TriMesh):
        state = dmtet_from_mesh(cfg, init, generator=generator, device=device)
    else:
        state = dmtet_from_neus(cfg, init, generator=generator, device=device)
    reporter.watch(state)
    opt = adam_groups([([state.sdf], cfg.lr_sdf), ([state.deform], cfg.lr_deform),
                       (list(state.color_field.parameters()), cfg.lr_color)])
    ref = scaled_references(reference, cfg.reference.resolution, device)
    if cfg.silhouette_hull and isinstance(ref, list) and len(ref) > 1:  # exact cameras
        state.hull = VisualHull([r.camera for r in ref], [r.mask for r in ref])
    loss: StepLoss | None = None
    for step in range(cfg.steps):
        reporter.check_cancel()
        p = stage_progress(step, cfg.steps)
        state.color_field.update_progress(p)
        surface = state.step_surface()
        mesh = TriMesh(surface.vertices, surface.faces)
        loss = StepLoss.start(device, loss)
        # DreamCraft3D's geometry stage accumulates (reference and guidance every step): alternate_every 0
        do_reference, do_guidance = reference_or_guidance(step, cfg.reference.alternate_every, ref is not None)
        if do_reference:
            loss.add_reference(functools.partial(state.render, mesh=mesh), ref, cfg.reference, p)
        if do_guidance:
            # 2. guidance: normal-shaded renders on `normal_steps_of_4` of every 4 steps, albedo otherwise;
            # the colour render rides along for Zero123
            res = cfg.resolution.at(p)
            cams = cfg.views.sample(cfg.batch_size, res, res, generator, device)
            out = state.render(cams, mesh)
            normal_step = step % 4 < cfg.normal_steps_of_4
            shown = shade_normals(out.normal, out.opacity, cfg.background) if normal_step else out.rgb
            loss.add_guidance(guidance, GuidanceInput(shown, out.opacity, cams, normal=out.normal,
                                                      shading="normal" if normal_step else "albedo", step=step,
                                                      colour=out.rgb if normal_step else None,
                                                      total_steps=cfg.steps), cfg.guidance_weight.at(p))
        # 3. mesh regularisers
        w_nc, w_lap = cfg.normal_consistency_weight.at(p), cfg.laplacian_weight.at(p)
        if w_nc > 0:
            loss.add("normal_consistency", w_nc, mesh_normal_consistency(mesh.vertices, mesh.faces))
        if w_lap > 0:
            loss.add("laplacian", w_lap, mesh_laplacian(mesh.vertices, mesh.faces))
        if state.input_sdf is not None and cfg.input_shape_weight > 0:
            loss.add("input_shape", cfg.input_shape_weight,
                     state.input_shape_loss(mesh.vertices, surface.vertex_weights()))
        # the surface buffers' need is read back when the reporter reads the losses back
        optimiser_step(opt, loss, reporter, step, cfg.steps,
                       capacities=[state.capacity] if state.capacity is not None else [])
    state.cut_to_hull()
    state.steps_done = cfg.steps
    state.seconds = time.perf_counter() - start
    return state
