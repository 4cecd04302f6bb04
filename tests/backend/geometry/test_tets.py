"""Generated tetrahedral grids and iso-surface extraction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dreampolish.backend.geometry.fields import grid_points
from dreampolish.backend.geometry.marching import marching_cubes, marching_tetrahedra
from dreampolish.backend.geometry.tets import make_tet_grid


def _edge_use(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    directed = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    undirected = torch.sort(directed, dim=1).values
    return (torch.unique(undirected, dim=0, return_counts=True)[1],
            torch.unique(directed, dim=0, return_counts=True)[1])


def _signed_volume(v: torch.Tensor, f: torch.Tensor) -> float:
    p = v[f].double()
    return float((p[:, 0] * torch.linalg.cross(p[:, 1], p[:, 2])).sum() / 6)


def _sphere(p: torch.Tensor) -> torch.Tensor:
    return p.norm(dim=-1) - 0.45


def _torus(p: torch.Tensor) -> torch.Tensor:
    q = torch.stack([p[..., :2].norm(dim=-1) - 0.33, p[..., 2]], dim=-1)
    return q.norm(dim=-1) - 0.14


def test_tet_grid_is_conforming_and_fills_the_cube():
    g = make_tet_grid(3, 0.5)
    assert g.vertices.shape == (64, 3) and g.tets.shape == (6 * 27, 4)
    p = g.vertices[g.tets].double()
    vol = torch.linalg.det(torch.stack([p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]], dim=1)).abs() / 6
    assert vol.min() > 0
    assert float(vol.sum()) == pytest.approx(1.0, rel=1e-6)
    # every triangle is shared by two tets, except those on the cube's boundary (2 per cell face)
    tris = torch.cat([g.tets[:, [0, 1, 2]], g.tets[:, [0, 1, 3]], g.tets[:, [0, 2, 3]], g.tets[:, [1, 2, 3]]])
    counts = torch.unique(torch.sort(tris, dim=1).values, dim=0, return_counts=True)[1]
    assert set(counts.tolist()) == {1, 2}
    assert int((counts == 1).sum()) == 6 * 9 * 2


@pytest.mark.parametrize("sdf_fn, volume", [
    (_sphere, 4 / 3 * math.pi * 0.45**3),
    (_torus, 2 * math.pi**2 * 0.33 * 0.14**2),
])
def test_marching_tetrahedra_gives_watertight_outward_surfaces(sdf_fn, volume):
    g = make_tet_grid(24, 0.6)
    v, f = marching_tetrahedra(g.vertices, sdf_fn(g.vertices), g.tets)
    undirected, directed = _edge_use(f)
    assert (undirected == 2).all(), "every edge is shared by exactly two triangles"
    assert (directed == 1).all(), "neighbouring triangles are consistently oriented"
    assert _signed_volume(v, f) == pytest.approx(volume, rel=0.05)
    assert sdf_fn(v).abs().max() < 0.25 * g.spacing


def test_marching_tetrahedra_is_differentiable_in_sdf_and_positions():
    g = make_tet_grid(8, 0.6)
    verts = g.vertices.clone().requires_grad_(True)
    sdf = _sphere(g.vertices).clone().requires_grad_(True)
    v, f = marching_tetrahedra(verts, sdf, g.tets)
    # growing the surface outward: the mean radius increases when the SDF decreases
    v.norm(dim=-1).mean().backward()
    assert sdf.grad is not None and verts.grad is not None
    assert sdf.grad.abs().sum() > 0 and verts.grad.abs().sum() > 0
    assert sdf.grad[sdf.grad != 0].max() < 0


def test_marching_cubes_orients_outward_for_both_conventions():
    values = _sphere(grid_points(0.6, 40)).numpy()
    v, f = marching_cubes(values, 0.6, 0.0, inside="below")
    assert _signed_volume(torch.tensor(v), torch.tensor(f)) > 0
    v2, f2 = marching_cubes(-values, 0.6, 0.0, inside="above")
    assert _signed_volume(torch.tensor(v2), torch.tensor(f2)) > 0
    assert np.abs(np.linalg.norm(v, axis=1) - 0.45).max() < 0.01
    empty_v, empty_f = marching_cubes(values + 10, 0.6)
    assert empty_v.shape == (0, 3) and empty_f.shape == (0, 3)


def test_keep_main_solid_drops_floaters_and_fills_bubbles():
    from dreampolish.backend.geometry.marching import keep_main_solid

    p = grid_points(0.7, 40)
    ball = p.norm(dim=-1) - 0.5
    bubble = -(p.norm(dim=-1) - 0.15)
    floater = (p - torch.tensor([0.6, 0.6, 0.6])).norm(dim=-1) - 0.05
    sdf = torch.minimum(torch.maximum(ball, bubble), floater).numpy()
    cleaned = keep_main_solid(sdf, 0.0, inside="below")
    np.testing.assert_array_equal(cleaned < 0, (ball < 0).numpy())
    # density convention (inside above the level) behaves the same
    cleaned_density = keep_main_solid(-sdf, 0.0, inside="above")
    np.testing.assert_array_equal(cleaned_density > 0, (ball < 0).numpy())
