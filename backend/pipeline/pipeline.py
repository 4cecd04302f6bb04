"""The DreamPolish pipeline: one request (JobSpec) through reference → NeRF → NeuS → DMTet → polish →
texture → export, or the refine chains (geometry: DMTet → polish → texture → export; texture only:
texture → export on the input's own topology and UVs).

`DreamPolishPipeline.run` is a script with numbered steps, as a diffusers pipeline is:
    1. check the request           (before any GPU work; also done at submit by `check`)
    2. resolve the preset          (named preset + the request's "stage.field" options)
    3. place the job in its frame  (object frame, reference camera, preview rig: frame.py)
    4. restore finished stages     (own checkpoints, or the client's edited mesh)
    5. load the priors             (diffusion models of the preset's model set, or an oracle: priors.py)
    6. run the remaining stages    (one StageRunner each, runners.py: progress, previews, a checkpoint
                                    and a mesh per stage, stage gates)

Stage boundaries are durable in this order: the stage's checkpoint is saved, then its mesh is handed to
`ctx.stage_result`. Restoring a finished stage hands its mesh to `ctx.stage_result` again; the job
store records a result once per (stage, index), so a backend killed between the two sends the result
once after the restart, and one killed after both sends nothing twice.

Determinism: every stage draws from a generator seeded by (request seed, stage name), and the
priors are seeded from the same pair, so a request reproduces on the same device, and a stage rerun
after a restart repeats exactly what it would have done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.job import JOB_MODES, JobSpec, validate_spec
from dreampolish.protocol.messages import SLOW_RASTERIZER

from .. import memory_check
from ..checkpoints import CheckpointStore
from ..config_values import apply_options
from ..geometry.mesh import TriMesh
from ..models.specs import load_model_sets
from ..pipeline_api import JobContext, ResumePoint, RunOutcome
from ..presets import PipelinePreset, get_preset, preset_names
from ..render.rasterize import MeshRasterizer
from ..stages.finish import check_finish
from .context import JobSetup, StageCarry, StageContext
from .frame import job_frame
from .previews import StageProgress
from .priors import DiffusionPriors, PriorSource
from .runners import STAGE_RUNNERS, StageRunner
from .views import one_view_as_image, views_hull

logger = logging.getLogger(__name__)


def stage_seed(seed: int, stage: str) -> int:
    """A 63-bit seed for one stage of a request: stable across processes (no Python hash())."""
    digest = hashlib.sha256(f"{int(seed)}:{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class DreamPolishPipeline:
    """pipeline_api.Pipeline for the DreamPolish method (module docstring).

    presets: extra or replacement presets by name (builders of PipelinePreset); priors: a fixed
    PriorSource (e.g. OraclePriors) instead of the diffusion models; rasterizer: override the preset's;
    stages: the stage runners in order (STAGE_RUNNERS; docs/adding-a-stage.md)."""

    def __init__(self, presets: dict[str, Callable[[], PipelinePreset]] | None = None,
                 priors: PriorSource | None = None, rasterizer: MeshRasterizer | None = None,
                 stages: Sequence[StageRunner] = STAGE_RUNNERS):
        self._extra_presets = dict(presets or {})
        self._priors = priors
        self._diffusion: dict[str, DiffusionPriors] = {}
        self._rasterizer = rasterizer
        self.runners = tuple(stages)
        names = [r.name for r in self.runners]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")

    # -- Pipeline API -------------------------------------------------------------------------------

    def presets(self) -> list[str]:
        return list(dict.fromkeys([*preset_names(), *self._extra_presets]))

    def resolve_preset(self, spec: JobSpec) -> PipelinePreset:
        """The request's preset with its options applied (ValidationError when either is bad)."""
        if spec.preset in self._extra_presets:
            return apply_options(self._extra_presets[spec.preset](), dict(spec.options))
        return get_preset(spec.preset, dict(spec.options))

    def mode_stages(self, mode: str) -> list[str]:
        """The stages a job of `mode` runs, in order, when its request names no subset."""
        return [r.name for r in self.runners if mode in r.modes]

    def spec_stages(self, spec: JobSpec) -> list[str]:
        """The chain of this request's mode: a masked refine keeps the input's topology, so it leaves out the
        stages that re-mesh (DMTet; backend/refine_mask.py)."""
        chain = self.mode_stages(spec.mode)
        if spec.mask is None:
            return chain
        remeshing = {r.name for r in self.runners if r.remeshes}
        return [s for s in chain if s not in remeshing]

    def stage_chains(self) -> dict[str, list[str]]:
        """welcome.stage_chains: for each job mode, the stages a request may name, in order (the runners'
        chains without their automatic stages)."""
        automatic = {r.name for r in self.runners if r.automatic}
        return {mode: [s for s in self.mode_stages(mode) if s not in automatic] for mode in JOB_MODES}

    def request_stages(self, spec: JobSpec) -> list[str]:
        """The request's chain (spec_stages) without the stages its preset turns off (StageRunner.skipped: the
        finishing stage while finish.faces is 0)."""
        preset = self.resolve_preset(spec)
        skipped = {r.name for r in self.runners if r.skipped(preset)}
        return [s for s in self.spec_stages(spec) if s not in skipped]

    def preset_memory_gb(self, device: str) -> dict[str, float]:
        """welcome.preset_memory_gb for a worker on `device`: each preset's dry-run peak in GB as it would run
        there (offloaded where its `offload` setting picks that for the card, memory_check.plan_memory);
        {} off a CUDA card, where the figures do not apply."""
        if not device.startswith("cuda"):
            return {}
        out: dict[str, float] = {}
        for name in self.presets():
            offload = self.resolve_preset(JobSpec("", preset=name)).offload
            needed = memory_check.plan_memory(name, offload, torch.device(device),
                                              lambda d: memory_check.device_memory(str(d))).needed_gb
            if needed is not None:
                out[name] = round(needed, 1)
        return out

    def stage_plan(self, spec: JobSpec) -> list[str]:
        """The stages this request runs, in order: the named ones, then the automatic stages that follow
        the last of them (export after texture). A stage the preset turns off is left out (a request that
        names it runs the rest)."""
        mode_stages = self.request_stages(spec)
        if spec.stages is None:
            return mode_stages
        wanted = set(spec.stages)
        plan = [s for s in mode_stages if s in wanted]
        automatic = {r.name for r in self.runners if r.automatic}
        for name in mode_stages[mode_stages.index(plan[-1]) + 1:] if plan else []:
            if name not in automatic or name in plan:
                break
            plan.append(name)
        return plan

    def check(self, spec: JobSpec) -> None:
        """Reject a bad request before it is queued (no GPU work); messages name the field. The
        protocol's validate_spec first, then what depends on this pipeline's presets and stages."""
        validate_spec(spec)
        if spec.preset not in self.presets():
            raise ValidationError(f"unknown preset {spec.preset!r}; choose one of {', '.join(self.presets())}")
        preset = self.resolve_preset(spec)
        self._check_preset(preset)
        if preset.refines_only and spec.mode == "generate":
            raise ValidationError(f"preset {spec.preset!r} refines a mesh you send (Refine Selected, or "
                                  "`dreampolish generate --mesh`); to make an object from a prompt or a picture "
                                  "choose draft or standard")
        mode_stages = self.spec_stages(spec)
        kind = f"masked {spec.mode!r}" if spec.mask is not None else repr(spec.mode)
        for label, names in (("stages", spec.stages or []), ("pause_after", spec.pause_after)):
            for stage in names:
                if stage not in mode_stages:
                    raise ValidationError(f"stage {stage!r} in {label} is not part of a {kind} job "
                                          f"({', '.join(mode_stages)})")
        check_finish(preset.finish, spec, self.stage_plan(spec), preset.dmtet)
        if spec.stages is not None and not self.stage_plan(spec):
            raise ValidationError("stages selects nothing to run")
        if spec.stages is not None:
            self._check_stage_chain(spec)
        if len(spec.views) >= 2:  # pictures that cannot show one object are refused now, naming the picture
            views_hull(spec, preset.reference.generation)

    def _check_preset(self, preset: PipelinePreset) -> None:
        """Preset values that would only fail once the job runs and that the fields' own ranges do not
        cover (those, e.g. preview_size, apply_options checked)."""
        model_sets = load_model_sets()
        if self._priors is None and preset.model_set not in model_sets:
            raise ValidationError(f"model_set {preset.model_set!r} is not one of {', '.join(model_sets)}")

    def _check_stage_chain(self, spec: JobSpec) -> None:
        """A subset must be a contiguous run of the mode's chain: each stage starts from the last."""
        chain = self.request_stages(spec)
        plan = self.stage_plan(spec)
        idx = [chain.index(s) for s in plan]
        if idx != list(range(idx[0], idx[0] + len(idx))):
            raise ValidationError(f"stages {plan} skip a stage of the chain {list(chain)}; each stage starts from "
                                  "the one before it")
        if spec.mode == "generate" and plan[0] != chain[0]:
            raise ValidationError(f"a generate job starts with the {chain[0]} stage")

    # -- run -----------------------------------------------------------------------------------------

    def _priors_for(self, device: torch.device) -> PriorSource:
        if self._priors is not None:
            return self._priors
        key = str(device)
        if key not in self._diffusion:
            self._diffusion[key] = DiffusionPriors(device)
        return self._diffusion[key]

    def run(self, spec: JobSpec, ctx: JobContext, resume: ResumePoint | None = None) -> RunOutcome:
        # 1. Check the request (the job system checked it at submit; a restart may bring an old one). A
        #    request with one view is the single-picture request.
        self.check(spec)
        spec = one_view_as_image(spec)
        device = torch.device(ctx.device)

        # 2. Resolve the preset with the request's options.
        preset = self.resolve_preset(spec)
        rasterizer = self._rasterizer or MeshRasterizer(preset.rasterizer)
        plan = [r for r in self.runners if r.name in self.stage_plan(spec)]

        # 3. Place the job: object frame, reference camera, preview rig.
        job = JobSetup(spec, preset, job_frame(spec, preset, device), device, rasterizer, Path(ctx.work_dir))

        # 4. Restore finished stages (own checkpoints; their results go to the job again), then apply the
        #    client's edited mesh.
        store = CheckpointStore(ctx.work_dir)
        if resume is None:
            store.clear()
        carry = StageCarry()
        finished = self._restore(plan, store, job, carry, ctx)
        self._apply_edit(resume, job, carry, ctx)
        remaining = [r for r in plan if r.name not in finished]
        if not remaining:
            return RunOutcome(result_files=self._result_files(ctx.work_dir, preset))

        # 5. Load the priors (lazily: each stage asks for what it needs).
        priors = self._priors_for(device)

        # 6. Choose whether idle priors wait in host memory (preset.offload, memory_check.plan_memory); say
        #    so, and when the preset will not fit the card or meshes are rasterised without nvdiffrast
        #    (render/rasterize.py); then run the remaining stages: checkpoint first, then the result
        #    (module docstring).
        memory = memory_check.plan_memory(spec.preset, preset.offload, device)
        if not memory.fits:
            logger.warning("job %s: %s: it will probably run out of memory", ctx.job_id, memory.message())
        if memory.chosen:
            logger.info("job %s: offloading idle priors to host memory: %s", ctx.job_id, memory.message())
        notes = memory.losses()
        if rasterizer.fallback(device) is not None:
            notes[SLOW_RASTERIZER] = 1.0
        if notes:
            ctx.progress(remaining[0].name, 0, 0, notes)
        enter_stage = getattr(priors, "enter_stage", None)  # the diffusion priors place their models
        for runner in remaining:
            ctx.check_cancel()
            if enter_stage is not None:
                enter_stage(runner.name, spec, preset, memory.offload)
            stage_ctx = self._stage_context(runner.name, job, carry, priors, ctx)
            logger.info("job %s: stage %s", ctx.job_id, runner.name)
            store.save(runner.name, runner.run(stage_ctx))
            self._send_result(runner, plan, job, carry, ctx)
            if runner.name in spec.pause_after and runner is not plan[-1]:
                store.mark_paused(runner.name)
                return RunOutcome(paused_after=runner.name)
        return RunOutcome(result_files=dict(carry.files))

    @staticmethod
    def _stage_context(stage: str, job: JobSetup, carry: StageCarry, priors: PriorSource,
                       ctx: JobContext) -> StageContext:
        seed = stage_seed(job.spec.seed, stage)
        # The stage draws from this generator, and builds its modules inside seeded blocks of it
        # (stages/step.py seeded_init, backend/rng.py): never from the global RNG as it happens to be.
        reporter = StageProgress(ctx, stage, job.preset.preview_every, job.frame.preview_cameras, job.device,
                                 report_every=job.preset.report_every)
        return StageContext(job, carry, priors, reporter, torch.Generator().manual_seed(seed), seed)

    @staticmethod
    def _send_result(runner: StageRunner, plan: list[StageRunner], job: JobSetup, carry: StageCarry,
                     ctx: JobContext) -> None:
        payload = runner.result(job, carry)
        if payload is not None:
            ctx.stage_result(runner.name, plan.index(runner), payload)

    def _restore(self, plan: list[StageRunner], store: CheckpointStore, job: JobSetup, carry: StageCarry,
                 ctx: JobContext) -> list[str]:
        """Put every finished stage of the plan back into the carry, in order, and hand its result to the
        job again (the job store ignores one it already has). Returns the finished stages' names."""
        done = set(store.finished())
        finished = [r for r in plan if r.name in done]
        for runner in finished:
            runner.restore(store.load(runner.name, job.device), job, carry)
            self._send_result(runner, plan, job, carry, ctx)
        if finished:
            logger.info("job %s: stages already finished: %s", ctx.job_id, ", ".join(r.name for r in finished))
        return [r.name for r in finished]

    @staticmethod
    def _apply_edit(resume: ResumePoint | None, job: JobSetup, carry: StageCarry, ctx: JobContext) -> None:
        """The client's edited mesh replaces the last finished stage's mesh; the next stage starts from it."""
        edited = resume.edited_mesh if resume is not None else None
        if edited is None:
            return
        # The edit is vertices plus their object-to-world transform (protocol/README.md, mesh): placed in
        # the world by it, then taken into the job's frame, where the stages work.
        edited = edited.validate(require_faces=True)
        source = job.spec.input_mesh
        if job.spec.mask is not None and source is not None and (edited.vertices.shape, edited.faces.shape) != (
                source.vertices.shape, source.faces.shape):
            # the mask weighs the input's vertices, and the result is the input's own arrays outside it
            raise ValidationError(f"a masked refine keeps the input's topology: the edited mesh has "
                                  f"{edited.num_vertices} vertices and {edited.num_faces} faces where the input "
                                  f"had {source.num_vertices} and {source.num_faces}; move vertices, do not add or "
                                  "delete them")
        edited = edited.in_frame(job.frame.transform)
        carry.mesh = TriMesh.from_payload(edited, apply_transform=False, device=job.device)
        carry.geometry = None  # the next stage starts from the edited mesh, not from the old state
        # its own faces: polygons when it sent them (the finish stage's quads), else triangles
        carry.face_sizes = None if edited.face_sizes is None else edited.face_sizes.astype(np.int64)
        if carry.payload is not None:
            carry.payload = dataclasses.replace(edited, textures=list(carry.payload.textures))
        logger.info("job %s resumes from an edited mesh (%d faces)", ctx.job_id, carry.mesh.num_faces)

    @staticmethod
    def _result_files(work_dir: Path, preset: PipelinePreset) -> dict[str, Path]:
        glb = Path(work_dir) / preset.export.glb_name
        return {"glb": glb} if glb.exists() else {}
