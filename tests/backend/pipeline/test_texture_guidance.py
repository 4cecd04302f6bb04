"""Which prior guides the texture: the text prior on the job's prompt, or, for a picture sent without a
prompt, the view-conditioned prior conditioned on that picture (issue 29: the text prior on an empty prompt
pulled every view of an image-only job towards a generic image)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from dreampolish.backend.guidance.base import ReferenceView
from dreampolish.backend.guidance.score_distillation import ScoreDistillation
from dreampolish.backend.guidance.zero123 import Zero123Guidance
from dreampolish.backend.pipeline.priors import DiffusionPriors
from dreampolish.backend.presets import get_preset
from dreampolish.backend.render.cameras import ViewSampler


def _texture_guidance(tiny_priors, prompt: str, image: object | None, colour=(0.8, 0.1, 0.1)):
    preset = get_preset("tiny")
    priors = DiffusionPriors(torch.device("cpu"))
    priors._models[preset.model_set] = tiny_priors  # the tiny models in place of a download
    cam = ViewSampler().reference(32, 32)
    picture = torch.zeros(32, 32, 3)
    picture[8:24, 8:24] = torch.tensor(colour)
    mask = torch.zeros(32, 32, 1)
    mask[8:24, 8:24] = 1.0
    reference = ReferenceView(rgb=picture, mask=mask, camera=cam)
    spec = SimpleNamespace(prompt=prompt, negative_prompt="", image=image, views=[])
    frame = SimpleNamespace(reference_camera=cam)
    return priors.texture_guidance(spec, preset, frame, 0, reference), preset


def test_a_picture_without_a_prompt_is_textured_by_the_prior_that_sees_the_picture(tiny_priors):
    combined, preset = _texture_guidance(tiny_priors, "  ", image=object())
    [(name, weight, guidance)] = combined.parts
    assert isinstance(guidance, Zero123Guidance), "an empty prompt must not drive the texture"
    assert guidance.config.guidance_scale == preset.texture.picture_guidance.guidance_scale
    # conditioned on the picture: another picture gives another condition
    other, _ = _texture_guidance(tiny_priors, "", image=object(), colour=(0.1, 0.2, 0.9))
    assert not torch.allclose(other.parts[0][2].reference_latent, guidance.reference_latent)


def test_a_prompt_keeps_the_text_prior_with_or_without_a_picture(tiny_priors):
    for image in (None, object()):
        combined, _ = _texture_guidance(tiny_priors, "a red chair", image=image)
        [(_, _, guidance)] = combined.parts
        assert isinstance(guidance, ScoreDistillation)
