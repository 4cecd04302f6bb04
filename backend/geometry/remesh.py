"""A low mesh at an artist's face budget: a quad remesher run with a time limit, and quadric decimation
as the fallback (issue 30; the remeshers were compared on our polished meshes, BENCHMARKS.md).

Faces are counted as Blender counts them: a quad is one face. The remesher (Instant Meshes through
`pyinstantmeshes`, or QuadriFlow through `pyquadriflow`) runs in a process of its own
(remesh_worker.py, started by path) under a time limit, so that one that crashes, hangs or needs more
memory than it should on a generated mesh costs the job the fallback, never the job. Its face count is
steered towards the budget over a few tries (each try asks for budget x budget / reached); a result
still more than `tolerance` off, an empty or broken one, a crash or a timeout takes the fallback:
quadric-error decimation (`fast-simplification`, already the texture stage's decimator), its triangles
paired into quads (`pair_triangles`) when quads are asked for. `RemeshOutcome.notes` says what was tried
and why a fallback was taken, in words for the job's progress.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from dreampolish.protocol.scene import fan_triangulation

logger = logging.getLogger(__name__)

REMESHERS = ("instant_meshes", "quadriflow", "quadric")
"""The remeshers remesh_to_budget runs: Instant Meshes (the finish stage's), QuadriFlow (only where
`pyquadriflow` is installed: bench/remesh_compare.py compares it), quadric (also every fallback)."""
WORKER = Path(__file__).with_name("remesh_worker.py")


class RemeshFailed(RuntimeError):
    """The remesher crashed, ran past its time limit, or made no usable mesh (the reason in words)."""


class FaceSizes:
    """What a polygon mesh's `sizes` (corners of every face) say about it, for the meshes that carry them."""

    sizes: np.ndarray

    @property
    def num_faces(self) -> int:
        return int(self.sizes.shape[0])

    @property
    def quad_share(self) -> float:
        return float(np.mean(self.sizes == 4)) if self.sizes.size else 0.0


@dataclass
class PolyMesh(FaceSizes):
    """A polygon mesh as Blender keeps one: positions, corners per face, the vertex of every corner."""

    vertices: np.ndarray
    """float32 (V,3)."""
    sizes: np.ndarray
    """int64 (P,) corners of every face (3 or more)."""
    corners: np.ndarray
    """int64 (L,) vertex of every corner, face after face, counter-clockwise seen from outside."""

    def triangles(self) -> np.ndarray:
        """int64 (M,3) the fan triangulation (what the wire's `faces` of this polygon mesh are)."""
        return self.corners[fan_triangulation(self.sizes)]

    def valence_share(self, valence: int = 4) -> float:
        """The share of vertices with `valence` edges (4: a regular vertex of a quad mesh)."""
        starts = np.cumsum(self.sizes) - self.sizes
        nxt = np.arange(self.corners.shape[0]) + 1
        ends = np.repeat(starts + self.sizes, self.sizes)
        nxt = np.where(nxt == ends, np.repeat(starts, self.sizes), nxt)
        a, b = self.corners, self.corners[nxt]
        edges = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], 1), axis=0)
        degree = np.bincount(edges.ravel(), minlength=self.vertices.shape[0])
        used = degree > 0
        return float(np.mean(degree[used] == valence)) if used.any() else 0.0


def clean_polygons(mesh: PolyMesh) -> PolyMesh:
    """Drop repeated corners inside a face (a remesher's [a, b, c, c] is the triangle [a, b, c]), faces left
    with fewer than 3 corners, and vertices no face uses."""
    polygon = np.repeat(np.arange(mesh.sizes.shape[0]), mesh.sizes)
    starts = np.cumsum(mesh.sizes) - mesh.sizes
    k = np.arange(mesh.corners.shape[0]) - np.repeat(starts, mesh.sizes)
    previous = np.where(k == 0, np.repeat(starts + mesh.sizes - 1, mesh.sizes), np.arange(mesh.corners.shape[0]) - 1)
    keep = mesh.corners != mesh.corners[previous]  # a corner equal to the one before it adds nothing
    sizes = np.bincount(polygon[keep], minlength=mesh.sizes.shape[0])
    corners, polygon = mesh.corners[keep], polygon[keep]
    good = sizes >= 3
    distinct = np.array([len(set(c)) == len(c) for c in np.split(corners, np.cumsum(sizes)[:-1])]) if sizes.size else good
    good &= distinct
    corners = corners[good[polygon]]
    sizes = sizes[good]
    used = np.zeros(mesh.vertices.shape[0], bool)
    used[corners] = True
    remap = np.cumsum(used) - 1
    return PolyMesh(np.ascontiguousarray(mesh.vertices[used], np.float32), sizes.astype(np.int64),
                    remap[corners].astype(np.int64))


def _wait(process: subprocess.Popen, time_limit_s: float, check_cancel: Callable[[], None] | None) -> None:
    """Wait for `process`, calling `check_cancel` every 0.2 s; past the time limit, or when check_cancel
    raises (the job was cancelled), the process is killed (by its own handle) and waited for."""
    deadline = time.monotonic() + time_limit_s
    try:
        while True:
            try:
                process.wait(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
                return
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    raise
            if check_cancel is not None:
                check_cancel()
    except BaseException:
        process.kill()
        process.wait()
        raise


def run_remesher(method: str, vertices: np.ndarray, faces: np.ndarray, target: int, *, quads: bool, seed: int,
                 time_limit_s: float, check_cancel: Callable[[], None] | None = None) -> PolyMesh:
    """One run of `method` in its own process (remesh_worker.py); RemeshFailed when it fails or times out.
    `check_cancel` is called while it runs (a cancelled job stops it at once)."""
    with tempfile.TemporaryDirectory(prefix="dreampolish-remesh-") as tmp:
        source, result, log = Path(tmp) / "in.npz", Path(tmp) / "out.npz", Path(tmp) / "log.txt"
        np.savez(source, vertices=np.asarray(vertices, np.float32), faces=np.asarray(faces, np.int32),
                 method=method, target_faces=int(target), quads=int(quads), seed=int(seed))
        with open(log, "w") as out:
            process = subprocess.Popen([sys.executable, str(WORKER), str(source), str(result)], stdout=out,
                                       stderr=subprocess.STDOUT, cwd=tmp)
            try:
                _wait(process, time_limit_s, check_cancel)
            except subprocess.TimeoutExpired as exc:
                raise RemeshFailed(f"{method} ran past its time limit of {time_limit_s:g} s") from exc
        if process.returncode != 0 or not result.exists():
            lines = log.read_text(errors="replace").strip().splitlines()
            last = (lines or [f"exit status {process.returncode}"])[-1]
            raise RemeshFailed(f"{method} failed ({last[:200]})")
        out = np.load(result)
        mesh = clean_polygons(PolyMesh(out["vertices"], out["sizes"].astype(np.int64),
                                       out["corners"].astype(np.int64)))
    if mesh.num_faces == 0 or not np.isfinite(mesh.vertices).all():
        raise RemeshFailed(f"{method} made no usable faces")
    return mesh


def pair_triangles(vertices: np.ndarray, faces: np.ndarray, max_angle_deg: float = 30.0) -> PolyMesh:
    """Triangles paired into quads across their shared edges, flattest pairs first (greedy), each triangle
    at most once; a pair whose normals differ by more than `max_angle_deg`, or whose quad would not be
    convex, stays two triangles. Quad (a, d, b, c) from (a, b, c) and (b, a, d)."""
    faces = np.asarray(faces, np.int64)
    p = vertices[faces].astype(np.float64)
    normal = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-20)
    f_idx = np.repeat(np.arange(faces.shape[0]), 3)
    k = np.tile(np.arange(3), faces.shape[0])
    a, b, c = faces[f_idx, k], faces[f_idx, (k + 1) % 3], faces[f_idx, (k + 2) % 3]
    key = np.minimum(a, b) * (vertices.shape[0] + 1) + np.maximum(a, b)
    order = np.argsort(key, kind="stable")
    same = np.flatnonzero(key[order][1:] == key[order][:-1])
    first, second = order[same], order[same + 1]
    single = np.ones(same.shape[0], bool)  # an edge of exactly two faces (not three: non-manifold)
    if same.size > 1:
        run = np.diff(key[order][same]) == 0
        single[1:] &= ~run
        single[:-1] &= ~run
    first, second = first[single], second[single]
    ok = (a[first] == b[second]) & (b[first] == a[second])  # consistently wound neighbours
    first, second = first[ok], second[ok]
    cos = np.sum(normal[f_idx[first]] * normal[f_idx[second]], 1)
    quad = np.stack([a[first], c[second], b[first], c[first]], 1)
    q = vertices[quad].astype(np.float64)
    turn = np.cross(q - np.roll(q, 1, 1), np.roll(q, -1, 1) - q)
    convex = (np.sum(turn * (normal[f_idx[first]] + normal[f_idx[second]])[:, None], -1) > 0).all(1)
    good = convex & (cos >= np.cos(np.radians(max_angle_deg)))
    used = np.zeros(faces.shape[0], bool)
    quads = []
    for i in np.flatnonzero(good)[np.argsort(-cos[good], kind="stable")]:
        s, t = f_idx[first[i]], f_idx[second[i]]
        if not (used[s] or used[t]):
            used[s] = used[t] = True
            quads.append(quad[i])
    tris = faces[~used]
    quads_a = np.asarray(quads, np.int64).reshape(-1, 4)
    sizes = np.concatenate([np.full(quads_a.shape[0], 4), np.full(tris.shape[0], 3)])
    return PolyMesh(np.asarray(vertices, np.float32), sizes.astype(np.int64),
                    np.concatenate([quads_a.ravel(), tris.ravel()]).astype(np.int64))


def quadric_to_budget(vertices: np.ndarray, faces: np.ndarray, budget: int, *, quads: bool) -> PolyMesh:
    """The fallback: quadric decimation to the budget in triangles, or, for quads, to twice the budget with
    the triangles paired (the triangle count corrected once by the share that stayed unpaired)."""
    import fast_simplification

    v = np.ascontiguousarray(vertices, np.float32)
    f = np.ascontiguousarray(faces, np.int64)

    def decimated(n: int) -> PolyMesh:
        ratio = 1.0 - min(1.0, n / max(f.shape[0], 1))
        nv, nf = fast_simplification.simplify(v, f, target_reduction=ratio) if ratio > 0 else (v, f)
        mesh = clean_polygons(PolyMesh(np.asarray(nv, np.float32), np.full(len(nf), 3, np.int64),
                                       np.asarray(nf, np.int64).ravel()))
        return pair_triangles(mesh.vertices, mesh.triangles()) if quads else mesh

    if not quads:
        return decimated(budget)
    mesh = decimated(2 * budget)
    if mesh.num_faces:  # faces per triangle kept: (quads + triangles) / (2 quads + triangles)
        per_triangle = mesh.num_faces / float(np.sum(mesh.sizes - 2))
        mesh = decimated(int(round(budget / per_triangle)))
    return mesh


@dataclass
class RemeshOutcome:
    mesh: PolyMesh
    method: str
    """What made the mesh: the remesher, or "quadric" (the fallback)."""
    notes: list[str] = field(default_factory=list)
    """Each try and the reason for a fallback, in words."""
    fell_back: bool = False


def remesh_to_budget(vertices: np.ndarray, faces: np.ndarray, budget: int, *, quads: bool = True,
                     method: str = "instant_meshes", seed: int = 0, time_limit_s: float = 120.0,
                     tolerance: float = 0.10, tries: int = 3,
                     check_cancel: Callable[[], None] | None = None) -> RemeshOutcome:
    """A low mesh of about `budget` faces (module docstring): `method`'s best try, or the fallback."""
    notes: list[str] = []
    if method != "quadric":
        best: PolyMesh | None = None
        failure: str | None = None
        target, deadline = budget, time.monotonic() + time_limit_s
        for attempt in range(tries):
            left = deadline - time.monotonic()
            if left <= 1.0:
                break
            try:
                mesh = run_remesher(method, vertices, faces, target, quads=quads, seed=seed, time_limit_s=left,
                                    check_cancel=check_cancel)
            except RemeshFailed as exc:
                failure = str(exc)
                break
            notes.append(f"{method} try {attempt + 1}: {mesh.num_faces} faces for {budget} "
                         f"({100 * mesh.quad_share:.0f} % quads)")
            if best is None or abs(mesh.num_faces - budget) < abs(best.num_faces - budget):
                best = mesh
            if abs(mesh.num_faces - budget) <= tolerance * budget:
                return RemeshOutcome(mesh, method, notes)
            target = max(1, int(round(target * budget / mesh.num_faces)))
        if failure is None:
            failure = (f"{method} ran out of time" if best is None else
                       f"{method} missed the budget of {budget} faces by more than {100 * tolerance:.0f} % "
                       f"(closest: {best.num_faces})")
        notes.append(f"fell back to quadric decimation: {failure}")
    mesh = quadric_to_budget(vertices, faces, budget, quads=quads)
    notes.append(f"quadric decimation: {mesh.num_faces} faces for {budget} ({100 * mesh.quad_share:.0f} % quads)")
    return RemeshOutcome(mesh, "quadric", notes, fell_back=method != "quadric")
