"""Several pictures, each with its camera (spec.views, issue 31): round trip, the single-image request still
meaning one view, the limit, and every bad picture or camera refused naming the picture by its index."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.errors import LimitExceeded, ValidationError
from dreampolish.protocol.image import ReferenceImage
from dreampolish.protocol.job import JobSpec, PictureView, reference_pictures, validate_spec
from dreampolish.protocol.limits import LIMITS
from dreampolish.protocol.scene import CameraSpec

from tests.support.images import BAD_IMAGES, png_bytes, rgba


def camera(x: float, name: str = "") -> CameraSpec:
    matrix = np.eye(4, dtype=np.float32)
    matrix[0, 3] = x
    matrix[2, 3] = 4.0
    return CameraSpec(matrix_world=matrix, resolution=(64, 48), name=name)


def views(n: int) -> list[PictureView]:
    return [PictureView(ReferenceImage(png=png_bytes(rgba(24 + i, 32))), camera(float(i), f"cam{i}")) for i in range(n)]


def roundtrip(spec: JobSpec) -> JobSpec:
    return codec.decode(codec.encode(m.Submit(spec=spec))).spec


def test_views_travel_unchanged_in_order():
    sent = views(3)
    back = roundtrip(JobSpec("", views=sent))
    assert len(back.views) == 3
    for a, b in zip(sent, back.views):
        assert a.image.png == b.image.png
        np.testing.assert_array_equal(a.camera.matrix_world, b.camera.matrix_world)
        assert (a.camera.name, a.camera.resolution) == (b.camera.name, b.camera.resolution)
    assert roundtrip(JobSpec("x")).views == []


def test_the_single_image_request_is_one_picture_with_its_camera():
    image = ReferenceImage(png=png_bytes(rgba()))
    cams = [camera(0.0, "a"), camera(1.0, "b")]
    pictures = reference_pictures(JobSpec("", image=image, cameras=cams, reference_camera=1))
    assert len(pictures) == 1 and pictures[0][0] is image and pictures[0][1] is cams[1]
    assert reference_pictures(JobSpec("", image=image)) == [(image, None)]  # the default front camera
    assert reference_pictures(JobSpec("words")) == []
    sent = views(2)
    assert [p[1].name for p in reference_pictures(JobSpec("", views=sent))] == ["cam0", "cam1"]


def test_a_prompt_is_optional_with_views():
    validate_spec(JobSpec("", views=views(2)))


def test_more_views_than_the_limit_are_refused_on_both_sides():
    many = views(LIMITS.max_reference_views + 1)
    with pytest.raises(ValidationError, match=f"limit is {LIMITS.max_reference_views}"):
        validate_spec(JobSpec("", views=many))
    with pytest.raises(LimitExceeded, match="views"):
        roundtrip(JobSpec("", views=many))


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_a_bad_picture_is_refused_naming_its_index(name):
    image, message = BAD_IMAGES[name]
    sent = views(3)
    sent[2] = PictureView(image, camera(2.0, "side"))
    with pytest.raises(ValidationError, match=rf"views\[2\] \(camera 'side'\): .*{message}"):
        validate_spec(JobSpec("", views=sent))


@pytest.mark.parametrize("name", ["not a png", "empty", "crc"])
def test_a_bad_picture_is_refused_on_decode_naming_its_index(name):
    image, message = BAD_IMAGES[name]
    sent = views(2)
    sent[1] = PictureView(image, sent[1].camera)
    with pytest.raises(ValidationError, match=rf"spec.views\[1\] \(camera 'cam1'\): .*{message}"):
        roundtrip(JobSpec("", views=sent))


def test_a_bad_camera_is_refused_naming_the_picture():
    sent = views(2)
    sent[1] = PictureView(sent[1].image, dataclasses.replace(sent[1].camera, lens_mm=0.0))
    with pytest.raises(ValidationError, match=r"views\[1\] \(camera 'cam1'\): camera.lens_mm"):
        validate_spec(JobSpec("", views=sent))
    with pytest.raises(ValidationError, match=r"spec.views\[1\] \(camera 'cam1'\): camera.lens_mm"):
        roundtrip(JobSpec("", views=sent))


def test_views_are_for_generate_jobs_that_run_the_reference_stage_and_not_beside_image():
    with pytest.raises(ValidationError, match="either as image or as views"):
        validate_spec(JobSpec("", views=views(2), image=ReferenceImage(png=png_bytes(rgba()))))
    with pytest.raises(ValidationError, match="runs the reference stage"):
        validate_spec(JobSpec("", views=views(2), stages=["nerf"]))
