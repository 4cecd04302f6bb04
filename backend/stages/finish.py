"""Finishing stage (issue 30): the polished surface as a game-ready low mesh at the artist's face budget,
quad-dominant (or triangles on request), with UVs made for it, and optional LODs.

Between polish and texture. The polished mesh stays the job's detail (carry.detail): the texture stage
bakes the detail into a tangent-space normal map on the low mesh's own UVs first, lights the guidance's views
through it, and optimises the colours on those UVs, so nothing is resampled. The budget counts faces as
Blender does (a quad is one face).

Steps: remesh to the budget (geometry/remesh.py: Instant Meshes in its own process under a time limit,
quadric decimation as the fallback, said in the stage's progress as `remesh_fallback`), unwrap the low
mesh's triangles with xatlas (bake.unwrap_uv), and keep as polygons only the faces whose triangles the
unwrap kept in one piece (a face whose fan a seam cuts becomes its triangles: a polygon has one UV per
corner). LODs: remeshed again at `lod_ratio`, `lod_ratio`^2, ... of the budget, each with its own UVs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.messages import BUDGET_CAPPED, REMESH_FALLBACK
from dreampolish.protocol.scene import MeshPayload

from .. import bake
from ..config_fields import ranged
from ..geometry.mesh import TriMesh, normalize_to_unit
from ..geometry.metrics import chamfer_fraction
from ..geometry.remesh import FaceSizes, PolyMesh, remesh_to_budget
from .base import StageReporter
from .dmtet import DmtetConfig

logger = logging.getLogger(__name__)

MIN_FACES = 500
"""The smallest budget a request may ask for: below it a generated object loses its shape (issue 30)."""
FINISH_MAX_FACES = 1_000_000
"""The largest budget a request may ask for (FinishConfig.faces' range)."""
MIN_LOD_FACES = 100
"""An LOD is not made below this many faces."""
FACES_PER_CELL_AREA = 9.1
"""Triangles that marching tetrahedra makes on the DMTet grid per cell face's worth of surface (h², h the cell's
edge), a little above what it made of the object frame's sphere (radius 0.5) at 8 to 128 cells a side: 8.42 at 8
cells, 9.02 at 32, 8.98 at 128 (BENCHMARKS.md, "Game-ready output": the face budget's bound)."""
SURFACE_MARGIN = 2.0
"""How many times the surface a job's object is bounded by (its bounding sphere, or a refine's own mesh) the
bound allows for: no object of the micro world comes within 0.66 of its bounding sphere's count (BENCHMARKS.md)."""


@dataclass
class FinishConfig:
    faces: int = ranged(0, 0, FINISH_MAX_FACES)
    """The face budget of the game-ready mesh, counted as Blender counts faces (a quad is one face); 0 turns the
    stage off. A request's budget must lie between 500 and the most faces the job's surface can have
    (check_finish: refused at submit above it; capped at run time at the polished mesh's own count)."""
    quads: bool = True
    """Quad-dominant faces; False: triangles."""
    lods: int = ranged(0, 0, 3)
    """Levels of detail made beside the mesh (LOD1..LOD3), each `lod_ratio` of the faces of the one before."""
    lod_ratio: float = ranged(0.5, 0.05, 0.95)
    """Faces of each LOD as a fraction of the level before it."""
    remesher: Literal["instant_meshes", "quadric"] = "instant_meshes"
    """The remesher (chosen by the comparison in BENCHMARKS.md, where QuadriFlow, not a dependency, lost);
    quadric is the fallback's decimation, paired into quads, itself."""
    time_limit_s: float = ranged(120.0, 1.0, 3600.0)
    """Time limit of the remesher's tries for one mesh; past it the fallback is taken."""
    tolerance: float = ranged(0.10, 0.0, 1.0)
    """The largest miss of the budget, as a fraction, before the fallback is taken."""


@dataclass
class FinishedMesh(FaceSizes):
    """One finished mesh: its fan triangles with UVs (what rendering and baking take) and its faces' sizes."""

    mesh: TriMesh
    """The fan triangulation of the polygons, with per-corner UVs equal on every corner a polygon shares."""
    sizes: np.ndarray
    """int64 (P,) corners of every face, in the order of the triangles' fans."""


@dataclass
class FinishResult:
    low: FinishedMesh
    lods: list[FinishedMesh] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fell_back: bool = False
    chamfer: float = 0.0
    """Symmetric Chamfer distance of the low mesh to the polished surface, as a fraction of its bbox diagonal."""


def split_cut_faces(sizes: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """The face sizes after every face whose fan triangles disagree on a shared corner's UV (a seam through
    the face) is split into those triangles; the triangles themselves stay as they are, in order."""
    sizes = np.asarray(sizes, np.int64)
    per = sizes - 2
    polygon = np.repeat(np.arange(sizes.shape[0]), per)
    first = np.cumsum(per) - per
    later = np.flatnonzero(np.arange(polygon.shape[0]) != first[polygon])  # triangles after a fan's first
    # triangle j > 0 of a fan shares its corner 0 with triangle j-1's corner 0 and its corner 1 with its corner 2
    cut = ~(np.all(uvs[later, 0] == uvs[later - 1, 0], -1) & np.all(uvs[later, 1] == uvs[later - 1, 2], -1))
    broken = np.zeros(sizes.shape[0], bool)
    broken[polygon[later[cut]]] = True
    return np.repeat(np.where(broken, 3, sizes), np.where(broken, per, 1))


def mend_cut_faces(vertices: np.ndarray, sizes: np.ndarray, triangles: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """Per-corner UVs [M,3,2] in which every face's fan lies in one chart: each triangle after a fan's first
    whose shared corners disagree with the triangle before it is unfolded into that triangle's chart across
    their shared edge (its third corner placed by the 3D triangle's shape, with the chart's orientation).
    The charts then overlap where they grew: repack them (pack_charts)."""
    uvs = uvs.astype(np.float64).copy()
    sizes = np.asarray(sizes, np.int64)
    per = sizes - 2
    polygon = np.repeat(np.arange(sizes.shape[0]), per)
    j = np.arange(polygon.shape[0]) - (np.cumsum(per) - per)[polygon]
    p = vertices[triangles].astype(np.float64)
    for step in range(1, int(j.max(initial=0)) + 1):
        t = np.flatnonzero(j == step)
        prev = t - 1
        cut = ~(np.all(uvs[t, 0] == uvs[prev, 0], -1) & np.all(uvs[t, 1] == uvs[prev, 2], -1))
        t, prev = t[cut], prev[cut]
        u0, u1 = uvs[prev, 0], uvs[prev, 2]
        e = p[t, 1] - p[t, 0]
        w = p[t, 2] - p[t, 0]
        length2 = np.maximum(np.sum(e * e, -1), 1e-30)
        x = np.sum(w * e, -1) / length2
        y = np.linalg.norm(np.cross(e, w), axis=-1) / length2
        a, b, c = uvs[prev, 0], uvs[prev, 1], uvs[prev, 2]
        orient = np.sign((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))
        d = u1 - u0
        perp = np.stack([-d[:, 1], d[:, 0]], -1) * np.where(orient == 0, 1.0, orient)[:, None]
        uvs[t, 0], uvs[t, 1] = u0, u1
        uvs[t, 2] = u0 + x[:, None] * d + y[:, None] * perp
    return uvs.astype(np.float32)


def pack_charts(vertices: np.ndarray, triangles: np.ndarray, uvs: np.ndarray, atlas_size: int,
                padding: int) -> np.ndarray:
    """The charts of per-corner UVs [M,3,2] packed anew by xatlas without overlaps (its input-UV mode: a
    chart is the triangles connected through corners that share a vertex and a UV), keeping each chart's
    shape. Returns per-corner UVs [M,3,2] of the same triangles."""
    import xatlas

    key = np.concatenate([triangles.reshape(-1, 1).astype(np.float64), uvs.reshape(-1, 2).astype(np.float64)], 1)
    unique, inverse = np.unique(key, axis=0, return_inverse=True)
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices[unique[:, 0].astype(np.int64)], np.float32),
                   np.ascontiguousarray(inverse.reshape(-1, 3), np.uint32), None,
                   np.ascontiguousarray(unique[:, 1:], np.float32))
    charts = xatlas.ChartOptions()
    charts.use_input_mesh_uvs = True
    pack = xatlas.PackOptions()
    pack.resolution, pack.padding, pack.bilinear = int(atlas_size), int(padding), True
    atlas.generate(charts, pack)
    _, indices, packed = atlas[0]
    if indices.shape[0] != triangles.shape[0]:
        raise RuntimeError("xatlas changed the faces of the mesh it packed")
    return np.ascontiguousarray(packed[indices], np.float32)


def finished_mesh(poly: PolyMesh, atlas_size: int, padding: int, device: torch.device | str) -> FinishedMesh:
    """The polygon mesh unwrapped: xatlas charts of its fan triangles, every face brought whole into one chart
    (mend_cut_faces), the charts packed anew (pack_charts); a face the packing still cuts is split into its
    triangles (split_cut_faces)."""
    triangles = poly.triangles()
    cfg = bake.UnwrapConfig(resolution=atlas_size, padding=padding)
    uvs = bake.unwrap_uv(poly.vertices, triangles, cfg)
    mended = mend_cut_faces(poly.vertices, poly.sizes, triangles, uvs)
    if not np.array_equal(mended, uvs):
        uvs = pack_charts(poly.vertices, triangles, mended, atlas_size, padding)
    sizes = split_cut_faces(poly.sizes, uvs)
    mesh = TriMesh(torch.as_tensor(poly.vertices, dtype=torch.float32, device=device),
                   torch.as_tensor(triangles, dtype=torch.int64, device=device),
                   torch.as_tensor(uvs, dtype=torch.float32, device=device))
    return FinishedMesh(mesh, sizes)


def run_finish(cfg: FinishConfig, mesh: TriMesh, reporter: StageReporter, *, atlas_size: int = 1024,
               padding: int = 4, seed: int = 0, device: torch.device | str = "cpu") -> FinishResult:
    """The low mesh (and its LODs) of the polished `mesh` (object frame), with the stages' reporter."""
    vertices = mesh.vertices.detach().cpu().numpy().astype(np.float32)
    faces = mesh.faces.detach().cpu().numpy().astype(np.int64)
    # more faces than the polished mesh has would add nothing: a count that check_finish could bound at submit
    # but not know (DMTet's surface, an edited mesh sent on resume)
    budgets = [min(cfg.faces, mesh.num_faces)]
    capped = budgets[0] < cfg.faces
    for _ in range(cfg.lods):
        nxt = int(round(budgets[-1] * cfg.lod_ratio))
        if nxt < MIN_LOD_FACES:
            break
        budgets.append(nxt)
    total = len(budgets)
    made: list[FinishedMesh] = []
    notes: list[str] = []
    fell_back = False
    for i, budget in enumerate(budgets):
        reporter.check_cancel()
        out = remesh_to_budget(vertices, faces, budget, quads=cfg.quads, method=cfg.remesher, seed=seed,
                               time_limit_s=cfg.time_limit_s, tolerance=cfg.tolerance,
                               check_cancel=reporter.check_cancel)
        label = "mesh" if i == 0 else f"LOD{i}"
        notes += [f"{label}: {n}" for n in out.notes]
        fell_back |= out.fell_back
        made.append(finished_mesh(out.mesh, atlas_size, padding, device))
        losses = {"faces": float(made[-1].num_faces), "quads": made[-1].quad_share,
                  REMESH_FALLBACK: float(out.fell_back), BUDGET_CAPPED: float(capped)}
        reporter.progress(i + 1, total, losses)
    if capped:
        notes.insert(0, f"the budget of {cfg.faces} faces is more than the polished mesh's {mesh.num_faces}: "
                        f"capped at {budgets[0]}")
    for note in notes:
        logger.info("finish: %s", note)
    low = made[0]
    chamfer = chamfer_fraction(low.mesh.to("cpu"), mesh.detach().to("cpu"))
    logger.info("finish: %d faces (%.0f %% quads), Chamfer %.4f of the bbox diagonal to the polished surface",
                low.num_faces, 100 * low.quad_share, chamfer)
    return FinishResult(low, made[1:], notes, fell_back, chamfer)


def object_frame_area(payload: MeshPayload) -> float:
    """Surface area of a request's mesh in the object frame (placed by its transform, then normalised as the
    job's frame places it: geometry/mesh.normalize_to_unit)."""
    world = payload.in_world()
    mesh = TriMesh(torch.as_tensor(world.vertices, dtype=torch.float64),
                   torch.as_tensor(np.asarray(world.faces, np.int64)))
    return 0.5 * float(normalize_to_unit(mesh)[0].face_normals(normalize=False).norm(dim=-1).sum())


def dmtet_face_bound(dmtet: DmtetConfig, area: float) -> int:
    """The most faces DMTet's grid makes of a surface of `area` (object frame): SURFACE_MARGIN times the
    measured FACES_PER_CELL_AREA over the area in cell faces (h² with h the grid's cell edge)."""
    spacing = 2.0 * dmtet.grid_bound / dmtet.grid_resolution
    return int(math.ceil(SURFACE_MARGIN * FACES_PER_CELL_AREA * area / spacing**2))


def polished_face_bound(spec: JobSpec, plan: list[str], dmtet: DmtetConfig) -> tuple[int, str] | None:
    """The most faces the surface that the finish stage remeshes can have, as known at submit, and what says
    so; None where the job's plan has no finish stage (a texture-only job, a masked refine, a plan that ends
    before it). Polish keeps its input's topology, so that surface is DMTet's where the plan runs DMTet (a
    generate job, a refine from its first stage), else the request's own mesh (a refine whose plan starts at
    polish or finish)."""
    if "finish" not in plan:
        return None
    if "dmtet" not in plan:
        return spec.input_mesh.num_faces, "your mesh's own triangle count (the stages before finish keep it)"
    grid = f"the {dmtet.grid_resolution}-cell DMTet grid"
    if spec.input_mesh is None:
        return (dmtet_face_bound(dmtet, math.pi),
                f"the most {grid} makes of an object of the job's size (the object frame's sphere, twice over)")
    area = object_frame_area(spec.input_mesh)
    return (dmtet_face_bound(dmtet, max(area, math.pi)),
            f"the most {grid} makes of your mesh's surface (its area, at least its bounding sphere's, twice over)")


def check_finish(cfg: FinishConfig, spec: JobSpec, plan: list[str], dmtet: DmtetConfig) -> None:
    """At submit: a budget outside MIN_FACES..FINISH_MAX_FACES, or above the most faces the surface it remeshes
    can have (polished_face_bound), is refused with the range.

    Which counts are known at submit: a refine whose plan starts at polish or finish remeshes the request's
    own mesh (polish moves vertices only), whose triangle count is exact. Where the plan runs DMTet, the
    surface is extracted anew and its count is known only once DMTet has run; the bound is then the most the
    grid makes of the surface (dmtet_face_bound: a generate job's object fills at most the object frame's
    sphere, a refine's is its mesh's surface), and a budget between the polished mesh's count and that
    bound is capped at run time (run_finish, BUDGET_CAPPED in the stage's progress), as is a budget above the
    count of a mesh the artist edited and sent on resume, which no submit sees. A texture-only job has no finish
    stage (the budget is not used there); a masked refine keeps the input's topology too, and a budget sent
    with one is refused rather than ignored (the add-on leaves it out)."""
    if cfg.faces == 0 or spec.mode == "texture":
        return
    if spec.mask is not None:
        raise ValidationError(f"finish.faces is {cfg.faces}, but a masked refine keeps your mesh's topology, so it "
                              "makes no game-ready mesh: set finish.faces to 0 (untick Game-ready), or clear the "
                              "mask to refine the whole object")
    if not MIN_FACES <= cfg.faces <= FINISH_MAX_FACES:
        raise ValidationError(f"finish.faces is {cfg.faces}: a game-ready mesh keeps its shape with {MIN_FACES} to "
                              f"{FINISH_MAX_FACES} faces (and at most the polished mesh's own count); 0 turns the "
                              "game-ready output off")
    known = polished_face_bound(spec, plan, dmtet)
    if known is None or cfg.faces <= known[0]:
        return
    most, why = known
    if most < MIN_FACES:
        raise ValidationError(f"finish.faces is {cfg.faces}, but the mesh it would remesh has at most {most} faces "
                              f"({why}): fewer than the {MIN_FACES} a game-ready mesh needs; turn the game-ready "
                              "output off (finish.faces 0)")
    raise ValidationError(f"finish.faces is {cfg.faces}: this job's game-ready mesh can have {MIN_FACES} to {most} "
                          f"faces ({why}); 0 turns the game-ready output off")
