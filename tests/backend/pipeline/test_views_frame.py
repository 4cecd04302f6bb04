"""Several pictures with exact cameras (issue 31): the object frame their silhouettes agree on
(backend/pipeline/views.py), and pictures that cannot show one object refused at submit naming the picture,
by the pipeline's check and by a running backend, which keeps serving."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from dreampolish.backend.micro import quality
from dreampolish.backend.pipeline.frame import job_frame
from dreampolish.backend.pipeline.views import one_view_as_image, views_hull
from dreampolish.backend.presets import get_preset
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.job import JobSpec, PictureView


def pictures(colour: str, shape: str, views: list[tuple[float, float]]) -> list[PictureView]:
    return [PictureView(*quality.world_picture(colour, shape, el, az)) for el, az in views]


@pytest.mark.parametrize("colour,shape,views", [
    ("green", "torus", [(0.0, 0.0), (89.0, 0.0)]),
    ("red", "cone", [(30.0, 0.0), (0.0, 0.0)]),
    ("blue", "mug", [(30.0, 0.0), (0.0, 90.0), (60.0, 200.0)]),
])
def test_the_frame_is_the_objects_own(colour, shape, views):
    # The world's objects sit at the origin with bounding-sphere radius 0.5 (world.py): the pictures' frame
    # must find that centre and size, where a single picture's recentring was 6 px of 64 and 0.91x off.
    hull = views_hull(JobSpec("", views=pictures(colour, shape, views)))
    assert np.linalg.norm(hull.centre) < 0.07, hull
    assert 0.44 < hull.radius < 0.53, hull
    assert min(hull.coverage) > 0.95, hull


def test_each_picture_is_seen_from_its_own_camera_in_the_frame():
    views = pictures("green", "torus", [(0.0, 0.0), (89.0, 0.0)])
    preset = get_preset("micro")
    frame = job_frame(JobSpec("", preset="micro", views=views), preset)
    assert len(frame.view_cameras) == 2 and frame.view_cameras[0] is frame.reference_camera
    # the world's cameras at 3.8 from the origin: in the frame (scale ~1, centre ~0) about as far, as high
    assert abs(float(frame.reference_camera.elevation_deg[0])) < 3
    assert float(frame.view_cameras[1].elevation_deg[0]) > 80
    assert 3.4 < float(frame.view_cameras[1].distance[0]) < 4.3


def test_one_view_is_the_single_picture_request():
    (view,) = pictures("red", "cone", [(30.0, 0.0)])
    spec = one_view_as_image(JobSpec("", preset="micro", views=[view]))
    assert spec.image is view.image and spec.cameras[0] is view.camera and not spec.views
    preset = get_preset("micro")
    a = job_frame(JobSpec("", preset="micro", views=[view]), preset)
    b = job_frame(JobSpec("", preset="micro", image=view.image, cameras=[view.camera]), preset)
    np.testing.assert_array_equal(a.transform, b.transform)
    assert a.view_cameras is None and bool((a.reference_camera.c2w == b.reference_camera.c2w).all())


def _turned_away(view: PictureView) -> PictureView:
    m = np.asarray(view.camera.matrix_world, np.float32).copy()
    m[:3, 0] *= -1  # half a turn about the camera's up axis: it looks away from the object
    m[:3, 2] *= -1
    return PictureView(view.image, dataclasses.replace(view.camera, matrix_world=m, name="away"))


def _moved(view: PictureView, offset: tuple[float, float, float], name: str) -> PictureView:
    m = np.asarray(view.camera.matrix_world, np.float32).copy()
    m[:3, 3] += np.asarray(offset, np.float32)
    return PictureView(view.image, dataclasses.replace(view.camera, matrix_world=m, name=name))


def _other_size(view: PictureView, colour: str, shape: str, elevation: float) -> PictureView:
    """The picture of the object from twice as near, sent with the camera of the usual distance."""
    import torch
    from dreampolish.backend.micro import world

    from tests.support.images import png_bytes

    cams = world.view_cameras(torch.tensor([elevation]), torch.tensor([0.0]), 64)
    cams.c2w[:, :3, 3] *= 0.5
    r = world.render_object(world.coloured_mesh(colour, shape), cams)
    rgba = (torch.cat([r.rgb[0], r.mask[0]], -1).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    from dreampolish.protocol.image import ReferenceImage

    return PictureView(ReferenceImage(png=png_bytes(rgba)), dataclasses.replace(view.camera, name="near"))


def _bad_views(kind: str) -> list[PictureView]:
    views = pictures("green", "torus", [(0.0, 0.0), (89.0, 0.0), (30.0, 120.0)])
    if kind == "a camera pointing away":
        views[2] = _turned_away(views[2])
    elif kind == "a camera somewhere else":
        views[2] = _moved(views[2], (0.0, 1.5, 0.0), "moved")
    elif kind == "another size":
        views[2] = _other_size(views[2], "green", "torus", 30.0)
    return views


@pytest.mark.parametrize("kind,message", [
    ("a camera pointing away", r"views\[2\] \(camera 'away'\): its camera points away"),
    ("a camera somewhere else", r"views\[2\] \(camera 'moved'\): its silhouette's rays miss"),
    ("another size", r"views\[2\] \(camera 'near'\): only \d+% of its silhouette"),
])
def test_pictures_that_disagree_are_refused_naming_the_picture(kind, message):
    from dreampolish.backend.pipeline import DreamPolishPipeline

    spec = JobSpec("", preset="micro", views=_bad_views(kind))
    with pytest.raises(ValidationError, match=message):
        DreamPolishPipeline().check(spec)


def test_a_picture_without_its_cameras_aspect_is_refused():
    views = pictures("green", "torus", [(0.0, 0.0), (89.0, 0.0)])
    views[1] = PictureView(views[1].image, dataclasses.replace(views[1].camera, resolution=(64, 32)))
    with pytest.raises(ValidationError, match=r"views\[1\].*camera renders 64x32"):
        views_hull(JobSpec("", views=views))


def test_the_backend_refuses_them_at_submit_and_keeps_serving(tmp_path):
    from dreampolish.backend.pipeline import DreamPolishPipeline
    from dreampolish.protocol.client import BackendClient, RequestRejected

    from tests.support.pipelines import running_backend

    with running_backend(tmp_path / "store", pipeline=DreamPolishPipeline) as server:
        with BackendClient(server.endpoint, timeout_s=30) as client:
            client.connect()
            with pytest.raises(RequestRejected, match=r"views\[2\] \(camera 'away'\)") as info:
                client.submit(JobSpec("", preset="micro", views=_bad_views("a camera pointing away")))
            assert info.value.code == "invalid_message"
            assert client.list_jobs() == []  # nothing was queued, and the backend still answers
        with BackendClient(server.endpoint, timeout_s=30) as again:
            again.connect()
            assert again.list_jobs() == []


def test_a_paused_job_resumes_with_every_picture_at_its_camera(tmp_path):
    # The reference stage's checkpoint holds every picture; restored after a pause, each goes back to its
    # own camera (the frame's view cameras), and NeRF fits them all.
    from dreampolish.backend.micro import world
    from dreampolish.backend.micro.quality import _Recorder
    from dreampolish.backend.pipeline import DreamPolishPipeline
    from dreampolish.backend.pipeline.priors import OraclePriors
    from dreampolish.backend.pipeline_api import ResumePoint

    seen: list[tuple[str, list[float], float]] = []

    class Watching(OraclePriors):
        def geometry_guidance(self, stage, spec, preset, frame, reference, seed):
            seen.append((stage, [round(float(v.camera.elevation_deg[0])) for v in reference.views()],
                         float(reference.more[0].mask.mean())))
            return super().geometry_guidance(stage, spec, preset, frame, reference, seed)

    spec = JobSpec("", preset="micro", views=pictures("green", "torus", [(0.0, 0.0), (89.0, 0.0)]),
                   stages=["reference", "nerf"], pause_after=["reference"], options={"nerf.steps": 2})
    pipeline = DreamPolishPipeline(priors=Watching(world.shape_mesh("torus")))
    assert pipeline.run(spec, _Recorder(tmp_path)).paused_after == "reference"
    pipeline.run(spec, _Recorder(tmp_path), ResumePoint())
    [(stage, elevations, top_cover)] = seen
    assert stage == "nerf" and abs(elevations[0]) <= 1 and elevations[1] >= 85
    assert 0.05 < top_cover < 0.6  # the overhead picture's ring, restored from the checkpoint
