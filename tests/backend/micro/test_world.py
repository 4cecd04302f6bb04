"""The micro priors' procedural world: its objects, renders and captions, and the tokenizer over its words."""

from __future__ import annotations

import torch
from dreampolish.backend.guidance.text_prior import VIEW_DIRECTIONS
from dreampolish.backend.micro import world
from dreampolish.backend.micro.train import write_word_tokenizer
from dreampolish.backend.render.cameras import orbit_cameras


def test_every_object_is_in_the_pipelines_object_frame():
    for shape in world.SHAPES:
        mesh = world.shape_mesh(shape)
        lo, hi = mesh.bounds()
        assert torch.allclose(0.5 * (lo + hi), torch.zeros(3), atol=1e-5), shape
        assert abs(float(mesh.vertices.norm(dim=-1).max()) - 0.5) < 1e-4, shape


def test_faces_point_outwards_so_the_renders_normals_face_the_camera():
    # Seen from any side, a visible surface's camera-frame normal points towards the viewer (+Z).
    cams = orbit_cameras(torch.tensor([0.0, 30.0, 60.0]), torch.tensor([0.0, 120.0, -100.0]),
                         torch.full((3,), world.VIEW_DISTANCE), torch.full((3,), world.VIEW_FOVY_DEG), 48, 48)
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
