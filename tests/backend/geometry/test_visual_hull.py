"""The pictures' visual hull as a signed distance (geometry/visual_hull.py), and the DMTet surface cut to it
(DmtetConfig.silhouette_hull): with exact cameras nothing may stick out of a silhouette a picture shows."""

from __future__ import annotations

import torch
import trimesh
from dreampolish.backend.geometry.fields import ColorField, FieldConfig
from dreampolish.backend.geometry.hashgrid import HashGridConfig
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.geometry.tets import make_tet_grid
from dreampolish.backend.geometry.visual_hull import VisualHull
from dreampolish.backend.render.cameras import CameraBatch, orbit_cameras
from dreampolish.backend.render.rasterize import MeshRasterizer
from dreampolish.backend.stages.dmtet import DmtetConfig, DmtetState

RASTER = MeshRasterizer("torch")
RADIUS = 0.3


def sphere() -> TriMesh:
    t = trimesh.creation.icosphere(subdivisions=4, radius=RADIUS)
    return TriMesh(torch.tensor(t.vertices, dtype=torch.float32), torch.tensor(t.faces))


def camera(elevation: float, azimuth: float = 0.0, size: int = 64) -> CameraBatch:
    return orbit_cameras(torch.tensor([elevation]), torch.tensor([azimuth]), torch.tensor([3.8]), torch.tensor([20.0]),
                         size, size)


def hull_of(mesh: TriMesh, cameras: list[CameraBatch]) -> VisualHull:
    return VisualHull(cameras, [RASTER.rasterize(mesh, c).mask[0, ..., 0] for c in cameras])


def test_the_hull_of_a_sphere_from_the_front_and_above_is_the_sphere_where_both_see_its_edge():
    hull = hull_of(sphere(), [camera(0.0), camera(89.0)])
    # one 64-px pixel is about 0.021 at the object's distance; the edge is found to a quarter of one
    d = hull.sdf(torch.tensor([[0.0, 0.0, 0.0], [0.4, 0.0, 0.0], [0.0, 0.36, 0.0], [0.25, 0.0, 0.25]]))
    assert abs(float(d[0]) + RADIUS) < 0.03  # the centre: a radius inside
    assert abs(float(d[1]) - 0.1) < 0.01  # beyond the edge seen from above: 0.1 outside
    assert abs(float(d[2]) - 0.06) < 0.01
    # off the sphere (0.35 from its centre) but inside both silhouettes: a hull holds the object, not only it
    assert float(d[3]) < 0


def test_a_dmtet_bump_outside_the_pictures_silhouettes_is_cut_off_by_the_hull():
    grid = make_tet_grid(24, 0.7)
    v = grid.vertices
    ball = v.norm(dim=-1) - RADIUS
    bump = (v - torch.tensor([RADIUS + 0.05, 0.0, 0.0])).norm(dim=-1) - 0.08  # a knob 0.13 off the sphere
    colour = FieldConfig(grid=HashGridConfig(n_levels=2, log2_hashmap_size=10, base_resolution=4, start_levels=2),
                         hidden_dim=8)
    state = DmtetState(DmtetConfig(grid_resolution=24, color=colour), grid, torch.minimum(ball, bump),
                       ColorField(colour))
    assert float(state.extract_mesh(normalize=False).vertices[:, 0].max()) > RADIUS + 0.1
    state.hull = hull_of(sphere(), [camera(0.0, 90.0), camera(89.0)])  # the pictures show the plain sphere
    cut = state.extract_mesh(normalize=False)
    assert float(cut.vertices.norm(dim=-1).max()) < RADIUS + 0.03
    state.cut_to_hull()  # the hull written into the state's SDF: the same surface without it
    assert state.hull is None
    assert torch.allclose(state.extract_mesh(normalize=False).vertices, cut.vertices, atol=1e-5)


def test_a_point_outside_the_hull_is_put_back_on_it_and_one_inside_stays():
    hull = hull_of(sphere(), [camera(0.0), camera(89.0)])
    points = torch.tensor([[0.4, 0.0, 0.0], [0.0, 0.0, 0.1]])
    moved = hull.project_inside(points)
    assert abs(float(hull.sdf(moved[:1])[0])) < 0.005  # on the hull's edge, about RADIUS from the axis
    assert abs(float(moved[0, 0]) - RADIUS) < 0.01
    assert torch.equal(moved[1], points[1])
