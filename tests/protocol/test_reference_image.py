"""The reference image field of a submit: round trip, limits, and a clear error for every bad image."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from dreampolish.protocol import codec
from dreampolish.protocol import image as image_module
from dreampolish.protocol import messages as m
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.image import ReferenceImage, read_png_header
from dreampolish.protocol.job import JobSpec, validate_spec
from dreampolish.protocol.limits import LIMITS

from tests.support.images import BAD_IMAGES, png_bytes, rgba


def roundtrip(spec: JobSpec) -> JobSpec:
    msg = m.Submit(spec=spec)
    return codec.decode(codec.encode(msg)).spec


def test_png_and_array_images_travel_unchanged():
    png = png_bytes(rgba())
    back = roundtrip(JobSpec("", image=ReferenceImage(png=png)))
    assert back.image.png == png and back.image.array is None and back.prompt == ""
    arr = rgba()
    back = roundtrip(JobSpec("a chair", image=ReferenceImage(array=arr)))
    np.testing.assert_array_equal(back.image.array, arr)
    floats = (arr[..., :3] / 255.0).astype(np.float32)
    np.testing.assert_array_equal(roundtrip(JobSpec("x", image=ReferenceImage(array=floats))).image.array, floats)
    assert roundtrip(JobSpec("x")).image is None


def test_png_header_reads_size_and_alpha():
    h = read_png_header(png_bytes(rgba(20, 30)))
    assert (h.width, h.height, h.has_alpha) == (30, 20, True)
    assert not read_png_header(png_bytes(rgba(20, 30)[..., :3])).has_alpha
    assert ReferenceImage(png=png_bytes(rgba(20, 30))).size == (30, 20)


def test_prompt_is_optional_with_an_image_only():
    validate_spec(JobSpec("", image=ReferenceImage(png=png_bytes(rgba()))))
    with pytest.raises(ValidationError, match="prompt is empty"):
        validate_spec(JobSpec(""))




@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_a_bad_image_is_refused_with_a_message_that_says_why(name):
    image, message = BAD_IMAGES[name]
    with pytest.raises(ValidationError, match=message):
        validate_spec(JobSpec("a chair", image=image))


@pytest.mark.parametrize("name", ["not a png", "empty", "one pixel", "bomb", "crc"])
def test_a_bad_image_is_refused_on_decode_too(name):
    image, message = BAD_IMAGES[name]
    frames = codec.encode(m.Submit(spec=JobSpec("a chair", image=image)))
    with pytest.raises(ValidationError, match=message):
        codec.decode(frames)


def test_png_size_limit(monkeypatch):
    png = png_bytes(rgba())
    monkeypatch.setattr(image_module, "LIMITS", dataclasses.replace(LIMITS, max_reference_image_bytes=len(png) - 1))
    with pytest.raises(ValidationError, match="the limit is"):
        ReferenceImage(png=png).validate()


def test_an_image_is_for_generate_jobs_that_run_the_reference_stage():
    image = ReferenceImage(png=png_bytes(rgba()))
    with pytest.raises(ValidationError, match="runs the reference stage"):
        validate_spec(JobSpec("x", image=image, stages=["nerf"]))
    with pytest.raises(ValidationError, match="generate jobs"):
        validate_spec(JobSpec("x", image=image, mode="texture"))


def test_pillow_reads_what_the_check_accepts():
    Image = pytest.importorskip("PIL.Image")
    with Image.open(io.BytesIO(png_bytes(rgba()))) as im:
        assert np.array_equal(np.asarray(im), rgba())
