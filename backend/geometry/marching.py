"""Iso-surface extraction.

- marching_tetrahedra: differentiable w.r.t. vertex positions and SDF values
  (DMTet, Shen et al. 2021). Surface vertices sit on the tet edges whose ends
  change sign, at the zero of the linear interpolant:
  p = (p_a s_b - p_b s_a) / (s_b - s_a).
  On a conforming grid (tets.make_tet_grid) the result is watertight; vertices
  are shared between tets through their edges' keys. Optimisation steps use
  marching_tetrahedra_padded, whose buffers have fixed sizes (a capacity of
  crossing tets, grown by SurfaceCapacity), so that no step waits for the GPU;
  marching_tetrahedra compacts it for one-off extractions.
- marching_cubes: scikit-image's, for implicit fields sampled on a lattice
  (NeRF/NeuS extraction); not differentiable.

Both return faces oriented outward (counter-clockwise seen from outside), with
the convention that the field is negative inside.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from skimage import measure
from torch import Tensor

from ..capacity import DeviceCapacity

log = logging.getLogger(__name__)

# Tet edges as vertex pairs: 0:(0,1) 1:(0,2) 2:(0,3) 3:(1,2) 4:(1,3) 5:(2,3)
_TET_EDGES = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]], dtype=torch.long)
# For each of the 16 inside/outside cases (bit i = vertex i inside), the cut edges forming
# up to two triangles; a quad (two inside vertices) is split along a diagonal of its cycle.
_TRIANGLE_TABLE = torch.tensor([
    [-1, -1, -1, -1, -1, -1],
    [1, 0, 2, -1, -1, -1],
    [4, 0, 3, -1, -1, -1],
    [1, 4, 2, 1, 3, 4],
    [3, 1, 5, -1, -1, -1],
    [2, 3, 0, 2, 5, 3],
    [1, 4, 0, 1, 5, 4],
    [4, 2, 5, -1, -1, -1],
    [4, 5, 2, -1, -1, -1],
    [4, 1, 0, 4, 5, 1],
    [3, 2, 0, 3, 5, 2],
    [1, 3, 5, -1, -1, -1],
    [4, 1, 2, 4, 3, 1],
    [3, 0, 4, -1, -1, -1],
    [2, 0, 1, -1, -1, -1],
    [-1, -1, -1, -1, -1, -1],
], dtype=torch.long)


def _tables(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(_TET_EDGES, _TRIANGLE_TABLE, inside-case bit weights) on `device`, copied there once: a copy from
    host memory in every step would wait for the device."""
    key = str(device)
    if key not in _DEVICE_TABLES:
        _DEVICE_TABLES[key] = (_TET_EDGES.to(device), _TRIANGLE_TABLE.to(device),
                               (2 ** torch.arange(4)).to(device))
    return _DEVICE_TABLES[key]


_DEVICE_TABLES: dict[str, tuple[Tensor, Tensor, Tensor]] = {}


@dataclass
class PaddedSurface:
    """A marching-tetrahedra surface in buffers whose sizes depend only on `capacity`, so that extracting
    it in an optimisation step never makes the host wait for the device (issue 28).

    Why crossing tets compacted into a fixed capacity (torch.nonzero_static) rather than two triangle slots
    for every tet: at the standard grid_resolution 128 the grid has 6·128³ = 12.6M tets, two slots each are
    25M faces (604 MB of int64 indices alone, and every rasterised view sets all of them up), while a sphere
    of radius 0.45 crosses about 145k of them (1.2 %); a capacity of 256k tets keeps 512k face slots. And why
    no per-grid unique-edge table: it would hold about 15M edges (plus 6 edge ids for each of the 12.6M tets,
    about 0.5 GB); deduplicating the at most 6·capacity cut edges of the crossing tets by one sort per step
    costs memory and time in proportion to the capacity, not to the grid."""

    vertices: Tensor
    """[C,3] surface vertices: the first `num_vertices` rows in the order of their edges' keys
    a·V + b (a < b, the grid vertices at the edge's ends), the rest 0."""
    faces: Tensor
    """[2C,3] int64, two slots per crossing tet in the order of the tets. Slots without a triangle (the
    second slot of a one-triangle tet, every slot past the crossing tets) are (0, 0, 0): degenerate, so that
    neither rasteriser draws them and the mesh regularisers weigh them 0 (regularisers.real_faces)."""
    num_vertices: Tensor
    """0-dim int64: surface vertices (cut edges) the grid has."""
    needed: Tensor
    """0-dim int64: the capacity this surface needs, max(crossing tets, surface vertices)."""
    capacity: int
    """C: the most crossing tets and surface vertices the buffers hold. Beyond it the surface loses faces
    (`overflow`); SurfaceCapacity grows it."""

    @property
    def overflow(self) -> Tensor:
        """0-dim bool: the surface did not fit and lost faces."""
        return self.needed > self.capacity

    def vertex_weights(self) -> Tensor:
        """[C] 1.0 for surface vertices, 0.0 for the padding rows."""
        return (torch.arange(self.capacity, device=self.vertices.device) < self.num_vertices).to(
            self.vertices.dtype)

    def compact(self) -> tuple[Tensor, Tensor]:
        """(vertices [N,3], faces [F,3]) without the padding. Reads the counts back: one-off use only."""
        if bool(self.overflow):
            raise ValueError(f"the surface needs a capacity of {int(self.needed)}, it has {self.capacity}")
        real = self.faces[:, 0] != self.faces[:, 1]
        return self.vertices[: int(self.num_vertices)], self.faces[real]


def marching_tetrahedra_padded(vertices: Tensor, sdf: Tensor, tets: Tensor, capacity: int) -> PaddedSurface:
    """vertices [V,3], sdf [V] (negative inside), tets [T,4] -> the surface in buffers of `capacity` crossing
    tets and surface vertices (PaddedSurface); nothing in it reads device data back.

    Gradients flow from the surface vertices into `vertices` and `sdf`."""
    if capacity < 1:
        raise ValueError(f"marching tetrahedra capacity must be >= 1, got {capacity}")
    dev = vertices.device
    n_v = vertices.shape[0]
    tet_edges, triangle_table, bits = _tables(dev)
    sentinel = n_v * n_v  # larger than every edge key a·V + b
    with torch.no_grad():
        inside = sdf < 0
        inside_t = inside[tets]  # [T,4]
        count = inside_t.sum(-1)
        crossing = (count > 0) & (count < 4)
        tet_id = torch.nonzero_static(crossing, size=capacity, fill_value=-1).squeeze(1)  # [C]
        real_tet = tet_id >= 0
        tet_id = tet_id.clamp_min(0)
        tets_c = tets.index_select(0, tet_id)  # [C,4]
        inside_c = inside_t.index_select(0, tet_id) & real_tet[:, None]  # padding slots: case 0, no triangles
        # the cut edges of the crossing tets, deduplicated by their keys: surface vertex = rank of the key
        ends = torch.sort(tets_c[:, tet_edges], dim=-1).values  # [C,6,2]
        cut = inside_c[:, tet_edges[:, 0]] != inside_c[:, tet_edges[:, 1]]  # [C,6]
        keys = torch.where(cut, ends[..., 0] * n_v + ends[..., 1], sentinel).reshape(-1)
        sorted_keys, order = torch.sort(keys)
        new_vertex = torch.cat([sorted_keys[:1] != sentinel,
                                (sorted_keys[1:] != sorted_keys[:-1]) & (sorted_keys[1:] != sentinel)])
        rank = torch.cumsum(new_vertex, 0) - 1
        num_vertices = new_vertex.sum()
        slot_vertex = torch.empty_like(rank).scatter_(0, order, rank).view(capacity, 6)  # [C,6]
        # vertex buffer: the key of each rank (ranks past the capacity land in a dropped extra row)
        row = torch.where(new_vertex & (rank < capacity), rank, capacity)
        edge_key = torch.full((capacity + 1,), sentinel, device=dev).scatter_(0, row, sorted_keys)[:capacity]
        real_vertex = edge_key != sentinel
        edge_ends = torch.stack([torch.where(real_vertex, edge_key // n_v, 0),
                                 torch.where(real_vertex, edge_key % n_v, 0)], dim=-1)  # [C,2]
        case = (inside_c.long() * bits).sum(-1)
        table = triangle_table[case].view(capacity, 2, 3)
        corners = torch.gather(slot_vertex, 1, table.clamp_min(0).view(capacity, 6)).view(capacity, 2, 3)
        has_triangle = (table[..., 0] >= 0) & (corners < capacity).all(-1)  # [C,2]
        faces = torch.where(has_triangle[..., None], corners, 0)

    ends_p = vertices[edge_ends]  # [C,2,3]
    s = sdf[edge_ends]  # [C,2]
    # p = (p_a s_b - p_b s_a) / (s_b - s_a); padding rows (a = b = 0) divide by 1 and are set to 0
    w = torch.stack([s[:, 1], -s[:, 0]], dim=-1)
    denominator = torch.where(real_vertex, s[:, 1] - s[:, 0], torch.ones_like(s[:, 0]))
    surface = (ends_p * w[..., None]).sum(1) / denominator[:, None]
    surface = torch.where(real_vertex[:, None], surface, torch.zeros_like(surface))

    with torch.no_grad():
        # orient each triangle so that its normal points from the tet's inside vertices to its outside ones
        tv = vertices[tets_c]  # [C,4,3]
        fi = inside_c.to(tv.dtype)[..., None]
        outward = ((tv * (1 - fi)).sum(1) / (1 - fi).sum(1).clamp_min(1)
                   - (tv * fi).sum(1) / fi.sum(1).clamp_min(1))  # [C,3]
        p = surface[faces]  # [C,2,3,3]
        normal = torch.linalg.cross(p[..., 1, :] - p[..., 0, :], p[..., 2, :] - p[..., 0, :])
        flip = (normal * outward[:, None]).sum(-1) < 0
        swapped = torch.stack([faces[..., 0], faces[..., 2], faces[..., 1]], dim=-1)
        faces = torch.where(flip[..., None], swapped, faces).view(2 * capacity, 3)
    needed = torch.maximum(crossing.sum(), num_vertices)
    return PaddedSurface(surface, faces, num_vertices, needed, capacity)


def marching_tetrahedra(vertices: Tensor, sdf: Tensor, tets: Tensor) -> tuple[Tensor, Tensor]:
    """vertices [V,3], sdf [V] (negative inside), tets [T,4] -> (surface vertices [N,3], faces [F,3] int64),
    compacted: reads counts back from the device, for one-off extractions (marching_tetrahedra_padded in
    optimisation steps).

    Gradients flow from the surface vertices into `vertices` and `sdf`."""
    surface = marching_tetrahedra_padded(vertices, sdf, tets, needed_capacity(vertices, sdf, tets))
    return surface.compact()


def needed_capacity(vertices: Tensor, sdf: Tensor, tets: Tensor) -> int:
    """The smallest capacity that holds the whole surface (reads back from the device)."""
    with torch.no_grad():
        count = (sdf < 0)[tets].sum(-1)
        capacity = max(int(((count > 0) & (count < 4)).sum()), 1)
        # surface vertices may outnumber crossing tets (rarely: isolated inside vertices)
        return max(int(marching_tetrahedra_padded(vertices, sdf, tets, capacity).needed), capacity)


class SurfaceCapacity(DeviceCapacity):
    """The capacity of a padded surface that changes while it is optimised (backend/capacity.py): steps
    `track` each surface's need, reporting steps `request` it, and `poll` grows the capacity when the surface
    did not fit (it never shrinks: a surface's size changes slowly and a smaller one fits anyway)."""

    HEADROOM = 1.5
    """Capacity = the next power of two above HEADROOM × the need: room for the surface to grow while
    it is optimised (and few distinct shapes for the allocator)."""
    MINIMUM = 1024

    def __init__(self, needed: int):
        super().__init__("surface (crossing tets or vertices)", headroom=self.HEADROOM, minimum=self.MINIMUM,
                         power_of_two=True, shrinks=False, logger=log)
        self.capacity = self.fitting(needed)

    def track(self, surface: PaddedSurface) -> None:  # type: ignore[override]
        """Keep the surface's need (on the device) until the next request."""
        super().track(surface.needed)


def marching_cubes(values: np.ndarray, bound: float, level: float = 0.0, inside: str = "below"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """values [R,R,R] on grid_points(bound, R) -> (vertices [N,3] float32 in world units, faces [F,3] int64),
    faces oriented outward. inside="below": the object is where values < level (SDF);
    "above": where values > level (density)."""
    r = values.shape[0]
    lo, hi = float(values.min()), float(values.max())
    if not (lo < level < hi):
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    spacing = (2 * bound / (r - 1),) * 3
    # with (i,j,k) -> (x,y,z) indexing, skimage's winding is outward for "descent" when the inside is
    # below the level and for "ascent" when it is above (checked by the signed volume in the tests)
    direction = "descent" if inside == "below" else "ascent"
    verts, faces, _, _ = measure.marching_cubes(values, level=level, spacing=spacing,
                                                gradient_direction=direction)
    verts = verts - bound
    return verts.astype(np.float32), faces.astype(np.int64)


def keep_main_solid(values: np.ndarray, level: float = 0.0, inside: str = "below") -> np.ndarray:
    """Lattice values [R,R,R] with everything but the main solid removed: inside regions other than the
    largest connected one become outside (floaters), and outside regions not connected to the lattice
    boundary become inside (bubbles, inner shells). Optimised fields hold both wherever training never
    looked. Changed samples are moved just across `level`, so the kept surface is untouched."""
    solid = values < level if inside == "below" else values > level
    labels, n = ndimage.label(solid)
    if n > 1:
        sizes = ndimage.sum(solid, labels, index=np.arange(1, n + 1))
        solid = labels == (1 + int(np.argmax(sizes)))
    empty_labels, m = ndimage.label(~solid)
    if m > 1:
        border = np.unique(np.concatenate([
            empty_labels[[0, -1]].ravel(), empty_labels[:, [0, -1]].ravel(), empty_labels[:, :, [0, -1]].ravel()]))
        solid |= ~np.isin(empty_labels, border[border > 0]) & (empty_labels > 0)
    out = values.copy()
    spread = float(np.abs(values - level).max()) or 1.0
    eps = 1e-3 * spread
    was_solid = values < level if inside == "below" else values > level
    sign = -1.0 if inside == "below" else 1.0  # direction of "inside" from the level
    flip_in = solid & ~was_solid
    flip_out = ~solid & was_solid
    out[flip_in] = level + sign * np.maximum(np.abs(values[flip_in] - level), eps)
    out[flip_out] = level - sign * np.maximum(np.abs(values[flip_out] - level), eps)
    return out
