"""The robustness grid's scoring (backend/micro/robustness.py, bench/robustness_grid.py): a mesh is named by
the world's shape it is nearest to, and a torus whose hole was never carved fails from above although the
held-out views (−10°…50°) pass it."""

from __future__ import annotations

from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.micro import quality, robustness, world


def _payload(mesh: TriMesh):
    return TriMesh(mesh.vertices, mesh.faces).to_payload()


def test_every_shape_of_the_world_is_named_as_itself_and_nothing_else_is_close():
    for shape in world.SHAPES:
        d = quality.shape_distances(_payload(world.shape_mesh(shape)), 0.0, samples=3000)
        assert min(d, key=d.get) == shape, (shape, d)
        # the next nearest shape is far off: the grid's "right" is not a coin toss between two shapes
        assert sorted(d.values())[1] > 4 * d[shape], (shape, d)


def test_a_torus_without_its_hole_fails_from_above_though_the_held_out_views_pass_it():
    torus = world.shape_mesh("torus")
    lo, hi = torus.bounds()
    # the same torus with its hole filled: a disc of its outer radius and its height
    disc = world.shape_mesh("cylinder")
    dlo, dhi = disc.bounds()
    disc = TriMesh((disc.vertices - (dlo + dhi) / 2) / (dhi - dlo) * (hi - lo) + (lo + hi) / 2, disc.faces)
    assert quality.overhead_iou(_payload(torus), "torus", 0.0) > 0.99
    from_above = quality.overhead_iou(_payload(disc), "torus", 0.0)
    assert from_above < 0.85, from_above  # the bound on the hole, seen from 60°-89°
    held_out = quality.score(_payload(disc), "green", "torus", 0.0)
    assert held_out.iou > quality.MIN_IOU, held_out  # what the quality test alone would have let through


def test_the_grid_covers_every_shape_every_held_out_pair_and_pictures_without_words():
    cells = robustness.GRID
    assert {c.shape for c in cells} == set(world.SHAPES)
    assert all(any(c.colour == colour and c.shape == shape for c in cells) for colour, shape in world.HELD_OUT)
    assert any(c.picture and not c.words for c in cells)
    assert {c.elevation_deg for c in cells if not c.picture} >= {0.0, 40.0}
    assert len({c.seed for c in cells}) >= 2
