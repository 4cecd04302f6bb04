"""Surface polishing with the oracle's normals in place of the normal estimator."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import trimesh
from dreampolish.backend.geometry.mesh import TriMesh, normalize_to_unit
from dreampolish.backend.geometry.metrics import normal_consistency
from dreampolish.backend.geometry.visual_hull import VisualHull
from dreampolish.backend.guidance.base import ReferenceView
from dreampolish.backend.guidance.oracle import OracleNormals
from dreampolish.backend.render.cameras import orbit_cameras
from dreampolish.backend.render.rasterize import MeshRasterizer
from dreampolish.backend.stages.base import LoggingReporter
from dreampolish.backend.stages.polish import (
    SILHOUETTE_WEIGHT,
    PolishConfig,
    normal_polish_loss,
    normals_to_camera,
    polish_view_sampler,
    run_polish,
)


def _mesh(tm: trimesh.Trimesh) -> TriMesh:
    mesh = TriMesh(torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces, dtype=torch.int64))
    return normalize_to_unit(mesh)[0]


@pytest.fixture(scope="module")
def sharp_box() -> tuple[TriMesh, TriMesh]:
    """A box with sharp edges (the target) and the same mesh with its edges rounded off (what DMTet
    gives from a blurry prior)."""
    box = trimesh.creation.box((1.0, 1.0, 0.6))
    for _ in range(3):
        box = box.subdivide()
    rounded = box.copy()
    trimesh.smoothing.filter_laplacian(rounded, iterations=10)
    return _mesh(box), _mesh(rounded)


def test_rendered_normals_in_the_camera_frame_face_the_viewer():
    # A camera on +X looking at the origin sees a +X world normal as +Z (towards the viewer).
    cams = orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([30.0]), 4, 4)
    n_world = torch.zeros(1, 4, 4, 3)
    n_world[..., 0] = 1.0
    n_cam = normals_to_camera(n_world, cams)
    torch.testing.assert_close(n_cam[0, 0, 0], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6, rtol=0)


def test_polish_loss_is_zero_for_matching_normals_and_ignores_pixels_without_target():
    n = torch.nn.functional.normalize(torch.randn(2, 8, 8, 3), dim=-1)
    fg = torch.ones(2, 8, 8, 1, dtype=torch.bool)
    loss, count = normal_polish_loss(n, n, fg)
    assert float(loss) == pytest.approx(0.0, abs=1e-6) and int(count) == 128
    target = n.clone()
    target[0] = 0.0  # no estimate in the first view
    loss, count = normal_polish_loss(-n, target, fg)
    assert float(loss) == pytest.approx(2.0, abs=1e-5) and int(count) == 64


def test_polish_views_vary_field_of_view_and_frame_the_object():
    cfg = PolishConfig()
    cams = polish_view_sampler(cfg).sample(64, 32, 32, torch.Generator().manual_seed(0))
    fov = cams.fovy_deg
    assert float(fov.min()) >= 15.0 and float(fov.max()) <= 60.0 and float(fov.std()) > 5.0
    # A wider field of view puts the camera closer: the object fills every frame alike.
    assert float(torch.corrcoef(torch.stack([fov, cams.distance]))[0, 1]) < -0.9


def test_polish_sharpens_a_rounded_mesh_where_plain_smoothness_does_not(sharp_box):
    target, rounded = sharp_box
    raster = MeshRasterizer("torch")
    before = normal_consistency(rounded, target)
    cfg = PolishConfig(steps=40, lr=3e-3, render_size=64, batch_size=2)
    polished = run_polish(cfg, rounded, OracleNormals(target, raster), None, LoggingReporter("polish"),
                          rasterizer=raster, generator=torch.Generator().manual_seed(0))
    assert polished.num_faces == rounded.num_faces
    after = normal_consistency(polished, target)
    smooth_cfg = PolishConfig(steps=40, lr=3e-3, loss="smoothness")
    smoothed = run_polish(smooth_cfg, rounded, None, None, LoggingReporter("polish"), rasterizer=raster)
    ablation = normal_consistency(smoothed, target)
    assert after > before + 0.01, (before, after)
    assert after > ablation + 0.01, (ablation, after)


def test_polish_is_deterministic_for_a_seed(sharp_box):
    target, rounded = sharp_box
    raster = MeshRasterizer("torch")
    cfg = PolishConfig(steps=3, render_size=32, batch_size=1)
    runs = [run_polish(cfg, rounded, OracleNormals(target, raster), None, LoggingReporter("polish"), rasterizer=raster,
                       generator=torch.Generator().manual_seed(7)).vertices for _ in range(2)]
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)


def test_the_pool_is_estimated_one_view_a_call_whatever_the_step_batch(sharp_box):
    # Marigold's activations grow with the views of one call (about 3.5 GB each at 768 px, the dry run):
    # the pool's targets are estimated estimator_batch (one) at a time, not batch_size (four) at a time.
    target, rounded = sharp_box
    raster = MeshRasterizer("torch")
    oracle = OracleNormals(target, raster)
    seen: list[int] = []

    def estimator(rgb, opacity, cameras):
        seen.append(int(rgb.shape[0]))
        return oracle(rgb, opacity, cameras)

    cfg = PolishConfig(steps=1, render_size=32, batch_size=4, view_pool=6)
    run_polish(cfg, rounded, estimator, None, LoggingReporter("polish"), rasterizer=raster,
               generator=torch.Generator().manual_seed(0))
    assert seen == [1] * 6
    run_polish(PolishConfig(steps=1, render_size=32, batch_size=4, view_pool=6, estimator_batch=4), rounded,
               estimator, None, LoggingReporter("polish"), rasterizer=raster, generator=torch.Generator().manual_seed(0))
    assert seen[6:] == [4, 2]


def _torus_pictures(raster: MeshRasterizer, torus: TriMesh, mask_of) -> tuple[ReferenceView, ReferenceView]:
    """A front (0°) and an overhead (89°) 32-px picture of `torus` with exact cameras; `mask_of` takes the
    picture's mask from its RasterOutput (hard foreground or antialiased coverage)."""

    def picture(elevation: float) -> ReferenceView:
        cam = orbit_cameras(torch.tensor([elevation]), torch.tensor([0.0]), torch.tensor([3.8]), torch.tensor([20.0]), 32, 32)
        return ReferenceView(rgb=torch.ones(32, 32, 3), mask=mask_of(raster.rasterize(torus, cam)), camera=cam)

    return picture(0.0), picture(89.0)


def _iou_from_above(raster: MeshRasterizer, torus: TriMesh, top: ReferenceView, mesh: TriMesh) -> float:
    """Silhouette IoU of `mesh` against `torus` from the overhead picture's camera: the hole shows there."""
    seen, truth = raster.rasterize(mesh, top.camera).foreground, raster.rasterize(torus, top.camera).foreground
    return float((seen & truth).sum() / (seen | truth).sum())


def _polished_from_one_and_two_pictures(cfg, torus, disc, front, top, raster) -> dict:
    """The torus polished by an estimator that takes it for `disc`, from the front picture alone ("one
    picture") and from the front and overhead pictures ("two pictures"), at one seed."""
    polished = {}
    for name, reference in (("one picture", front), ("two pictures", dataclasses.replace(front, more=[top]))):
        polished[name] = run_polish(cfg, torus, OracleNormals(disc, raster), reference, LoggingReporter("polish"),
                                    rasterizer=raster, generator=torch.Generator().manual_seed(0))
    return polished


def test_with_several_pictures_polish_keeps_their_silhouettes_where_the_estimator_would_fill_a_hole():
    """Issue 31: the geometry stages carved a torus's hole that an overhead picture shows; an estimator that
    takes the torus for a disc (its normals all up on top) fills the hole in polish, unless the pictures'
    silhouettes are kept (PolishConfig.silhouette_weight)."""
    raster = MeshRasterizer("torch")
    torus = _mesh(trimesh.creation.torus(0.35, 0.12, major_sections=32, minor_sections=12))
    disc = _mesh(trimesh.creation.cylinder(0.5, 0.24, sections=32))

    front, top = _torus_pictures(raster, torus, lambda out: out.foreground.float()[0])

    cfg = PolishConfig(steps=20, lr=1e-2, render_size=32, batch_size=1, view_pool=4, silhouette_weight=SILHOUETTE_WEIGHT)
    polished = _polished_from_one_and_two_pictures(cfg, torus, disc, front, top, raster)
    assert _iou_from_above(raster, torus, top, polished["one picture"]) < 0.85  # one picture: the method's polish, the hole fills
    assert _iou_from_above(raster, torus, top, polished["two pictures"]) > 0.95


def test_with_several_pictures_polish_keeps_the_mesh_inside_their_visual_hull():
    """Issue 31: polish moved vertices of the torus from two pictures out of their silhouettes, and the mesh's
    bounding sphere with them. With PolishConfig.silhouette_hull a vertex that leaves the pictures' visual hull
    is put back: an estimator that takes the torus for a disc cannot fill the hole the overhead picture shows,
    nor widen the ring past the silhouettes. One picture is not a hull (its camera is placed, not exact)."""
    raster = MeshRasterizer("torch")
    torus = _mesh(trimesh.creation.torus(0.35, 0.12, major_sections=32, minor_sections=12))
    disc = _mesh(trimesh.creation.cylinder(0.55, 0.24, sections=32))

    front, top = _torus_pictures(raster, torus, lambda out: out.mask[0])
    hull = VisualHull([front.camera, top.camera], [front.mask[..., 0], top.mask[..., 0]])

    cfg = PolishConfig(steps=20, lr=1e-2, render_size=32, batch_size=1, view_pool=4, silhouette_hull=True)
    polished = _polished_from_one_and_two_pictures(cfg, torus, disc, front, top, raster)
    assert _iou_from_above(raster, torus, top, polished["one picture"]) < 0.85  # one picture: the method's polish, the hole fills
    assert float(hull.sdf(polished["one picture"].vertices).max()) > 0.02
    assert _iou_from_above(raster, torus, top, polished["two pictures"]) > 0.9
    # no farther out than the torus itself reaches (the 32-px pictures place the hull's edge within 0.014)
    assert float(hull.sdf(polished["two pictures"].vertices).max()) <= float(hull.sdf(torus.vertices).max())
