"""The shipped micro priors: the `micro` model set finds them inside the package, they load through the real
`from_pretrained` code as the classes of the real roles, and they stay small."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import MarigoldNormalsPipeline
from dreampolish.backend.micro import world
from dreampolish.backend.micro.train import WEIGHTS_DIR, MicroTrainConfig, train_all
from dreampolish.backend.models.loading import (
    ModelNotFoundError,
    load_normals,
    load_text_to_image,
    load_zero123,
)
from dreampolish.backend.models.specs import MODEL_DIR_ENV, ModelSpec, model_set

MAX_SHIPPED_MB = 40


def test_the_micro_set_points_into_the_package_whatever_the_model_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path))
    micro = model_set("micro")
    for spec in micro.specs():
        assert spec.in_package and spec.local_path.is_relative_to(WEIGHTS_DIR.parent), spec
    assert micro.intrinsics is None and micro.depth is None  # the preset bakes base colour only


def test_a_missing_shipped_folder_says_how_to_rebuild_it():
    spec = ModelSpec.from_dict("normals", {"local": "micro/weights/absent", "in_package": True})
    with pytest.raises(ModelNotFoundError, match="make micro-priors"):
        load_normals(spec, "cpu")
    with pytest.raises(ValueError, match="in_package"):
        ModelSpec.from_dict("normals", {"hub_id": "x/y", "in_package": True})


def test_shipped_weights_load_as_the_real_classes_and_stay_small():
    micro = model_set("micro")
    t2i = load_text_to_image(micro.text_to_image, "cpu")
    assert t2i.dtype == torch.float32 and t2i.native_resolution == 64
    assert t2i.tokenizer.tokenize("torus") == ["torus</w>"]
    z = load_zero123(micro.zero123, "cpu")
    assert z.unet.config.in_channels == 8
    normals = load_normals(micro.normals, "cpu")
    assert isinstance(normals, MarigoldNormalsPipeline)
    size = sum(f.stat().st_size for f in WEIGHTS_DIR.rglob("*") if f.is_file())
    assert size < MAX_SHIPPED_MB * 2**20, f"{size / 2**20:.1f} MB"
    meta = json.loads((WEIGHTS_DIR / "micro_priors.json").read_text())
    assert [tuple(p) for p in meta["held_out"]] == list(world.HELD_OUT)


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
def test_the_training_script_writes_loadable_folders(tmp_path):
    # A smoke run of the real script: few views, a few steps; the folders load as the shipped ones do.
    cfg = MicroTrainConfig(world=world.WorldConfig(views_per_object=2, size=64)).scaled(0.002)
    out = train_all(tmp_path / "weights", cfg)
    for role, load in (("text_to_image", load_text_to_image), ("zero123", load_zero123), ("normals", load_normals)):
        size = {"image_size": 64} if role == "zero123" else {}  # the micro Zero123's images (defaults.json)
        load(ModelSpec.from_dict(role, {"local": str(out / role), **size}), "cpu")
    assert not (tmp_path / "weights.building").exists()


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
def test_the_micro_normal_estimator_knows_the_held_out_objects_normals():
    from dreampolish.backend.guidance.normals import MarigoldNormalTargets, NormalEstimatorConfig
    from dreampolish.backend.micro.quality import normal_error_deg

    pipe = load_normals(model_set("micro").normals, "cpu")
    for colour, shape in world.HELD_OUT:
        estimated, facing = normal_error_deg(MarigoldNormalTargets(pipe, NormalEstimatorConfig(num_inference_steps=1)),
                                             colour, shape)
        # measured 6-13 degrees (BENCHMARKS.md); the guess "all normals face the camera" is off by about 40
        assert estimated < 20.0 and estimated < facing / 2, (colour, shape, estimated, facing)


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
def test_the_micro_text_prior_draws_the_prompts_colour_for_a_held_out_pair():
    from dreampolish.backend.models.loading import PriorModels
    from dreampolish.backend.render.colour import delta_e
    from dreampolish.backend.stages.reference import ReferenceConfig, generate_reference

    models = PriorModels(model_set("micro"), torch.device("cpu"))
    for colour, shape in world.HELD_OUT:
        rgb, mask = generate_reference(models, world.object_prompt(colour, shape), "", 64, 64, 0, "cpu",
                                       ReferenceConfig(num_inference_steps=20))
        inside = mask[..., 0] > 0.5
        assert 0.05 < float(inside.float().mean()) < 0.8, (colour, shape)  # an object on a plain background
        seen = rgb[inside].mean(0).numpy()
        distances = {c: float(delta_e(seen, world.COLOURS[c])) for c in world.COLOURS}
        assert min(distances, key=distances.get) == colour, (colour, distances)


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
def test_a_wide_camera_gets_the_square_image_the_micro_prior_knows_fitted_in_its_frame():
    # The micro text prior was trained on squares: generated at 64 x 32 it makes noise. The micro preset
    # generates a square and fits it into the camera's frame by its shorter side (reference.generation.square).
    from dreampolish.backend.models.loading import PriorModels
    from dreampolish.backend.presets import get_preset
    from dreampolish.backend.render.colour import delta_e
    from dreampolish.backend.stages.reference import generate_reference

    cfg = get_preset("micro").reference.generation
    assert cfg.square
    models = PriorModels(model_set("micro"), torch.device("cpu"))
    rgb, mask = generate_reference(models, "a green torus", "", 64, 36, 0, "cpu", cfg)
    assert rgb.shape == (36, 64, 3)
    assert float(mask[:, :14].max()) == 0 and float(mask[:, -14:].max()) == 0  # the square sits in the middle
    seen = rgb[mask[..., 0] > 0.5].mean(0).numpy()
    distances = {c: float(delta_e(seen, world.COLOURS[c])) for c in world.COLOURS}
    assert min(distances, key=distances.get) == "green", distances


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
def test_the_micro_zero123_draws_the_view_its_camera_asks_for():
    # Held-out views sampled through guidance/zero123.py's own conditioning and CFG: with the right camera they
    # are much closer to the world's renders than with a wrong one, so a camera bug in the method shows on the CPU.
    from dreampolish.backend.micro.quality import CAMERA_BUGS, novel_view_error, wrong_camera

    z = load_zero123(model_set("micro").zero123, "cpu")
    for colour, shape in (("red", "cone"), ("green", "torus")):
        right = novel_view_error(z, colour, shape)
        for name, bug in CAMERA_BUGS.items():
            with wrong_camera(bug):
                wrong = novel_view_error(z, colour, shape)
            # measured (BENCHMARKS.md): cone 0.0059 against 0.0146 flipped and 0.0111 removed; torus 0.0185
            # against 0.0567 and 0.0524
            assert right < 0.7 * wrong, (colour, shape, name, right, wrong)
