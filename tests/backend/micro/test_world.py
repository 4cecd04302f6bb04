"""The micro priors' procedural world: its objects, renders and captions, and the tokenizer over its words."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from dreampolish.backend.guidance.text_prior import VIEW_DIRECTIONS
from dreampolish.backend.micro import world
from dreampolish.backend.micro.train import write_word_tokenizer
from PIL import Image


def test_every_object_is_in_the_pipelines_object_frame():
    for shape in world.SHAPES:
        mesh = world.shape_mesh(shape)
        lo, hi = mesh.bounds()
        assert torch.allclose(0.5 * (lo + hi), torch.zeros(3), atol=1e-5), shape
        assert abs(float(mesh.vertices.norm(dim=-1).max()) - 0.5) < 1e-4, shape


def test_faces_point_outwards_so_the_renders_normals_face_the_camera():
    # Seen from any side, a visible surface's camera-frame normal points towards the viewer (+Z).
    cams = world.view_cameras(torch.tensor([0.0, 30.0, 60.0]), torch.tensor([0.0, 120.0, -100.0]), 48)
    for shape in world.SHAPES:
        r = world.render_object(world.coloured_mesh("red", shape), cams)
        fg = r.mask[..., 0] > 0.99
        assert float((r.normal[..., 2][fg] > 0).float().mean()) > 0.97, shape


def test_renders_are_seeded_and_the_held_out_pairs_are_never_rendered():
    cfg = world.WorldConfig(views_per_object=2, size=32)
    first = next(world.render_world(cfg))
    again = next(world.render_world(cfg))
    assert torch.equal(first.renders.rgb, again.renders.rgb) and first.captions == again.captions
    objects = world.training_objects(cfg)
    assert not set(world.HELD_OUT) & set(objects)
    # every held-out colour and shape is still seen, in other pairs
    for colour, shape in world.HELD_OUT:
        assert any(c == colour for c, _ in objects) and any(s == shape for _, s in objects)


def test_captions_carry_the_view_word_the_pipelines_view_prompts_give():
    # front = azimuth 0 (the reference camera's side), back = 180, side = 90, overhead above 60°
    captions = world.caption("blue", "lamp", torch.tensor([0.0, 0.0, 0.0, 70.0]), torch.tensor([0.0, 180.0, 90.0, 0.0]))
    assert captions == ["a blue lamp, front view", "a blue lamp, back view", "a blue lamp, side view",
                        "a blue lamp, overhead view"]


def test_prompts_of_the_vocabulary_parse_and_others_do_not():
    assert world.parse_prompt("A Green torus, front view") == ("green", "torus")
    assert world.parse_prompt("a ceramic teapot with a blue glaze") is None


def test_every_vocabulary_word_is_one_token_and_other_text_still_tokenizes(tmp_path):
    words = world.vocabulary_words()
    tok = write_word_tokenizer(tmp_path, words, 32)
    for w in words:
        assert tok.tokenize(w) == [w + "</w>"], w
    assert len(tok("a ceramic teapot").input_ids) > 4  # unknown words fall back to bytes
    assert set(VIEW_DIRECTIONS) <= set(words)


def test_a_world_picture_is_an_image_request_seen_from_its_camera():
    # The image-to-3D request the micro bench makes: the pipeline places its reference camera where the
    # world's render was taken (elevation, azimuth, the prior views' 20 degrees), and reads the picture's alpha.
    from dreampolish.backend.micro.quality import world_picture
    from dreampolish.backend.pipeline.frame import job_frame
    from dreampolish.backend.presets import get_preset
    from dreampolish.protocol.job import JobSpec, validate_spec

    image, camera = world_picture("red", "cone", 30.0, 20.0)
    spec = validate_spec(JobSpec("a red cone", preset="micro", image=image, cameras=[camera]))
    ref = job_frame(spec, get_preset("micro")).reference_camera
    assert float(ref.elevation_deg[0]) == pytest.approx(30.0, abs=1e-3)
    assert float(ref.azimuth_deg[0]) == pytest.approx(20.0, abs=1e-3)
    assert float(ref.fovy_deg[0]) == pytest.approx(world.VIEW_FOVY_DEG, abs=1e-3)
    alpha = np.asarray(Image.open(io.BytesIO(image.png)))[..., 3]
    assert 0.05 < (alpha > 127).mean() < 0.6  # the cone, on a transparent background


def test_the_silhouette_span_the_micro_preset_frames_pictures_to_is_the_worlds():
    from dreampolish.backend.presets import MICRO_SILHOUETTE_SPAN, get_preset

    assert min(world.silhouette_spans().values()) == pytest.approx(MICRO_SILHOUETTE_SPAN, abs=0.005)
    assert get_preset("micro").reference.image_fill == MICRO_SILHOUETTE_SPAN
    assert get_preset("standard").reference.image_fill == 1.0  # the real priors keep DreamCraft3D's framing
