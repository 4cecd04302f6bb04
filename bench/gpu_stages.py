"""Speed and peak GPU memory of every stage at the `draft` and `standard` settings, and the projected time
of a whole job, without downloading weights.

On CUDA the priors of the default model set are built at full size from their published configs, with
random weights (the same FLOPs and memory as the real checkpoints): Stable Diffusion 2.1-base (configs
shared with bench/gpu_guidance.py), Zero123-XL (SD 1.x UNet with 8 input channels, CLIP ViT-L/14 image
encoder, camera projection) and Marigold normals v1.1 (SD 2 UNet with 8 input channels). A job then runs
through the real DreamPolishPipeline (reference -> nerf -> neus -> dmtet -> polish -> texture -> export)
with the preset's real resolutions, batches, grids and guidance, but only a few steps per stage. From the
time at the end of each step (the pipeline's `step_end` hook) it derives, per stage:

    ms/step     mean over the steps after `--warmup` warm-up steps (per resolution phase when the
                stage switches its render size, e.g. NeRF's 128 -> 384 px). The clock synchronises
                the GPU only at the edges of each timed window, never inside it, so the steps run as in
                a job: without host syncs, losses read back every `report_every` steps without
                blocking, and the guidance compiled where the preset says so (its compilation falls in
                the warm-up steps and is reported as part of fixed_s);
    fixed_s     the stage's time outside its step loop (initialisation, NeuS/DMTet hand-over fits,
                mesh extraction, UV bake), measured once;
    projected_s fixed_s + Σ_phase preset_steps_phase · ms/step_phase, plus for polish the normal
                estimator's cost per distinct view times the views the preset's pool will show it;
    peak_gb     torch.cuda.max_memory_allocated during the stage (reset at each stage's start).

The projected job time is the sum over the stages (reference and export at their measured time), shown
next to the targets on one H100: standard <= 10 min, draft <= 3 min, peak memory <= 24 GB. The model
build is reported apart (a backend keeps its priors loaded between jobs).

Caveats of a short run: the steps measured are the stage's first ones, so NeRF's occupancy grid is not yet
skipping empty space and the hash grids have only their start levels (both make later steps cheaper,
so NeRF/NeuS tend to be over-estimated); the meshes polish and texture see come from a few steps of
random guidance, so their sizes (and the bake's time) differ from a real job's.

The run is bounded by --budget-s (default 150 s, model build included): the budget is checked at every
step, and the stages and presets left when it runs out are listed as skipped with a note.

Without CUDA (or with --smoke) it runs a smoke mode on the CPU that follows the same code path: the
project's tiny models are built into a temporary folder and loaded through the real loader, the presets
are shrunk with the `tiny` preset's overrides and each stage runs 2 steps, so that CI proves the script
works. Every run ends with ONE JSON line holding every figure, the device name and "smoke".

Run:  .venv/bin/python bench/gpu_stages.py [--presets draft,standard] [--warmup 2] [--measure 4]
                                           [--budget-s 150] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from dreampolish.backend.config_values import apply_options
from dreampolish.backend.guidance.base import NormalTargets
from dreampolish.backend.models.full_size import (
    CLIP_VIT_L14_VISION,
    MARIGOLD_IID_UNET,
    MARIGOLD_UNET,
    SD21_TEXT_ENCODER,
    SD21_UNET,
    SD_VAE,
    ZERO123_UNET,
)
from dreampolish.backend.models.loading import PriorModels
from dreampolish.backend.models.tiny import SD21_SCHEDULER
from dreampolish.backend.pipeline import DiffusionPriors, DreamPolishPipeline
from dreampolish.backend.pipeline_api import JobCancelled, JobFailed
from dreampolish.backend.presets import PipelinePreset, get_preset, shrink_to_tiny
from dreampolish.backend.render.cameras import CameraBatch
from dreampolish.backend.schedules import stage_progress
from dreampolish.backend.stages.base import ResolutionSchedule
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import MeshPayload
from torch import Tensor

logger = logging.getLogger("gpu_stages")

MEASURED_STAGES = ("nerf", "neus", "dmtet", "polish", "texture")
"""Stages with a step loop: measured per step and projected to the preset's step count."""

FIXED_STAGES = ("reference", "export")
"""Stages without a step loop: counted at their measured time."""

JOB_TARGET_S = {"standard": 600.0, "draft": 180.0}
"""Target time of a whole job on one H100 (issue 7)."""

PEAK_TARGET_GB = 24.0
"""Target peak GPU memory of a job, in GB (10^9 bytes)."""

BUDGET_RESERVE_S = 15.0
"""Seconds of the budget kept for what cannot be interrupted (a stage's mesh extraction or bake in
flight when the budget runs out) and the summary."""

# -- the published configs of the default model set's Zero123 and Marigold checkpoints -----------------

ZERO123_CAMERA_PROJECTION = dict(embedding_dim=768, additional_embeddings=4)
"""clip_camera_projection/config.json."""


MARIGOLD_SCHEDULER = {**SD21_SCHEDULER, "prediction_type": "v_prediction", "timestep_spacing": "trailing",
                      "rescale_betas_zero_snr": True}
"""Marigold v1.1's DDIM scheduler (v-prediction, trailing timesteps, zero terminal SNR)."""

MARIGOLD_PIPELINE = dict(prediction_type="normals", use_full_z_range=True, default_denoising_steps=4,
                         default_processing_resolution=768)
"""Marigold normals v1.1 model_index.json: 4 denoising steps at 768 px by default."""


@dataclass
class BenchSettings:
    """What one benchmark run measures."""

    presets: tuple[str, ...] = ("draft", "standard")
    """Presets measured, in order."""
    warmup_steps: int = 2
    """Steps at the start of each phase that are run but not timed (allocator, kernel selection)."""
    measured_steps: int = 4
    """Timed steps per phase."""
    budget_s: float = 150.0
    """Wall-clock bound of the whole run, model build included."""
    smoke: bool = False
    """CPU smoke mode: tiny models, tiny sizes (module docstring)."""
    prompt: str = "a ceramic teapot with a blue glaze"
    """The job's prompt (the weights are random: it only sets the token count)."""


# -- 1. the priors ----------------------------------------------------------------------------------------


def build_full_size_models(device: torch.device, tokenizer_dir: Path) -> PriorModels:
    """The default model set's three priors at full size with random weights, frozen, in the backend's dtype.

    Modules are created directly on the device (fast random initialisation), then cast. The tokenizer is
    the tiny builder's byte-level CLIP vocabulary: token ids differ from the real one, the 77-token
    sequences (and so the cost) do not."""
    from diffusers import AutoencoderKL, DDIMScheduler, MarigoldNormalsPipeline, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from dreampolish.backend.models.camera_projection import CLIPCameraProjection
    from dreampolish.backend.models.loading import TextToImageModels, Zero123Models, choose_dtype
    from dreampolish.backend.models.specs import model_set
    from dreampolish.backend.models.tiny import write_tiny_tokenizer_files
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    diffusers_logging.set_verbosity_error()  # one "cast with .to()" warning per module says nothing here
    dtype = choose_dtype(device)
    specs = model_set("default")
    # Schedulers stay on the CPU, as from_pretrained leaves them (outside the device context below).
    sd_scheduler, marigold_scheduler = DDIMScheduler(**SD21_SCHEDULER), DDIMScheduler(**MARIGOLD_SCHEDULER)
    tokenizer = write_tiny_tokenizer_files(tokenizer_dir)
    token_ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)

    def frozen(module: torch.nn.Module) -> Any:
        return module.to(dtype=dtype).requires_grad_(False).eval()

    torch.manual_seed(0)
    with torch.device(device):
        text_to_image = TextToImageModels(
            unet=frozen(UNet2DConditionModel(**SD21_UNET)),
            vae=frozen(AutoencoderKL(**SD_VAE)),
            text_encoder=frozen(CLIPTextModel(CLIPTextConfig(**SD21_TEXT_ENCODER, **token_ids))),
            tokenizer=tokenizer, scheduler=sd_scheduler, device=device, dtype=dtype,
            spec=specs.text_to_image)
        zero123 = Zero123Models(
            unet=frozen(UNet2DConditionModel(**ZERO123_UNET)),
            vae=frozen(AutoencoderKL(**{**SD_VAE, "sample_size": 256})),
            image_encoder=frozen(CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_L14_VISION))),
            camera_projection=frozen(CLIPCameraProjection(**ZERO123_CAMERA_PROJECTION)),
            scheduler=DDIMScheduler.from_config(sd_scheduler.config), camera_encoding=specs.zero123.camera_encoding,
            device=device, dtype=dtype, spec=specs.zero123)
        normals = MarigoldNormalsPipeline(
            unet=frozen(UNet2DConditionModel(**MARIGOLD_UNET)),
            vae=frozen(AutoencoderKL(**{**SD_VAE, "sample_size": 768})),
            scheduler=marigold_scheduler,
            text_encoder=frozen(CLIPTextModel(CLIPTextConfig(**SD21_TEXT_ENCODER, **token_ids))),
            tokenizer=tokenizer, **MARIGOLD_PIPELINE)
    normals.set_progress_bar_config(disable=True)
    intrinsics = _random_intrinsics(tokenizer, token_ids, frozen, device)
    return PriorModels(specs, device, dtype, _loaded={"text_to_image": text_to_image, "zero123": zero123,
                                                      "normals": normals, "intrinsics": intrinsics})


def _random_intrinsics(tokenizer: Any, token_ids: dict, frozen: Any, device: torch.device) -> Any:
    """A MarigoldIntrinsicsPipeline of Marigold-IID-Appearance's shapes (12 -> 8 latent channels) with random
    weights; its scheduler and step count as Marigold v1.1's normals (MARIGOLD_SCHEDULER, 4 steps at 768 px)."""
    from diffusers import AutoencoderKL, DDIMScheduler, MarigoldIntrinsicsPipeline, UNet2DConditionModel
    from dreampolish.backend.models.tiny import IID_APPEARANCE_TARGETS
    from transformers import CLIPTextConfig, CLIPTextModel

    scheduler = DDIMScheduler(**MARIGOLD_SCHEDULER)
    with torch.device(device):
        pipe = MarigoldIntrinsicsPipeline(
            unet=frozen(UNet2DConditionModel(**MARIGOLD_IID_UNET)),
            vae=frozen(AutoencoderKL(**{**SD_VAE, "sample_size": 768})), scheduler=scheduler,
            text_encoder=frozen(CLIPTextModel(CLIPTextConfig(**SD21_TEXT_ENCODER, **token_ids))),
            tokenizer=tokenizer, prediction_type="intrinsics", target_properties=IID_APPEARANCE_TARGETS,
            default_denoising_steps=4, default_processing_resolution=768)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_tiny_models(root: Path, device: torch.device) -> PriorModels:
    """The tiny models, built by the project's builder under `root` and loaded by the real loader."""
    from dreampolish.backend.models.specs import MODEL_DIR_ENV, model_set
    from dreampolish.backend.models.tiny import build_tiny_models

    os.environ[MODEL_DIR_ENV] = str(root)  # the tiny set's local paths resolve against the model cache
    build_tiny_models(root / "tiny")
    return PriorModels(model_set("tiny"), device)


class TimedNormalTargets:
    """The polish stage's normal targets, timed: seconds spent in the estimator and views it estimated,
    so that the projection can count the estimator per distinct view instead of per step."""

    def __init__(self, inner: Any, clock: StageClock):
        self.inner = inner
        self.clock = clock

    def __call__(self, rgb: Tensor, opacity: Tensor, cameras: CameraBatch) -> Tensor:
        misses_before = self.inner.misses
        self.clock.sync()
        start = time.perf_counter()
        normals = self.inner(rgb, opacity, cameras)
        self.clock.sync()
        self.clock.estimator_calls.append((time.perf_counter() - start, self.inner.misses - misses_before))
        return normals


class BenchPriors(DiffusionPriors):
    """The pipeline's diffusion priors with the benchmark's models put in place of loading them."""

    def __init__(self, models: PriorModels, clock: StageClock):
        super().__init__(models.device)
        self._bench_models = models
        self.clock = clock

    def models(self, preset: PipelinePreset) -> PriorModels:
        return self._bench_models

    def normal_targets(self, preset: PipelinePreset, seed: int) -> NormalTargets:
        return TimedNormalTargets(super().normal_targets(preset, seed), self.clock)


# -- 2. the job context that times every stage ------------------------------------------------------------


@dataclass
class StageRecord:
    """What the context saw of one stage."""

    start: float
    """perf_counter when the stage began (the end of the one before)."""
    steps: list[tuple[int, float, float]] = field(default_factory=list)
    """(step, perf_counter, estimator seconds so far) at the end of each step."""
    end: float | None = None
    peak_bytes: int | None = None
    faces: int | None = None


class StageClock:
    """JobContext (pipeline_api) that timestamps the end of every step (`step_end`, called by the pipeline's
    StageProgress), records each stage's peak GPU memory, and cancels the job when the benchmark's deadline
    passes. It synchronises the GPU only at the steps in `sync_at` (the edges of the timed windows)."""

    def __init__(self, work_dir: Path, device: torch.device, deadline: float,
                 sync_at: dict[str, set[int]] | None = None):
        self.job_id = "bench"
        self.work_dir = work_dir
        self.device = str(device)
        self.cuda = device.type == "cuda"
        self.deadline = deadline
        self.stages: dict[str, StageRecord] = {}
        self.estimator_calls: list[tuple[float, int]] = []
        """(seconds, views estimated) of each call of the polish stage's normal estimator."""
        self.estimator_s_before: dict[str, float] = {}
        """Estimator seconds at each stage's start (the end of the one before)."""
        self._estimator_at_last_end = 0.0
        self._last_end = time.perf_counter()
        self.sync_at = sync_at or {}
        """Per stage, the 1-based steps after which the clock waits for the GPU before reading the time."""

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def begin(self) -> None:
        """Start the clock of the job's first stage."""
        self.sync()
        self._last_end = time.perf_counter()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def _record(self, stage: str) -> StageRecord:
        if stage not in self.stages:
            self.stages[stage] = StageRecord(start=self._last_end)
            self.estimator_s_before[stage] = self._estimator_at_last_end
        return self.stages[stage]

    def estimator_s(self) -> float:
        """Seconds spent in the normal estimator so far in this job."""
        return sum(s for s, _ in self.estimator_calls)

    def _finish(self, stage: str) -> None:
        self.sync()
        record = self._record(stage)
        record.end = self._last_end = time.perf_counter()
        self._estimator_at_last_end = self.estimator_s()
        if self.cuda:
            record.peak_bytes = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()

    def step_end(self, stage: str, step: int, total: int, reported: bool) -> None:
        if step in self.sync_at.get(stage, ()) or stage in FIXED_STAGES:
            self.sync()
        self._record(stage).steps.append((int(step), time.perf_counter(), self.estimator_s()))

    def progress(self, stage: str, step: int, total: int, losses: dict[str, float] | None = None,
                 preview_png: bytes | None = None) -> None:
        if stage in FIXED_STAGES and step >= total:
            self._finish(stage)  # stages without a mesh end with their last progress report

    def stage_result(self, stage: str, index: int, mesh: MeshPayload) -> None:
        self._finish(stage)
        self.stages[stage].faces = mesh.num_faces

    def check_cancel(self) -> None:
        if time.perf_counter() > self.deadline:
            raise JobCancelled("the time budget ran out (--budget-s)")


# -- 3. what each stage runs: phases of equal step cost ---------------------------------------------------


@dataclass
class Phase:
    """A run of a stage's steps with the same cost per step (one render size)."""

    name: str
    preset_steps: int
    """How many of the preset's steps fall in this phase."""
    run_steps: int
    """Steps the benchmark runs of it (warm-up + timed)."""
    resolution: int | None = None
    """Render side in pixels of the training views, where the stage has a schedule."""


def first_high_step(schedule: ResolutionSchedule, steps: int) -> int | None:
    """The first of a stage's `steps` steps that renders at the schedule's `high` size, or None."""
    if schedule.high is None:
        return None
    return next((s for s in range(steps) if stage_progress(s, steps) >= schedule.switch_at), None)


def stage_phases(preset: PipelinePreset, run: PipelinePreset, stage: str, settings: BenchSettings) -> list[Phase]:
    """The stage's phases: step counts from `preset` (what users run), render sizes from `run` (what the
    benchmark runs; smaller in smoke mode). NeRF renders at `low` px until its schedule's switch_at and
    at `high` after it; every other stage has one phase."""
    cfg, run_cfg = getattr(preset, stage), getattr(run, stage)
    steps = settings.warmup_steps + settings.measured_steps
    schedule, run_schedule = getattr(cfg, "resolution", None), getattr(run_cfg, "resolution", None)
    switch = first_high_step(schedule, cfg.steps) if schedule is not None else None
    if switch is not None and 0 < switch < cfg.steps:
        return [Phase("low", switch, steps, run_schedule.low),
                Phase("high", cfg.steps - switch, steps, run_schedule.high)]
    size = run_schedule.at(0.0) if run_schedule is not None else getattr(run_cfg, "render_size", None)
    return [Phase("all", cfg.steps, steps, size)]


def run_options(phases: dict[str, list[Phase]]) -> dict[str, Any]:
    """Preset options that make each stage run its phases' steps (and no preview images, whose cost
    would land on the few steps measured)."""
    options: dict[str, Any] = {"preview_every": 0}
    for stage, stage_phases_ in phases.items():
        options[f"{stage}.steps"] = sum(p.run_steps for p in stage_phases_)
        if len(stage_phases_) == 2:
            # step k of N is at progress k / (N − 1) (schedules.stage_progress): the switch lands on step k
            total = options[f"{stage}.steps"]
            options[f"{stage}.resolution.switch_at"] = stage_phases_[0].run_steps / max(total - 1, 1)
    return options


def run_preset(name: str, settings: BenchSettings) -> tuple[PipelinePreset, PipelinePreset, dict[str, list[Phase]]]:
    """(the preset as users get it, the preset the benchmark runs, the phases of each measured stage).
    Smoke mode shrinks the preset as the tiny preset is made (presets.shrink_to_tiny) first (models, grids, sizes)."""
    preset = get_preset(name)
    shrunk = shrink_to_tiny(preset) if settings.smoke else preset
    phases = {stage: stage_phases(preset, shrunk, stage, settings) for stage in MEASURED_STAGES}
    # The run keeps the (possibly shrunk) preset's sizes; only its step counts and switch steps change.
    run = apply_options(shrunk, run_options(phases))
    return preset, run, phases


def window_edges(phases: dict[str, list[Phase]], settings: BenchSettings) -> dict[str, set[int]]:
    """Per stage, the steps where the clock synchronises: the first (the stage's setup ends there), and the
    start and end of each phase's timed window."""
    edges: dict[str, set[int]] = {}
    for stage, stage_phases_ in phases.items():
        first, steps = 0, {1}
        for phase in stage_phases_:
            steps |= {first + settings.warmup_steps, first + phase.run_steps}
            first += phase.run_steps
        edges[stage] = steps
    return edges


# -- 4. turning timestamps into figures -------------------------------------------------------------------


def polish_estimator_views(preset: PipelinePreset) -> float:
    """Expected distinct views the polish stage shows the normal estimator: with a pool of P views drawn
    N = steps · batch times with replacement, P · (1 − (1 − 1/P)^N); without a pool every view is new."""
    cfg = preset.polish
    draws = cfg.steps * cfg.batch_size
    if cfg.loss != "normal_estimator":
        return 0.0
    if cfg.view_pool <= 0:
        return float(draws)
    return cfg.view_pool * (1.0 - (1.0 - 1.0 / cfg.view_pool) ** draws)


def stage_figures(stage: str, record: StageRecord, phases: list[Phase], preset: PipelinePreset,
                  clock: StageClock, settings: BenchSettings) -> dict[str, Any]:
    """Per-step speed, fixed time, peak memory and projected time of one measured stage."""
    times = {step: (t, est) for step, t, est in record.steps}
    out: dict[str, Any] = {"status": "measured", "steps_run": len(record.steps), "faces": record.faces,
                           "peak_gb": None if record.peak_bytes is None else round(record.peak_bytes / 1e9, 3)}
    phase_rows = []
    first = 0
    loop_s = 0.0
    for phase in phases:
        # The window (a, b] of timed steps, with the GPU synchronised at a and b only: its steps take
        # t_b − t_a, less the estimator's time in them (counted per view below).
        a, b = first + settings.warmup_steps, first + phase.run_steps
        ms = None
        if a in times and b in times and b > a:
            ms = 1000 * ((times[b][0] - times[a][0]) - (times[b][1] - times[a][1])) / (b - a)
        phase_rows.append({"phase": phase.name, "resolution": phase.resolution, "preset_steps": phase.preset_steps,
                           "ms_per_step": None if ms is None else round(ms, 2)})
        first += phase.run_steps
    if record.steps:
        loop_s = record.steps[-1][1] - record.steps[0][1]
    known = [r["ms_per_step"] for r in phase_rows if r["ms_per_step"] is not None]
    if len(known) < len(phase_rows) or record.end is None or not record.steps:
        out.update(status="incomplete", phases=phase_rows)
        return out
    wall = record.end - record.start
    # Outside the step loop: from the stage's start to its first report, less one steady step and the
    # estimator's time in that step (estimates are counted per view below), and from its last report to
    # its end (mesh extraction, bake). loop_s already holds the later steps with their estimates.
    estimator_first_s = record.steps[0][2] - clock.estimator_s_before[stage]
    fixed_s = max(wall - loop_s - phase_rows[0]["ms_per_step"] / 1000 - estimator_first_s, 0.0)
    loop_projected = sum(r["preset_steps"] * r["ms_per_step"] / 1000 for r in phase_rows)
    total_steps = sum(r["preset_steps"] for r in phase_rows)
    mean_ms = 1000 * loop_projected / max(total_steps, 1)
    projected = fixed_s + loop_projected
    if stage == "polish":
        calls = [c for c in clock.estimator_calls if c[1] > 0]
        timed_calls = calls[1:] if len(calls) > 1 else calls  # the first call warms the estimator up
        views = sum(v for _, v in timed_calls)
        per_view = sum(s for s, _ in timed_calls) / views if views else 0.0
        expected_views = polish_estimator_views(preset)
        projected += per_view * expected_views
        out.update(estimator_s_per_view=round(per_view, 4), estimator_views=round(expected_views, 1))
    out.update(wall_s=round(wall, 3), fixed_s=round(fixed_s, 3), preset_steps=total_steps,
               ms_per_step=round(mean_ms, 2), steps_per_s=round(1000 / mean_ms, 3) if mean_ms > 0 else None,
               projected_s=round(projected, 2), phases=phase_rows)
    return out


def preset_figures(name: str, preset: PipelinePreset, phases: dict[str, list[Phase]], clock: StageClock,
                   settings: BenchSettings, note: str | None) -> dict[str, Any]:
    """Every stage's figures, the projected job time and the comparison with the targets."""
    stages: dict[str, Any] = {}
    for stage in ("reference", *MEASURED_STAGES, "export"):
        record = clock.stages.get(stage)
        if record is None or record.end is None:
            stages[stage] = {"status": "skipped", "note": note or "not reached"}
        elif stage in FIXED_STAGES:
            stages[stage] = {"status": "measured", "wall_s": round(record.end - record.start, 3),
                             "projected_s": round(record.end - record.start, 2),
                             "peak_gb": None if record.peak_bytes is None else round(record.peak_bytes / 1e9, 3)}
        else:
            stages[stage] = stage_figures(stage, record, phases[stage], preset, clock, settings)
    complete = all(s["status"] == "measured" for s in stages.values())
    projected = sum(s.get("projected_s") or 0.0 for s in stages.values())
    peaks = [s["peak_gb"] for s in stages.values() if s.get("peak_gb") is not None]
    target = JOB_TARGET_S.get(name)
    peak = max(peaks) if peaks else None
    return {
        "stages": stages,
        "complete": complete,
        "projected_job_s": round(projected, 1) if stages else None,
        "target_job_s": target,
        "meets_time_target": (projected <= target) if complete and target is not None else None,
        "peak_gb": peak,
        "meets_memory_target": (peak <= PEAK_TARGET_GB) if complete and peak is not None else None,
        "note": note,
    }


# -- 5. one preset, end to end ----------------------------------------------------------------------------


def measure_preset(name: str, models: PriorModels, device: torch.device, deadline: float,
                   settings: BenchSettings) -> dict[str, Any]:
    """Run a generate job of the preset through the pipeline and return its figures."""
    preset, run, phases = run_preset(name, settings)
    spec = JobSpec(prompt=settings.prompt, preset=f"bench-{name}", seed=0)
    note = None
    with tempfile.TemporaryDirectory(prefix="dreampolish-gpu-stages-") as tmp:
        clock = StageClock(Path(tmp), device, deadline, window_edges(phases, settings))
        pipeline = DreamPolishPipeline(presets={f"bench-{name}": lambda: run}, priors=BenchPriors(models, clock))
        pipeline.check(spec)
        clock.begin()
        try:
            pipeline.run(spec, clock)
        except JobCancelled as exc:
            note = str(exc)
        except JobFailed as exc:
            note = f"the job failed: {exc.code}: {exc.message}"
    return preset_figures(name, preset, phases, clock, settings, note)


_STOP = {"requested": False}


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    """An outer time limit (`timeout` in bench/gpu_run.sh) sends SIGTERM: stop the job in flight as a
    cancel, so that the figures gathered so far still end in the JSON line. Raises once only, so that a
    second signal cannot interrupt the summary."""
    if not _STOP["requested"]:
        _STOP["requested"] = True
        raise JobCancelled("stopped by SIGTERM (an outer time limit)")


# -- 6. the command -----------------------------------------------------------------------------------


def print_table(name: str, figures: dict[str, Any]) -> None:
    print(f"preset {name}:")
    for stage, s in figures["stages"].items():
        if s["status"] != "measured":
            print(f"  {stage:10s} {s['status']}: {s.get('note') or ''}")
            continue
        peak = "" if s.get("peak_gb") is None else f"  peak {s['peak_gb']:.2f} GB"
        if "ms_per_step" in s:
            print(f"  {stage:10s} {s['ms_per_step']:9.1f} ms/step {s['steps_per_s'] or 0:8.2f} steps/s  "
                  f"fixed {s['fixed_s']:6.1f} s  -> {s['preset_steps']:5d} steps: {s['projected_s']:7.1f} s{peak}")
        else:
            print(f"  {stage:10s} {s['wall_s']:7.1f} s{peak}")
    target = figures["target_job_s"]
    verdict = {True: "meets", False: "misses", None: "not comparable (incomplete)"}[figures["meets_time_target"]]
    print(f"  projected job {figures['projected_job_s']} s, target {target} s: {verdict}; "
          f"peak {figures['peak_gb']} GB (target {PEAK_TARGET_GB} GB)")


def parse_args(argv: list[str] | None) -> BenchSettings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="draft,standard", help="comma-separated presets to measure")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per phase (default 2; smoke 1)")
    parser.add_argument("--measure", type=int, default=None, help="timed steps per phase (default 4; smoke 1)")
    parser.add_argument("--budget-s", type=float, default=150.0, help="bound of the whole run in seconds")
    parser.add_argument("--smoke", action="store_true", help="CPU smoke mode even when CUDA is available")
    args = parser.parse_args(argv)
    smoke = args.smoke or not torch.cuda.is_available()
    warmup = args.warmup if args.warmup is not None else (1 if smoke else 2)
    measure = args.measure if args.measure is not None else (1 if smoke else 4)
    if warmup < 1 or measure < 1:
        parser.error("--warmup and --measure must be at least 1 (the first step carries the stage's setup)")
    return BenchSettings(presets=tuple(p for p in args.presets.split(",") if p), warmup_steps=warmup,
                         measured_steps=measure, budget_s=args.budget_s, smoke=smoke)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    deadline = start + settings.budget_s - BUDGET_RESERVE_S
    device = torch.device("cpu" if settings.smoke else "cuda")
    device_name = "cpu" if device.type == "cpu" else torch.cuda.get_device_name()
    result: dict[str, Any] = {"bench": "gpu_stages", "device": device_name, "smoke": settings.smoke,
                              "budget_s": settings.budget_s, "warmup_steps": settings.warmup_steps,
                              "measured_steps": settings.measured_steps,
                              "targets": {"standard_s": JOB_TARGET_S["standard"], "draft_s": JOB_TARGET_S["draft"],
                                          "peak_gb": PEAK_TARGET_GB},
                              "presets": {}}
    with tempfile.TemporaryDirectory(prefix="dreampolish-bench-models-") as tmp:
        # 1. The priors: full size with random weights on CUDA, the tiny models in smoke mode.
        if settings.smoke:
            print("gpu_stages: CPU smoke mode (tiny models and sizes; the figures say nothing about GPU speed)")
            models = load_tiny_models(Path(tmp), device)
        else:
            models = build_full_size_models(device, Path(tmp) / "tokenizer")
            torch.cuda.synchronize()
        result["build_s"] = round(time.perf_counter() - start, 2)
        result["dtype"] = str(models.dtype or torch.float32)
        if device.type == "cuda":
            result["weights_gb"] = round(torch.cuda.memory_allocated() / 1e9, 3)
        print(f"device {device_name}; priors ready in {result['build_s']} s")
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        # 2. Each preset through the pipeline, until the budget runs out.
        for name in settings.presets:
            if time.perf_counter() > deadline or _STOP["requested"]:
                preset, _, _ = run_preset(name, settings)
                why = "stopped by SIGTERM" if _STOP["requested"] else "the time budget ran out (--budget-s)"
                result["presets"][name] = preset_figures(name, preset, {}, StageClock(Path(tmp), device, deadline),
                                                         settings, f"{why} before this preset")
            else:
                result["presets"][name] = measure_preset(name, models, device, deadline, settings)
            print_table(name, result["presets"][name])
    result["elapsed_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
