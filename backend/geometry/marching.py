"""Iso-surface extraction.

- marching_tetrahedra: differentiable w.r.t. vertex positions and SDF values
  (DMTet, Shen et al. 2021). Surface vertices sit on the tet edges whose ends
  change sign, at the zero of the linear interpolant:
  p = (p_a s_b - p_b s_a) / (s_b - s_a).
  On a conforming grid (tets.make_tet_grid) the result is watertight; vertices
  are shared through the unique-edge table.
- marching_cubes: scikit-image's, for implicit fields sampled on a lattice
  (NeRF/NeuS extraction); not differentiable.

Both return faces oriented outward (counter-clockwise seen from outside), with
the convention that the field is negative inside.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage import measure
from torch import Tensor

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
_NUM_TRIANGLES = torch.tensor([0, 1, 1, 2, 1, 2, 2, 1, 1, 2, 2, 1, 2, 1, 1, 0], dtype=torch.long)


def marching_tetrahedra(vertices: Tensor, sdf: Tensor, tets: Tensor) -> tuple[Tensor, Tensor]:
    """vertices [V,3], sdf [V] (negative inside), tets [T,4] -> (surface vertices [N,3], faces [F,3] int64).

    Gradients flow from the surface vertices into `vertices` and `sdf`."""
    dev = vertices.device
    with torch.no_grad():
        inside = sdf < 0
        inside_t = inside[tets]  # [T,4]
        count = inside_t.sum(-1)
        crossing = (count > 0) & (count < 4)
        tets_c = tets[crossing]
        inside_c = inside_t[crossing]
        if tets_c.shape[0] == 0:
            return vertices.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long, device=dev)
        edges = tets_c[:, _TET_EDGES.to(dev)].reshape(-1, 2)  # [6Tc,2]
        edges = torch.sort(edges, dim=1).values
        n_v = vertices.shape[0]
        keys = edges[:, 0] * n_v + edges[:, 1]
        unique_keys, edge_of_slot = torch.unique(keys, return_inverse=True)
        unique_edges = torch.stack([unique_keys // n_v, unique_keys % n_v], dim=-1)
        cut = inside[unique_edges[:, 0]] != inside[unique_edges[:, 1]]
        surface_index = torch.full((unique_edges.shape[0],), -1, dtype=torch.long, device=dev)
        surface_index[cut] = torch.arange(int(cut.sum()), device=dev)
        slot_vertex = surface_index[edge_of_slot].reshape(-1, 6)  # [Tc,6]
        cut_edges = unique_edges[cut]
        case = (inside_c.long() * (2 ** torch.arange(4, device=dev))).sum(-1)
        n_tri = _NUM_TRIANGLES.to(dev)[case]
        table = _TRIANGLE_TABLE.to(dev)[case]
        one, two = n_tri == 1, n_tri == 2
        faces = torch.cat([
            torch.gather(slot_vertex[one], 1, table[one][:, :3]),
            torch.gather(slot_vertex[two], 1, table[two]).reshape(-1, 3),
        ])
        face_tet = torch.cat([tets_c[one], tets_c[two].repeat_interleave(2, dim=0)])
        face_inside = torch.cat([inside_c[one], inside_c[two].repeat_interleave(2, dim=0)])

    ends = vertices[cut_edges]  # [E,2,3]
    s = sdf[cut_edges]  # [E,2]
    # p = (p_a s_b - p_b s_a) / (s_b - s_a)
    w = torch.stack([s[:, 1], -s[:, 0]], dim=-1)
    surface = (ends * w[..., None]).sum(1) / (s[:, 1] - s[:, 0])[:, None]

    with torch.no_grad():
        # orient each triangle so that its normal points from the tet's inside vertices to its outside ones
        tv = vertices[face_tet]  # [F,4,3]
        fi = face_inside.float()[..., None]
        outward = (tv * (1 - fi)).sum(1) / (1 - fi).sum(1) - (tv * fi).sum(1) / fi.sum(1)
        p = surface[faces]
        normal = torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
        flip = (normal * outward).sum(-1) < 0
        faces = torch.where(flip[:, None], faces[:, [0, 2, 1]], faces)
    return surface, faces


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
