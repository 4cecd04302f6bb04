"""Offloading (preset field `offload`): before each stage the diffusion priors keep on the device only the
models that stage's guidance uses (pipeline/priors.stage_roles) and move the others to host memory, counting
the bytes; a model asked for while in host memory comes back and is named."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from dreampolish.backend.models.residency import Residency
from dreampolish.backend.pipeline.priors import DiffusionPriors, stage_roles
from dreampolish.backend.presets import get_preset
from dreampolish.protocol.job import JobSpec


def _bundle(n: int) -> SimpleNamespace:
    return SimpleNamespace(unet=torch.nn.Linear(n, n, bias=False), vae=torch.nn.Linear(n, 1, bias=False))


class _Models:
    """PriorModels' placing part over small modules (host and device: the CPU, so only the books move)."""

    def __init__(self) -> None:
        self._loaded = {"text_to_image": _bundle(10), "zero123": _bundle(20), "normals": _bundle(30)}
        self.residency = Residency(torch.device("cpu"))

    def place(self, keep: set[str]) -> int:
        return self.residency.place(self._loaded, keep)


def _bytes(bundle: SimpleNamespace) -> int:
    return sum(p.numel() * 4 for m in (bundle.unet, bundle.vae) for p in m.parameters())


def test_each_stage_keeps_only_its_own_priors_on_the_device_and_counts_what_moved(monkeypatch):
    models = _Models()
    priors = DiffusionPriors(torch.device("cpu"))
    monkeypatch.setattr(priors, "models", lambda preset: models)
    spec, preset = JobSpec("a vase", preset="standard"), get_preset("standard")
    loaded = models._loaded
    assert priors.enter_stage("nerf", spec, preset, offload=False) == 0 and models.residency.hosted == set()
    assert priors.enter_stage("nerf", spec, preset, offload=True) == _bytes(loaded["normals"])
    assert models.residency.hosted == {"normals"}
    moved = priors.enter_stage("polish", spec, preset, offload=True)  # normals back, the two others out
    assert moved == sum(_bytes(b) for b in loaded.values())
    assert models.residency.hosted == {"text_to_image", "zero123"}
    assert priors.moved == {"nerf": _bytes(loaded["normals"]), "polish": moved}
    # a stage that asks for a prior in host memory gets it back, and the books name it
    assert models.residency.ready("zero123", loaded["zero123"]) is loaded["zero123"]
    assert models.residency.hosted == {"text_to_image"} and models.residency.late == ["zero123"]


def test_the_stage_roles_follow_the_guidance_assembly():
    preset = get_preset("standard")
    text, picture = JobSpec("a vase", preset="standard"), JobSpec("", preset="standard")
    assert stage_roles("nerf", text, preset) == {"zero123", "text_to_image"}
    assert stage_roles("nerf", picture, preset) == {"zero123"}  # an image job without words has no text SDS
    assert stage_roles("polish", text, preset) == {"normals"}
    assert stage_roles("texture", text, preset) == {"text_to_image", "intrinsics"}
    assert stage_roles("export", text, preset) == set()
    # a picture without words is textured by Zero123 (DiffusionPriors.texture_guidance)
    with_image = SimpleNamespace(prompt="", image=object())
    assert stage_roles("texture", with_image, preset) == {"zero123", "intrinsics"}
    assert "text_to_image" not in stage_roles("reference", with_image, preset)


def test_an_offloaded_job_completes_and_no_stage_asks_for_a_prior_it_sent_away(tiny_priors, tmp_path):
    # The tiny models through the production DiffusionPriors: with offload=priors every stage starts by
    # placing the models (on the CPU host and device are one, so only the books move) and a stage that used
    # a prior stage_roles had sent to host memory would show in `late`.
    from dreampolish.backend.pipeline import DreamPolishPipeline

    from tests.support.recording import RecordingContext

    preset = get_preset("tiny")
    priors = DiffusionPriors(torch.device("cpu"))
    priors._models[preset.model_set] = tiny_priors  # the tiny models in place of a download
    options = {"offload": "priors", **{f"{s}.steps": 2 for s in ("nerf", "neus", "dmtet", "polish", "texture")}}
    ctx = RecordingContext(tmp_path)
    DreamPolishPipeline(priors=priors).run(JobSpec("a red cone", preset="tiny", options=options), ctx)
    assert [r[0] for r in ctx.results][-2:] == ["texture", "export"]  # the job completed
    assert list(priors.moved) == ["reference", "nerf", "neus", "dmtet", "polish", "texture", "export"]
    assert priors.moved["polish"] > 0 and tiny_priors.residency.hosted >= {"text_to_image", "zero123"}
    assert tiny_priors.residency.late == []
