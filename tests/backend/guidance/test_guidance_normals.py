"""Normal-estimator targets: Marigold's output comes back in the renderer's camera frame, and is cached per view."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from dreampolish.backend.guidance.normals import MarigoldNormalTargets


class TruthEstimator:
    """Stands in for MarigoldNormalsPipeline: returns a known normal map in Marigold's output format
    (output_type="pt": [N,3,H,W], X right, Y up, Z towards the viewer, row 0 at the top)."""

    def __init__(self, marigold_normals: torch.Tensor):
        self.marigold_normals = marigold_normals  # [3,H,W]
        self.calls = 0
        self.device = torch.device("cpu")

    def __call__(self, image, **kwargs):
        assert kwargs["output_type"] == "pt"
        self.calls += 1
        return SimpleNamespace(prediction=self.marigold_normals.expand(image.shape[0], -1, -1, -1).clone())


def test_a_tilted_plane_comes_back_with_its_world_normal(orbit):
    cams = orbit([20.0], [40.0], size=16)
    c2w = cams.c2w[0]
    to_camera = c2w[:3, :3].T
    # A plane through the origin facing the camera, tilted away from the view direction.
    n_world = torch.nn.functional.normalize(c2w[:3, 3] / c2w[:3, 3].norm() + torch.tensor([0.3, -0.2, 0.4]), dim=0)
    n_camera = to_camera @ n_world
    assert n_camera[2] > 0  # it faces the viewer: +Z towards the camera
    opacity = torch.zeros(1, 16, 16, 1)
    opacity[:, 4:12, 2:14] = 1.0
    estimator = TruthEstimator(n_camera[:, None, None].expand(3, 16, 16))
    targets = MarigoldNormalTargets(estimator)
    normals = targets(torch.rand(1, 16, 16, 3), opacity, cams)
    assert normals.shape == (1, 16, 16, 3)
    inside = opacity[0, ..., 0] > 0
    back_in_world = normals[0][inside] @ c2w[:3, :3].T
    torch.testing.assert_close(back_in_world, n_world.expand_as(back_in_world), atol=1e-5, rtol=0)
    assert normals[0][~inside].abs().max() == 0


def test_image_rows_and_columns_keep_their_directions(orbit):
    """A sphere seen head-on: pixels at the top have normals pointing up the camera's +Y, right ones +X."""
    size = 17
    cams = orbit([0.0], [0.0], size=size)
    ys, xs = torch.meshgrid(torch.linspace(1, -1, size), torch.linspace(-1, 1, size), indexing="ij")  # row 0 = top
    inside = xs**2 + ys**2 < 0.8
    z = (1 - (xs**2 + ys**2)).clamp(min=0).sqrt()
    sphere = torch.stack([xs, ys, z]) * inside
    targets = MarigoldNormalTargets(TruthEstimator(sphere))
    normals = targets(torch.rand(1, size, size, 3), inside[None, ..., None].float(), cams)[0]
    up_world = cams.c2w[0, :3, 1]
    right_world = cams.c2w[0, :3, 0]
    world = normals @ cams.c2w[0, :3, :3].T
    assert (world[2, size // 2] @ up_world) > 0.5  # top middle pixel
    assert (world[size - 3, size // 2] @ up_world) < -0.5  # bottom middle pixel
    assert (world[size // 2, size - 3] @ right_world) > 0.5  # right middle pixel


def test_repeated_views_are_served_from_the_cache(orbit):
    estimator = TruthEstimator(torch.tensor([0.0, 0.0, 1.0])[:, None, None].expand(3, 8, 8))
    targets = MarigoldNormalTargets(estimator)
    cams = orbit([0.0, 10.0], [0.0, 90.0], size=8)
    rgb, opacity = torch.rand(2, 8, 8, 3), torch.ones(2, 8, 8, 1)
    targets(rgb, opacity, cams)
    targets(rgb, opacity, cams)
    assert estimator.calls == 1 and targets.hits == 2 and targets.misses == 2
    targets(rgb, opacity, orbit([0.0, 45.0], [0.0, 90.0], size=8))
    assert estimator.calls == 2 and targets.misses == 3


def test_tiny_marigold_gives_unit_normals_inside_the_mask(tiny_priors, orbit):
    targets = MarigoldNormalTargets(tiny_priors.normals)
    opacity = torch.zeros(2, 24, 24, 1)
    opacity[:, 6:18, 6:18] = 1
    normals = targets(torch.rand(2, 24, 24, 3), opacity, orbit([0.0, 20.0], [0.0, 70.0], size=24))
    assert normals.shape == (2, 24, 24, 3) and torch.isfinite(normals).all()
    inside = opacity[..., 0] > 0
    torch.testing.assert_close(normals[inside].norm(dim=-1), torch.ones(int(inside.sum())), atol=1e-4, rtol=0)
    assert normals[~inside].abs().max() == 0
