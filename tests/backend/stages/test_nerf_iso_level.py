"""The NeRF stage's surface level with several pictures (issue 31): the density level whose main solid
reproduces the pictures' silhouettes, where the fixed level cuts a soft field into pieces."""

from __future__ import annotations

import math

import torch
from dreampolish.backend.geometry.fields import evaluate_on_grid
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.render.cameras import orbit_cameras
from dreampolish.backend.render.rasterize import MeshRasterizer
from dreampolish.backend.stages.base import ScaledReference
from dreampolish.backend.stages.nerf import NerfConfig, _main_surface, fit_iso_level


class _SoftRing(torch.nn.Module):
    """A ring's density as a short NeRF stage leaves it: soft, peaking at 6.4 on two sides and dipping to 4.5
    between them, so that the solid above 5 is two arcs and the main solid one of them."""

    bound = 0.7

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def density(self, x: torch.Tensor) -> torch.Tensor:
        ring = (x[:, :2].norm(dim=-1) - 0.3).square() + x[:, 2].square()
        theta = torch.atan2(x[:, 1], x[:, 0])
        return 6.4 * (0.85 + 0.15 * torch.cos(2 * theta)) * torch.exp(-ring / 0.1**2)


class _State:
    def __init__(self) -> None:
        self.field = _SoftRing()
        self.cfg = NerfConfig(iso_density=5.0, mesh_resolution=32)


def _surface(state: _State, level: float) -> TriMesh:
    values = evaluate_on_grid(state.field.density, state.field.bound, 32, "cpu").numpy()
    verts, faces = _main_surface(values, state.field.bound, level)
    return TriMesh(torch.as_tensor(verts, dtype=torch.float32), torch.as_tensor(faces))


def _picture(mesh: TriMesh, elevation: float, raster: MeshRasterizer) -> ScaledReference:
    cam = orbit_cameras(torch.tensor([elevation]), torch.tensor([0.0]), torch.tensor([3.8]), torch.tensor([20.0]), 32, 32)
    mask = raster.rasterize(mesh, cam).foreground.float()
    return ScaledReference(cam, torch.ones(1, 32, 32, 3), mask, None)


def test_the_level_that_reproduces_the_pictures_keeps_the_whole_ring_where_the_fixed_level_keeps_an_arc():
    state, raster = _State(), MeshRasterizer("torch")
    whole = _surface(state, 2.5)  # what the pictures show: the ring all round (its hole from above)
    pictures = [_picture(whole, 0.0, raster), _picture(whole, 89.0, raster)]
    level, iou = fit_iso_level(state, pictures, raster)

    def quadrants(mesh: TriMesh) -> int:
        angles = torch.atan2(mesh.vertices[:, 1], mesh.vertices[:, 0])
        return len(torch.unique(torch.floor((angles + math.pi) / (math.pi / 2)).clamp(max=3)))

    fixed = _surface(state, 5.0)
    assert quadrants(fixed) <= 2  # one arc: the main solid at the fixed level
    assert level < 5.0 and iou > 0.8
    assert quadrants(_surface(state, level)) == 4  # the whole ring
