"""The winding number that signs a refined mesh's distance: the same values as the all-pairs sum, the
exact inside/outside on closed, open and non-manifold meshes, and memory that does not grow with
points x faces (a mesh of a few hundred thousand triangles ran out of memory)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import trimesh
from dreampolish.backend.commands.dryrun import LiveBytes
from dreampolish.backend.geometry import winding
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.geometry.transitions import inside_mesh, winding_number
from torch.utils._pytree import tree_leaves, tree_map


def _mesh(t: trimesh.Trimesh) -> TriMesh:
    return TriMesh(torch.tensor(t.vertices, dtype=torch.float32), torch.tensor(t.faces))


def _all_pairs(points: torch.Tensor, mesh: TriMesh) -> torch.Tensor:
    """The winding number as it was computed before: every point against every face at once."""
    tri = mesh.vertices[mesh.faces]
    a, b, c = (tri[None, :, k] - points[:, None] for k in range(3))
    la, lb, lc = a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)
    det = (a * torch.linalg.cross(b, c)).sum(-1)
    denom = la * lb * lc + (a * b).sum(-1) * lc + (a * c).sum(-1) * lb + (b * c).sum(-1) * la
    return (2 * torch.atan2(det, denom)).sum(-1) / (4 * math.pi)


def _sphere(subdivisions: int) -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions, radius=0.45)


def _holed(subdivisions: int) -> trimesh.Trimesh:
    closed = _sphere(subdivisions)
    return trimesh.Trimesh(closed.vertices, closed.faces[closed.triangles_center[:, 2] < 0.35])


def _non_manifold(subdivisions: int) -> trimesh.Trimesh:
    """A sphere with a fin through it (edges shared by four faces) and an overlapping second sphere."""
    sphere = _sphere(subdivisions)
    other = sphere.copy()
    other.apply_translation([0.3, 0.0, 0.0])
    fin = trimesh.Trimesh([[-0.6, 0, -0.6], [0.6, 0, -0.6], [0.6, 0, 0.6], [-0.6, 0, 0.6]], [[0, 1, 2], [0, 2, 3]])
    return trimesh.util.concatenate([sphere, other, fin])


SHAPES = {"closed": _sphere, "open": _holed, "non-manifold": _non_manifold}


def _points(n: int, seed: int = 0) -> torch.Tensor:
    """Points all over the box, a third of them within a hair of the surface (where the sign is hard)."""
    g = torch.Generator().manual_seed(seed)
    box = (torch.rand(n, 3, generator=g) * 2 - 1) * 0.8
    direction = torch.randn(n // 3, 3, generator=g)
    shell = direction / direction.norm(dim=-1, keepdim=True) * (0.45 + (torch.rand(n // 3, 1, generator=g) - 0.5) * 0.01)
    return torch.cat([box, shell])


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_exact_winding_number_equals_the_all_pairs_sum(shape):
    mesh = _mesh(SHAPES[shape](2))
    points = _points(300)
    # a small budget makes many blocks of points and of faces
    blocked = winding.winding_number(points, mesh.vertices[mesh.faces], pair_budget=997)
    reference = _all_pairs(points, mesh)
    assert (blocked - reference).abs().max() < 1e-5
    assert torch.equal(winding_number(points, mesh) > 0.5, reference > 0.5)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_inside_is_the_exact_sign_where_the_expansion_is_used(shape):
    mesh = _mesh(SHAPES[shape](3))  # 1,280 faces a sphere: clusters of 16, the far-field path
    assert mesh.num_faces > 4 * winding.cluster_size(mesh.num_faces)
    points = _points(900)
    reference = _all_pairs(points, mesh)
    assert torch.equal(inside_mesh(points, mesh), reference > 0.5)
    # the bound holds: the expansion is never further from the exact value than it says
    tri = mesh.vertices[mesh.faces]
    approx, bound = winding.fast_winding_number(points, winding.FaceClusters.of(tri, winding.cluster_size(len(tri))))
    assert bool(((approx - reference).abs() <= bound).all())
    assert float((approx - reference).abs().max()) < 0.05


class _AllocationGuard(LiveBytes):
    """Counts the bytes of the storages torch makes inside it while they live (the dry run's counter),
    and refuses, before allocating, any operation that would take them over `limit` bytes."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:  # the output's size, worked out on `meta` before anything is allocated
            meta = func(*tree_map(_to_meta, args), **tree_map(_to_meta, kwargs))
            need = sum(t.numel() * t.element_size() for t in tree_leaves(meta) if isinstance(t, torch.Tensor))
        except Exception:  # noqa: BLE001 - ops whose output size depends on values (nonzero)
            need = 0
        if self.live + need > self.limit:
            raise MemoryError(f"{func} would allocate {need / 2**20:.0f} MiB with {self.live / 2**20:.0f} MiB alive")
        return super().__torch_dispatch__(func, types, args, kwargs)


def _to_meta(x):
    return x.to("meta") if isinstance(x, torch.Tensor) else x


@contextmanager
def _guard(limit: int) -> Iterator[_AllocationGuard]:
    with torch.no_grad(), _AllocationGuard(limit) as guard:
        yield guard


def test_memory_stays_bounded_on_a_mesh_of_hundreds_of_thousands_of_triangles():
    mesh = _mesh(trimesh.creation.torus(0.33, 0.14, major_sections=600, minor_sections=250))  # 300,000 faces
    points = _points(300)
    mesh_bytes = mesh.num_faces * 3 * 3 * 4  # the triangles as one [F,3,3] array (10.8 MB)
    # a few copies of the mesh (sorted into clusters), plus blocks of a fixed number of (point, face)
    # pairs (about 100 MiB measured); one [points x faces x 3] block was 1.4 GB here (3 GB at 45k
    # faces for 4,096 points)
    limit = 4 * mesh_bytes + 160 * 2**20
    with _guard(limit) as guard:
        inside = inside_mesh(points, mesh)
    assert guard.peak <= limit, guard.peak
    radial = (points[:, :2].norm(dim=-1) - 0.33).hypot(points[:, 2])
    clear = (radial - 0.14).abs() > 0.01  # the torus' analytic inside, away from the facets
    assert torch.equal(inside[clear], (radial < 0.14)[clear])
    with _guard(limit) as guard:
        exact = winding_number(points[:20], mesh)
    assert guard.peak <= limit, guard.peak
    assert torch.equal(exact > 0.5, inside[:20])


@pytest.mark.slow  # about 15 s here: the candidate search over 400k surface samples
def test_the_signed_distance_of_a_large_mesh_stays_within_bounded_memory():
    # The whole hand-over of a refine: candidates from surface samples (whose triangles were found all
    # at once: [8 F, 16, 3, 3] float64, 18 GB at 2M faces), exact distances, then the sign.
    from dreampolish.backend.geometry.tets import make_tet_grid
    from dreampolish.backend.geometry.transitions import mesh_signed_distance

    mesh = _mesh(trimesh.creation.torus(0.33, 0.14, major_sections=125, minor_sections=200))  # 50,000 faces
    grid = make_tet_grid(8, 0.6)
    limit = 4 * mesh.num_faces * 3 * 3 * 4 + 160 * 2**20
    with _guard(limit) as guard:
        sdf = mesh_signed_distance(mesh, grid.vertices, 9, grid.spacing)
    assert guard.peak <= limit, guard.peak
    radial = (grid.vertices[:, :2].norm(dim=-1) - 0.33).hypot(grid.vertices[:, 2])
    assert (sdf - (radial - 0.14)).abs().max() < 0.01
