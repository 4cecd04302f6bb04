"""`dreampolish-backend dryrun`: every stage with the full-size priors on `meta`, a peak per stage, one JSON line;
a device slip in the guidance is reported as the failing stage. Nothing is downloaded."""

from __future__ import annotations

import json

import pytest
import torch
from dreampolish.backend.cli import main as backend_cli
from dreampolish.backend.commands.dryrun import LiveBytes
from dreampolish.backend.guidance import zero123 as zero123_module


def test_live_bytes_counts_new_storages_once_until_they_are_freed():
    counter = LiveBytes()
    with counter:
        a = torch.empty(250_000, device="meta")  # 1 MB
        view = a.view(500, 500)
        b = torch.empty(500_000, dtype=torch.bfloat16)  # 1 MB on the CPU
        both = counter.live
        del a, b
        after = counter.live
        del view
        last = counter.live
    assert both == 2_000_000
    assert after == 1_000_000  # the view keeps the meta storage alive
    assert last == 0 and counter.peak == 2_000_000


def _report(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
def test_dryrun_draft_runs_every_stage_with_full_size_priors(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be fetched
    monkeypatch.setenv("DREAMPOLISH_MODEL_DIR", str(tmp_path))
    assert backend_cli(["dryrun", "--preset", "draft", "--geometry", "small", "--option", "offload=priors"]) == 0
    report = _report(capsys.readouterr().out)
    assert report["preset"] == "draft" and report["device"] == "meta" and report["dtype"] == "bfloat16"
    assert list(report["stages"]) == ["reference", "nerf", "neus", "dmtet", "polish", "texture", "export"]
    assert all(s["ok"] for s in report["stages"].values()), report["stages"]
    # full-size weights: SD 2.1-base is 1.29 B parameters, 2.58 GB in bf16; Zero123-XL and Marigold alike
    assert report["weights_gb"]["text_to_image"] == pytest.approx(2.58, abs=0.01)
    # depth: the reference's estimate; intrinsics: the PBR bake (both unloaded after use, as a job does)
    assert set(report["weights_gb"]) == {"text_to_image", "zero123", "normals", "intrinsics", "depth"}
    resident = [s["resident_peak_gb"] for s in report["stages"].values()]
    assert report["resident_peak_gb"] == pytest.approx(max(resident), abs=1e-3)
    assert report["resident_peak_gb"] > 2.58 * 3  # three models resident at once without offloading
    # the texture stage trains a LoRA through the UNet and backpropagates through the VAE encoder
    assert report["stages"]["texture"]["resident_peak_gb"] > report["stages"]["reference"]["resident_peak_gb"]
    # offloaded: polish keeps only the normal estimator (text-to-image and Zero123 go to host memory, 5.08 GB),
    # and no stage asked for a prior stage_roles had sent away
    polish = report["stages"]["polish"]
    assert polish["resident_peak_gb"] - polish["peak_gb"] == pytest.approx(2.58 + 2.50, abs=0.02)
    assert report["moved_gb"]["polish"] == pytest.approx(2.58 + 2.50 + 0.0, abs=0.02)
    assert report["late_priors"] == []
    assert report["peak_gb"] < report["resident_peak_gb"]


def test_dryrun_names_the_stage_a_device_slip_in_the_guidance_breaks(monkeypatch, capsys, tmp_path):
    # A slip of the stable-zero123 kind inside the guidance: a CPU tensor stacked with device (meta) tensors.
    def cpu_polar(elevation_deg, azimuth_deg, distance, reference, encoding="delta_radius"):
        polar = torch.deg2rad(90.0 - elevation_deg.float()).to("meta")
        polar_ref = torch.deg2rad(torch.tensor(90.0 - reference.elevation_deg))
        d_az = torch.deg2rad(azimuth_deg.float() - reference.azimuth_deg).to("meta")
        return torch.stack([polar - polar_ref, d_az.sin(), d_az.cos(), polar_ref.expand_as(polar)], dim=-1)

    monkeypatch.setattr(zero123_module, "relative_camera", cpu_polar)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DREAMPOLISH_MODEL_DIR", str(tmp_path))
    code = backend_cli(["dryrun", "--preset", "draft", "--geometry", "small", "--option", "model_set=stable-zero123",
                        "--option", "neus.steps=1"])
    assert code == 1
    stages = _report(capsys.readouterr().out)["stages"]
    assert stages["reference"]["ok"] and not stages["nerf"]["ok"]
    assert "device" in stages["nerf"]["error"]
    assert stages["texture"] == {"ok": False, "error": "not reached"}


def test_the_second_step_renders_at_each_stage_s_largest_size():
    from dreampolish.backend.commands.dryrun import TWO_STEPS
    from dreampolish.backend.presets import get_preset
    from dreampolish.backend.schedules import stage_progress

    standard, dry = get_preset("standard"), get_preset("standard", TWO_STEPS)
    for stage in ("nerf", "neus", "dmtet"):
        schedule = getattr(standard, stage).resolution
        largest = schedule.high if schedule.high is not None else schedule.low
        assert getattr(dry, stage).resolution.at(stage_progress(1, 2)) == largest, stage
    assert dry.nerf.resolution.at(stage_progress(1, 2)) == 384 and dry.nerf.steps == 2


def test_the_dry_run_assembles_the_priors_as_a_job_does(monkeypatch):
    # The dry run's priors are the production DiffusionPriors (pipeline/priors.py) with models on `meta`:
    # the same guidance parts, settings and reference orbit (with its field of view) as a job's.
    from dreampolish.backend.commands.dryrun_meta import MetaDiffusionPriors
    from dreampolish.backend.pipeline.frame import job_frame
    from dreampolish.backend.pipeline.priors import DiffusionPriors
    from dreampolish.backend.presets import get_preset
    from dreampolish.backend.stages.base import ReferenceView
    from dreampolish.protocol.job import JobSpec

    framed = []
    reframe = zero123_module.frame_like_views
    monkeypatch.setattr(zero123_module, "frame_like_views", lambda rgb, mask, view, *a: (
        framed.append(view.fovy_deg), reframe(rgb, mask, view, *a))[1])
    priors = MetaDiffusionPriors(torch.bfloat16)
    assert isinstance(priors, DiffusionPriors)
    preset = get_preset("draft")
    frame = job_frame(JobSpec("a vase", preset="draft"), preset, "cpu")
    cam = frame.reference_camera
    reference = ReferenceView(rgb=torch.ones(cam.height, cam.width, 3), mask=torch.ones(cam.height, cam.width, 1),
                              camera=cam)
    words = priors.geometry_guidance("nerf", JobSpec("a vase", preset="draft"), preset, frame, reference, 0)
    assert [name for name, _, _ in words.inner.parts] == ["zero123", "text"]
    assert framed == [pytest.approx(float(cam.fovy_deg[0]))]  # the orbit carries the reference's field of view
    assert words.inner.parts[0][2].models.device.type == "meta"
    picture_only = priors.geometry_guidance("nerf", JobSpec("", preset="draft"), preset, frame, reference, 0)
    assert [name for name, _, _ in picture_only.inner.parts] == ["zero123"]  # no text guidance without words


def _tiny_marigold_on_meta(in_channels: int = 8, out_channels: int = 4, **extra):
    """A Marigold-shaped estimator (models/full_size.MarigoldShape) of tiny parts on `meta`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from dreampolish.backend.models.full_size import MarigoldShape
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=in_channels, out_channels=out_channels, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
            norm_num_groups=16)
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=16)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=4, max_position_embeddings=77))
    return MarigoldShape(unet=unet, vae=vae, text_encoder=text, device=torch.device("meta"), dtype=torch.float32,
                         processing_resolution=48, denoising_steps=2, **extra)


def _views(n: int):
    import trimesh
    from dreampolish.backend.geometry.mesh import TriMesh
    from dreampolish.backend.stages.polish import PolishConfig, polish_view_sampler

    t = trimesh.creation.icosphere(2, radius=0.45)
    mesh = TriMesh(torch.tensor(t.vertices, dtype=torch.float32), torch.tensor(t.faces))
    return mesh, polish_view_sampler(PolishConfig()).sample(n, 32, 32, torch.Generator().manual_seed(0), "cpu")


def _pool_estimates(calls: int) -> tuple[int, int, int]:
    """(peak, bytes live after, estimator runs) of a polish view pool of 6 views estimated one at a time."""
    from dreampolish.backend.commands.dryrun_meta import META, MeasuredEstimates, MetaNormalsBridge
    from dreampolish.backend.guidance.normals import MarigoldNormalTargets
    from dreampolish.backend.render.rasterize import MeshRasterizer
    from dreampolish.backend.stages.polish import PoolTargets

    mesh, cameras = _views(6)
    estimates = MeasuredEstimates(_tiny_marigold_on_meta(), calls)
    pool = PoolTargets(cameras, torch.Generator().manual_seed(0))
    counter = LiveBytes()
    with counter:
        pool.estimate_all(mesh, MeshRasterizer("torch"), MetaNormalsBridge(MarigoldNormalTargets(estimates), META),
                          batch=1, smooth=True)
        live = counter.live
    assert pool.targets is not None and pool.targets.shape == (6, 32, 32, 3)
    return counter.peak, live, estimates.ran


def _bake_decompositions(calls: int) -> tuple[int, int, int]:
    """(peak, bytes live after, estimator runs) of the PBR bake's decomposition of 5 views, one at a time."""
    from dreampolish.backend.commands.dryrun_meta import META, MeasuredEstimates, MetaIntrinsicsBridge
    from dreampolish.backend.guidance.intrinsics import MarigoldIntrinsics
    from dreampolish.backend.models.full_size import MARIGOLD_IID_APPEARANCE_TARGETS

    _, cameras = _views(5)
    estimates = MeasuredEstimates(_tiny_marigold_on_meta(
        12, 8, target_properties=MARIGOLD_IID_APPEARANCE_TARGETS), calls)
    counter = LiveBytes()
    with counter:
        maps = MetaIntrinsicsBridge(MarigoldIntrinsics(estimates), META)(
            torch.rand(5, 32, 32, 3), torch.ones(5, 32, 32, 1), cameras)
        live = counter.live
    assert maps.albedo.shape == (5, 32, 32, 3)
    return counter.peak, live, estimates.ran


def test_the_dry_run_runs_the_first_and_last_estimate_of_a_loop_and_reaches_the_loops_peak():
    # The dry run runs the first and the last of the polish view pool's estimates and of the PBR bake's
    # decompositions and stands in for the others (commands/dryrun_meta.MeasuredEstimates): the loops' peaks,
    # and what they leave alive (the pool's targets, the estimator's cache), are those with every estimate run.
    for loop, calls in ((_pool_estimates, 6), (_bake_decompositions, 5)):
        every_peak, every_live, every_ran = loop(0)
        peak, live, ran = loop(calls)
        assert (every_ran, ran) == (calls, 2), loop.__name__
        assert (peak, live) == (every_peak, every_live), loop.__name__
