"""Hand-over between representations: mesh signed distance, mesh -> DMTet -> mesh, density -> SDF."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from dreampolish.backend.geometry.fields import FieldConfig, SdfField, grid_points
from dreampolish.backend.geometry.hashgrid import HashGridConfig
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.geometry.metrics import chamfer_fraction
from dreampolish.backend.geometry.tets import make_tet_grid
from dreampolish.backend.geometry.transitions import (
    fit_sdf_field,
    mesh_signed_distance,
    occupancy_to_sdf,
    winding_number,
)
from dreampolish.backend.stages.dmtet import DmtetConfig, dmtet_from_mesh

SMALL_COLOR = FieldConfig(grid=HashGridConfig(n_levels=3, log2_hashmap_size=15, base_resolution=8, start_levels=3),
                          hidden_dim=16)


def _mesh(t: trimesh.Trimesh, color=None) -> TriMesh:
    v = torch.tensor(t.vertices, dtype=torch.float32)
    colors = None if color is None else torch.tensor(color).expand(v.shape[0], 3).clone()
    return TriMesh(v, torch.tensor(t.faces), vertex_colors=colors)


def test_signed_distance_of_a_sphere_mesh_matches_the_analytic_one():
    sphere = _mesh(trimesh.creation.icosphere(3, radius=0.45))
    grid = make_tet_grid(12, 0.7)
    d = mesh_signed_distance(sphere, grid.vertices, 13, grid.spacing)
    exact = grid.vertices.norm(dim=-1) - 0.45
    assert (d - exact).abs().max() < 0.01  # the icosphere's facets lie slightly inside the sphere
    # the lattice shortcut (narrow band + connected regions) agrees with the winding number everywhere
    assert torch.equal(d < 0, winding_number(grid.vertices, sphere) > 0.5)


def test_a_mesh_with_a_hole_keeps_its_inside():
    closed = trimesh.creation.icosphere(3, radius=0.45)
    top = closed.triangles_center[:, 2] > 0.4  # cut a cap off: the mesh is no longer watertight
    holed = _mesh(trimesh.Trimesh(closed.vertices, closed.faces[~top]))
    grid = make_tet_grid(12, 0.7)
    d = mesh_signed_distance(holed, grid.vertices, 13, grid.spacing)
    exact_inside = grid.vertices.norm(dim=-1) < 0.45
    away_from_hole = grid.vertices[:, 2] < 0.3
    assert torch.equal((d < 0)[away_from_hole], exact_inside[away_from_hole])


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
def test_mesh_to_dmtet_to_mesh_round_trip_keeps_the_shape_and_colour():
    torus = _mesh(trimesh.creation.torus(0.33, 0.14, major_sections=48, minor_sections=24), (0.9, 0.2, 0.1))
    cfg = DmtetConfig(grid_resolution=28, grid_bound=0.6, color=SMALL_COLOR, color_init_steps=60, rasterizer="torch")
    state = dmtet_from_mesh(cfg, torus, generator=torch.Generator().manual_seed(0), device="cpu")
    out = state.extract_mesh(normalize=False)
    assert chamfer_fraction(out, torus, n_samples=8000) < 0.01
    red = torch.tensor([0.9, 0.2, 0.1])
    assert float((out.vertex_colors - red).abs().mean()) < 0.1
    normalized = state.extract_mesh()
    assert abs(float(normalized.vertices.norm(dim=-1).max()) - 0.5) < 1e-4


def test_occupancy_to_sdf_gives_signed_distances_in_world_units():
    pts = grid_points(0.7, 48)
    occ = (pts.norm(dim=-1) < 0.4).numpy()
    sdf = occupancy_to_sdf(occ, 1.4 / 47)
    exact = (pts.norm(dim=-1) - 0.4).numpy()
    assert np.abs(sdf - exact).max() < 1.5 * 1.4 / 47
    # a stray occupied cell (a floater) is dropped: only the largest component is kept
    occ[2, 2, 2] = True
    assert occupancy_to_sdf(occ, 1.4 / 47)[2, 2, 2] > 0


def test_sdf_field_fits_a_target_signed_distance():
    torch.manual_seed(0)
    field = SdfField(FieldConfig(grid=HashGridConfig(n_levels=3, log2_hashmap_size=15, base_resolution=8,
                                                     start_levels=3), hidden_dim=16, n_feature_dims=3))

    def box(x):
        q = x.abs() - 0.25
        return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)

    x = (torch.rand(4000, 3) * 2 - 1) * 0.6
    before = float((field.sdf(x) - box(x)).abs().mean())
    fit_sdf_field(field, box, None, steps=80, batch=1024, lr=1e-2, generator=torch.Generator().manual_seed(0),
                  device="cpu")
    after = float((field.sdf(x) - box(x)).abs().mean())
    assert after < 0.3 * before
