"""The reference view's depth and normals: the tiny Marigold depth model, the estimate, and the losses that
use them (DreamCraft3D's relative-depth and reference normal losses)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import MarigoldDepthPipeline
from dreampolish.backend.guidance.base import ReferenceView
from dreampolish.backend.pipeline.priors import reference_needs
from dreampolish.backend.presets import get_preset
from dreampolish.backend.stages.base import (
    Ramp,
    ReferenceWeights,
    StageRender,
    reference_at,
    reference_losses,
)
from dreampolish.backend.stages.reference import estimate_geometry


def test_tiny_depth_model_loads_through_from_pretrained_and_predicts_depth(tiny_priors):
    pipe = tiny_priors.depth
    assert isinstance(pipe, MarigoldDepthPipeline)
    out = pipe(torch.rand(1, 3, 24, 40), output_type="pt", generator=torch.Generator().manual_seed(0))
    assert out.prediction.shape == (1, 1, 24, 40)


def test_estimate_gives_depth_in_unit_range_inside_the_mask_and_unit_normals(tiny_priors):
    rgb = torch.rand(24, 40, 3)
    mask = torch.zeros(24, 40, 1)
    mask[4:20, 8:30] = 1
    depth, normals = estimate_geometry(tiny_priors.depth, tiny_priors.normals, rgb, mask)
    inside = mask[..., 0] > 0.5
    assert depth.shape == (24, 40, 1) and normals.shape == (24, 40, 3)
    assert depth[inside].min() == 0 and depth[inside].max() == pytest.approx(1.0)
    assert (depth[~inside] == 0).all() and (normals[~inside] == 0).all()
    assert torch.allclose(normals[inside].norm(dim=-1), torch.ones(int(inside.sum())), atol=1e-4)
    assert estimate_geometry(None, None, rgb, mask) == (None, None)


class ConstantDepth:
    """A depth pipeline stand-in: Marigold's output layout, a depth that rises left to right."""

    device = torch.device("cpu")

    def __call__(self, image, **_):
        n, _, h, w = image.shape
        ramp = torch.linspace(0.2, 0.6, w).expand(n, 1, h, w)
        return type("Out", (), {"prediction": ramp})()


def test_estimate_keeps_the_order_of_depth_near_zero_far_one():
    mask = torch.ones(8, 10, 1)
    depth, _ = estimate_geometry(ConstantDepth(), None, torch.rand(8, 10, 3), mask)
    assert depth[0, 0, 0] == 0 and depth[0, -1, 0] == 1
    assert (depth[0, 1:, 0] > depth[0, :-1, 0]).all()


def test_the_presets_ask_for_reference_depth_not_normals():
    # DreamCraft3D: lambda_depth_rel 0.05 in the NeRF and NeuS stages, lambda_normal 0 in every config.
    for name in ("tiny", "standard"):
        preset = get_preset(name)
        assert preset.nerf.reference.depth.final() == pytest.approx(0.05)
        assert preset.neus.reference.depth.final() == pytest.approx(0.05)
        assert reference_needs(preset) == (True, False)
    normals_on = get_preset("tiny", {"nerf.reference.normal.start": 0.5})
    assert reference_needs(normals_on) == (True, True)


def _reference(orbit, normal: torch.Tensor) -> ReferenceView:
    cam = orbit([0.0], [0.0], size=8)
    mask = torch.zeros(8, 8, 1)
    mask[2:6, 2:6] = 1
    return ReferenceView(rgb=torch.ones(8, 8, 3), mask=mask, camera=cam, normal=normal)


def test_reference_normal_loss_is_zero_when_rendered_normals_match_and_two_when_opposite(orbit):
    # Reference normals: facing the camera (+Z in the camera frame). The camera sits on +X looking at the
    # origin, so a normal facing it is world +X.
    facing = torch.zeros(8, 8, 3)
    facing[..., 2] = 1
    ref = reference_at(_reference(orbit, facing), 8)
    weights = ReferenceWeights(rgb=Ramp(0.0), mask=Ramp(0.0), depth=Ramp(0.0), normal=Ramp(1.0))
    world_x = torch.zeros(1, 8, 8, 3)
    world_x[..., 0] = 1
    render = StageRender(rgb=torch.ones(1, 8, 8, 3), opacity=ref.mask, normal=world_x)
    total, terms = reference_losses(render, ref, weights, 0.0)
    assert terms["ref_normal"] == pytest.approx(0.0, abs=1e-5)
    away = dataclasses.replace(render, normal=-world_x)
    total, terms = reference_losses(away, ref, weights, 0.0)
    assert terms["ref_normal"] == pytest.approx(2.0, abs=1e-5) and float(total) == pytest.approx(2.0, abs=1e-5)
    # Off by default (DreamCraft3D's lambda_normal 0): no term.
    _, terms = reference_losses(away, ref, dataclasses.replace(weights, normal=Ramp(0.0)), 0.0)
    assert "ref_normal" not in terms


def test_a_build_marker_without_the_depth_model_is_not_a_complete_build(tiny_model_root, tmp_path):
    import json
    import shutil

    from dreampolish.backend.models.tiny import (
        BUILD_MARKER,
        TINY_FORMAT_VERSION,
        TINY_MODELS,
        tiny_models_present,
    )

    assert tiny_models_present(tiny_model_root)
    # What another version of the builder may leave in a shared cache: a marker of this format, no depth/.
    root = tmp_path / "tiny"
    for name in [n for n in TINY_MODELS if n != "depth"]:
        shutil.copytree(tiny_model_root / name, root / name)
    (root / BUILD_MARKER).write_text(json.dumps({"format": TINY_FORMAT_VERSION, "seed": 0}))
    assert not tiny_models_present(root)


def test_the_depth_model_is_not_kept_loaded_after_the_reference(monkeypatch, model_cache_dir):
    from dreampolish.backend.models.specs import MODEL_DIR_ENV
    from dreampolish.backend.pipeline.frame import job_frame
    from dreampolish.backend.pipeline.priors import DiffusionPriors
    from dreampolish.protocol.job import JobSpec

    monkeypatch.setenv(MODEL_DIR_ENV, str(model_cache_dir))
    preset = get_preset("tiny")
    spec = JobSpec("a vase", preset="tiny")
    priors = DiffusionPriors(torch.device("cpu"))
    view = priors.reference(spec, preset, job_frame(spec, preset), seed=0)
    assert view.depth is not None and view.depth.shape[:2] == view.mask.shape[:2]
    # Used once per job; resident it would add its weights to every later stage's peak memory.
    assert "depth" not in priors.models(preset)._loaded and "text_to_image" in priors.models(preset)._loaded
