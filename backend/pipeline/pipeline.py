"""The DreamPolish pipeline: one request (JobSpec) through reference → NeRF → NeuS → DMTet → polish →
texture → export, or the refine chains (geometry: DMTet → polish → texture → export; texture only:
texture → export on the input's own topology and UVs).

`DreamPolishPipeline.run` is a script with numbered steps, as a diffusers pipeline is:
    1. check the request           (before any GPU work; also done at submit by `check`)
    2. resolve the preset          (named preset + the request's "stage.field" options)
    3. place the job in its frame  (object frame, reference camera, preview rig)
    4. restore finished stages     (own checkpoints, or the client's edited mesh)
    5. load the priors             (diffusion models of the preset's model set, or an oracle)
    6. run the remaining stages    (progress, previews, a mesh per stage, checkpoints, stage gates)

Frames. Every stage works in the job's object frame: the object centred on the origin inside the
radius-0.5 ball, Z up. `JobFrame.transform` maps it to Blender's world and travels with every mesh
sent back. From a prompt, the object sits at the world origin, scaled so that it fills the reference
camera's frame; when refining, the input mesh (world) is normalised into the object frame. Cameras
of the request are Blender world cameras and are moved into the object frame here (rotation kept,
position (t − c) / s), so they see exactly what they see in the scene.

Determinism: every stage draws from a generator seeded by (request seed, stage name), and the
priors are seeded from the same pair, so a request reproduces on the same device, and a stage rerun
after a restart repeats exactly what it would have done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.job import JOB_MODES, STAGES, JobSpec
from dreampolish.protocol.limits import LIMITS
from dreampolish.protocol.scene import CameraSpec, MeshPayload
from torch import Tensor

from . import bake
from .checkpoints import CheckpointStore
from .geometry.mesh import TriMesh, normalize_to_unit, simplify_mesh
from .guidance.base import Guidance, GuidanceInput, GuidanceOutput, NormalTargets
from .pipeline_api import JobContext, JobFailed, ResumePoint, RunOutcome
from .presets import PipelinePreset, apply_options, get_preset, preset_names
from .render.cameras import CameraBatch, camera_from_blender, fill_distance, orbit_cameras
from .render.rasterize import MeshRasterizer
from .stages.base import ReferenceView
from .stages.dmtet import DmtetState, run_dmtet
from .stages.export import mesh_payload, run_export, texture_payloads
from .stages.nerf import NerfState, run_nerf
from .stages.neus import NeusState, run_neus
from .stages.polish import run_polish
from .stages.texture import BakedTexture, TextureState, bake_texture, run_texture

logger = logging.getLogger(__name__)

MODE_STAGES: dict[str, tuple[str, ...]] = {
    "generate": ("reference", "nerf", "neus", "dmtet", "polish", "texture", "export"),
    "geometry": ("dmtet", "polish", "texture", "export"),
    "texture": ("texture", "export"),
}
"""The stages each job mode runs, in order (a request's `stages` picks a subset)."""

MESH_STAGES = ("nerf", "neus", "dmtet", "polish", "texture", "export")
"""Stages that end with a mesh (reference ends with an image, sent as a preview)."""


def stage_seed(seed: int, stage: str) -> int:
    """A 63-bit seed for one stage of a request: stable across processes (no Python hash())."""
    digest = hashlib.sha256(f"{int(seed)}:{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# -- the job's frame ---------------------------------------------------------------------------------


@dataclass
class JobFrame:
    """Where the job's object lives and the cameras it is seen from, all in the object frame."""

    transform: np.ndarray
    """float32 [4,4] object frame -> Blender world."""
    reference_camera: CameraBatch
    """B=1 reference view at the preset's reference size."""
    preview_cameras: list[CameraBatch]
    """The request's camera rig (or the reference view), each B=1 at the preview size."""
    input_mesh: TriMesh | None = None
    """The mesh to refine, in the object frame (refine modes)."""


def _scaled_resolution(resolution: tuple[int, int], longest: int) -> tuple[int, int]:
    w, h = (int(v) for v in resolution)
    k = longest / max(w, h)
    return max(1, round(w * k)), max(1, round(h * k))


def camera_in_object_frame(spec: CameraSpec, transform: np.ndarray, longest: int,
                           device: torch.device | str = "cpu") -> CameraBatch:
    """A Blender world camera as a renderer camera in the object frame, with its image rescaled so
    that the longer side is `longest` (the projection is NDC-based: the view is unchanged).

    transform = [s·I, c; 0, 1] (uniform scale s, translation c) maps object to world, so the camera's
    position moves to (t − c) / s and its rotation is kept."""
    m = np.asarray(spec.matrix_world, np.float64).copy()
    scale = float(np.cbrt(abs(np.linalg.det(transform[:3, :3].astype(np.float64)))))
    m[:3, 3] = (m[:3, 3] - transform[:3, 3]) / scale
    moved = dataclasses.replace(spec, matrix_world=m.astype(np.float32),
                                resolution=_scaled_resolution(spec.resolution, longest))
    return camera_from_blender(moved, device)


def front_camera(fovy_deg: float, margin: float, width: int, height: int) -> CameraBatch:
    """Blender's front view (from −Y, looking along +Y) at the distance where the object fills it."""
    fov = torch.tensor([fovy_deg])
    return orbit_cameras(torch.tensor([0.0]), torch.tensor([-90.0]), fill_distance(fov, 0.5, margin), fov,
                         width, height)


def _smaller_fov_deg(camera: CameraBatch) -> float:
    """The narrower of the camera's vertical and horizontal fields of view (what the object must fit)."""
    fy = float(camera.proj[0, 1, 1])
    fx = float(camera.proj[0, 0, 0])
    return math.degrees(2 * math.atan(1.0 / max(fx, fy)))


def job_frame(spec: JobSpec, preset: PipelinePreset, device: torch.device | str = "cpu") -> JobFrame:
    """Place the job: its object frame, the reference camera and the preview rig (module docstring)."""
    ref_cfg = preset.reference
    size = ref_cfg.size
    input_mesh = None
    if spec.mode == "generate":
        transform = np.eye(4, dtype=np.float32)
        if spec.cameras:
            world_ref = camera_from_blender(spec.cameras[spec.reference_camera])
            distance = float(world_ref.c2w[0, :3, 3].norm())
            half = math.radians(_smaller_fov_deg(world_ref)) / 2
            # Radius that fills the frame at this distance: r = d sin(atan(tan(fov/2) / margin)); the
            # object frame has radius 0.5.
            radius = distance * math.sin(math.atan(math.tan(half) / ref_cfg.fill_margin))
            transform[:3, :3] *= 2.0 * radius
    else:
        world = TriMesh.from_payload(spec.input_mesh, apply_transform=True)
        input_mesh, t = normalize_to_unit(world)
        transform = t.cpu().numpy().astype(np.float32)
    if spec.cameras:
        reference = camera_in_object_frame(spec.cameras[spec.reference_camera], transform, size)
        rig = [camera_in_object_frame(c, transform, preset.preview_size) for c in spec.cameras]
    else:
        reference = front_camera(ref_cfg.default_fovy_deg, ref_cfg.fill_margin, size, size)
        rig = [front_camera(ref_cfg.default_fovy_deg, ref_cfg.fill_margin, preset.preview_size, preset.preview_size)]
    return JobFrame(transform, reference.to(device), [c.to(device) for c in rig],
                    None if input_mesh is None else input_mesh.to(device))


# -- guidance sources ----------------------------------------------------------------------------------


class CombinedGuidance:
    """Weighted sum of several guidances: L = Σ_k w_k L_k; diagnostics prefixed by each one's name."""

    def __init__(self, parts: list[tuple[str, float, Guidance]]):
        self.parts = [(name, w, g) for name, w, g in parts if w != 0]

    def release(self) -> None:
        """Drop the LoRA adapters that variational objectives (VSD/BSD/DSD) added to the shared UNet, so
        that a long-lived backend does not collect one per job."""
        from .guidance.score_distillation import ScoreDistillation  # imported where the priors are built

        for _, _, guidance in self.parts:
            if isinstance(guidance, ScoreDistillation):
                guidance.release()

    def __call__(self, inp: GuidanceInput) -> GuidanceOutput:
        total: Tensor | None = None
        diagnostics: dict[str, float] = {}
        for name, weight, guidance in self.parts:
            out = guidance(inp)
            total = weight * out.loss if total is None else total + weight * out.loss
            diagnostics[f"{name}_loss"] = float(out.loss.detach())
            diagnostics.update({f"{name}_{k}": float(v) for k, v in out.diagnostics.items()})
        if total is None:
            total = inp.rgb.sum() * 0.0
        return GuidanceOutput(total, diagnostics)


class PriorSource(Protocol):
    """Where a job's guidance comes from: the diffusion priors, or an oracle target."""

    def reference(self, spec: JobSpec, preset: PipelinePreset, frame: JobFrame, seed: int) -> ReferenceView: ...

    def geometry_guidance(self, stage: str, spec: JobSpec, preset: PipelinePreset, frame: JobFrame,
                          reference: ReferenceView | None, seed: int) -> CombinedGuidance: ...

    def normal_targets(self, preset: PipelinePreset, seed: int) -> NormalTargets: ...

    def texture_guidance(self, spec: JobSpec, preset: PipelinePreset, frame: JobFrame, seed: int
                         ) -> CombinedGuidance: ...


def front_view_prompts(cfg: Any, frame: JobFrame) -> Any:
    """View prompts whose "front" is the reference camera's side of the object."""
    return dataclasses.replace(cfg, front_azimuth_deg=float(frame.reference_camera.azimuth_deg[0]))


def _seeded(cfg: Any, seed: int) -> Any:
    return dataclasses.replace(cfg, seed=seed % (2**31))


class DiffusionPriors:
    """The method's priors: the text-to-image model (reference image, text SDS, DSD on the texture),
    Zero123 (view-conditioned SDS) and Marigold (polish normals), loaded once per model set and device
    and kept for the life of the process."""

    def __init__(self, device: torch.device):
        self.device = device
        self._models: dict[str, Any] = {}

    def models(self, preset: PipelinePreset):
        from .models.loading import PriorModels
        from .models.specs import model_set

        if preset.model_set not in self._models:
            self._models[preset.model_set] = PriorModels(model_set(preset.model_set), self.device)
        return self._models[preset.model_set]

    def reference(self, spec: JobSpec, preset: PipelinePreset, frame: JobFrame, seed: int) -> ReferenceView:
        from .stages.reference import generate_reference

        cam = frame.reference_camera
        rgb, mask = generate_reference(self.models(preset), spec.prompt, spec.negative_prompt, cam.width, cam.height,
                                       seed % (2**31), self.device, preset.reference.generation)
        return ReferenceView(rgb=rgb, mask=mask, camera=cam)

    def geometry_guidance(self, stage: str, spec: JobSpec, preset: PipelinePreset, frame: JobFrame,
                          reference: ReferenceView | None, seed: int) -> CombinedGuidance:
        from .guidance.score_distillation import ScoreDistillation
        from .guidance.text_prior import encode_prompts
        from .guidance.zero123 import ReferenceView as OrbitView
        from .guidance.zero123 import Zero123Guidance

        g = preset.guidance
        models = self.models(preset)
        parts: list[tuple[str, float, Guidance]] = []
        view_prompts = front_view_prompts(g.view_prompts, frame)
        if reference is not None:
            cam = reference.camera
            if g.zero123_weight:
                orbit = OrbitView(float(cam.elevation_deg[0]), float(cam.azimuth_deg[0]), float(cam.distance[0]))
                parts.append(("zero123", g.zero123_weight, Zero123Guidance(
                    models.zero123, reference.rgb, reference.mask, orbit, _seeded(g.zero123, seed))))
        if g.text_weight:
            prompts = encode_prompts(models.text_to_image, spec.prompt, spec.negative_prompt, view_prompts)
            parts.append(("text", g.text_weight,
                          ScoreDistillation(models.text_to_image, prompts, _seeded(g.text, seed + 1))))
        return CombinedGuidance(parts)

    def normal_targets(self, preset: PipelinePreset, seed: int) -> NormalTargets:
        from .guidance.normals import MarigoldNormalTargets

        return MarigoldNormalTargets(self.models(preset).normals, _seeded(preset.polish.estimator, seed))

    def texture_guidance(self, spec: JobSpec, preset: PipelinePreset, frame: JobFrame, seed: int
                         ) -> CombinedGuidance:
        from .guidance.score_distillation import ScoreDistillation
        from .guidance.text_prior import encode_prompts

        models = self.models(preset)
        prompts = encode_prompts(models.text_to_image, spec.prompt, spec.negative_prompt,
                                 front_view_prompts(preset.guidance.view_prompts, frame))
        return CombinedGuidance([("texture", 1.0, ScoreDistillation(
            models.text_to_image, prompts, _seeded(preset.texture.guidance, seed)))])


class OraclePriors:
    """A known target mesh (object frame) in place of every prior: the reference image is its render,
    the geometry and texture guidance compare with its renders, the polish targets are its normals.
    For tests and fidelity benchmarks without pretrained weights."""

    def __init__(self, target: TriMesh, texture: Tensor | None = None, rasterizer: MeshRasterizer | None = None):
        self.target = target
        self.texture = texture
        self.rasterizer = rasterizer or MeshRasterizer("torch")

    def reference(self, spec: JobSpec, preset: PipelinePreset, frame: JobFrame, seed: int) -> ReferenceView:
        from .guidance.oracle import oracle_reference

        return oracle_reference(self.target.to(frame.reference_camera.device), frame.reference_camera,
                                self.rasterizer, self.texture)

    def geometry_guidance(self, stage: str, spec: JobSpec, preset: PipelinePreset, frame: JobFrame,
                          reference: ReferenceView | None, seed: int) -> CombinedGuidance:
        from .guidance.oracle import OracleGuidance

        return CombinedGuidance([("oracle", 1.0, OracleGuidance(self.target, self.rasterizer, texture=self.texture))])

    def normal_targets(self, preset: PipelinePreset, seed: int) -> NormalTargets:
        from .guidance.oracle import OracleNormals

        return OracleNormals(self.target, self.rasterizer)

    def texture_guidance(self, spec: JobSpec, preset: PipelinePreset, frame: JobFrame, seed: int
                         ) -> CombinedGuidance:
        from .guidance.oracle import OracleGuidance

        return CombinedGuidance([("oracle", 1.0, OracleGuidance(self.target, self.rasterizer, texture=self.texture))])


# -- previews and progress ---------------------------------------------------------------------------


@torch.no_grad()
def render_preview(mesh: TriMesh, camera: CameraBatch, rasterizer: MeshRasterizer,
                   color_fn: Callable[[Tensor], Tensor] | None = None) -> bytes:
    """A small PNG of the mesh from one camera: albedo (colour field, vertex colours or grey) under a
    headlight, over a neutral grey background."""
    if mesh.num_faces == 0:
        return bake.encode_png(np.full((camera.height, camera.width, 3), 0.25, np.float32))
    out = rasterizer.rasterize(mesh, camera)
    fg = out.foreground
    if color_fn is not None:
        albedo = torch.zeros_like(out.world_pos)
        albedo[fg.squeeze(-1)] = color_fn(out.world_pos[fg.squeeze(-1)])
    elif mesh.vertex_colors is not None:
        albedo = rasterizer.interpolate(mesh.vertex_colors, out, mesh.faces)
    else:
        albedo = torch.full_like(out.world_pos, 0.8)
    facing = torch.einsum("bij,bhwi->bhwj", camera.c2w[:, :3, :3].to(out.normal), out.normal)[..., 2:3]
    shaded = albedo * (0.35 + 0.65 * facing.clamp_min(0.0))
    mask = out.mask.clamp(0, 1)
    image = shaded * mask + 0.25 * (1 - mask)
    return bake.encode_png(image[0].float().cpu().numpy())


class StageProgress:
    """StageReporter for one stage: forwards progress to the job, attaches a preview PNG every
    `every` steps from `preview` (set by the stage runner), and checks cancel."""

    def __init__(self, ctx: JobContext, stage: str, every: int):
        self.ctx = ctx
        self.stage = stage
        self.every = every
        self.preview: Callable[[int], bytes | None] | None = None
        self.state: Any = None
        """The running geometry stage's state (see watch), for previews from the request's cameras."""

    def progress(self, step: int, total: int, losses: dict[str, float] | None = None) -> None:
        png = None
        if self.preview is not None and self.every > 0 and (step % self.every == 0 or step == total):
            png = self.preview(step)
        clean = {k: float(v) for k, v in (losses or {}).items() if math.isfinite(float(v))}
        self.ctx.progress(self.stage, int(step), int(total), clean, png)

    def check_cancel(self) -> None:
        self.ctx.check_cancel()

    def watch(self, state: Any) -> None:
        self.state = state


def rig_camera(cameras: list[CameraBatch], step: int, every: int) -> CameraBatch:
    """The rig's camera for the preview at `step`: previews go round the rig, one camera each."""
    return cameras[step // max(every, 1) % len(cameras)]


def _state_preview(reporter: StageProgress, cameras: list[CameraBatch], every: int,
                   device: torch.device | str) -> Callable[[int], bytes | None]:
    """Preview of a geometry stage: its current state rendered from the request's camera rig, one camera
    after another, albedo over a neutral grey background."""

    @torch.no_grad()
    def preview(step: int) -> bytes | None:
        if reporter.state is None:
            return None
        camera = rig_camera(cameras, step, every)
        out = reporter.state.render(camera.to(device))
        alpha = out["opacity"][0].clamp(0, 1)
        image = out["rgb"][0].clamp(0, 1) * alpha + 0.25 * (1 - alpha)
        return bake.encode_png(image.float().cpu().numpy())

    return preview


# -- carrying state between stages ---------------------------------------------------------------------


def _mesh_to_ckpt(mesh: TriMesh) -> dict[str, Any]:
    m = mesh.detach().to("cpu")
    return {"vertices": m.vertices, "faces": m.faces, "uvs": m.uvs, "vertex_colors": m.vertex_colors}


def _mesh_from_ckpt(d: dict[str, Any], device: torch.device) -> TriMesh:
    return TriMesh(d["vertices"], d["faces"], d["uvs"], d["vertex_colors"]).to(device)


@dataclass
class StageCarry:
    """What a stage hands to the next one."""

    reference: ReferenceView | None = None
    geometry: Any = None
    """The last geometry stage's state (NerfState / NeusState / DmtetState), for the next hand-over."""
    mesh: TriMesh | None = None
    """The last stage's mesh (object frame)."""
    detail: TriMesh | None = None
    """The detailed geometry a normal map is baked from (the polish mesh)."""
    baked: BakedTexture | None = None
    """The texture stage's atlas."""
    payload: MeshPayload | None = None
    """The final payload (texture stage onwards)."""
    files: dict[str, Path] = field(default_factory=dict)


# -- the pipeline ------------------------------------------------------------------------------------


class DreamPolishPipeline:
    """pipeline_api.Pipeline for the DreamPolish method (module docstring).

    presets: extra or replacement presets by name (builders of PipelinePreset); priors: a fixed
    PriorSource (e.g. OraclePriors) instead of the diffusion models; rasterizer: override the preset's."""

    def __init__(self, presets: dict[str, Callable[[], PipelinePreset]] | None = None,
                 priors: PriorSource | None = None, rasterizer: MeshRasterizer | None = None):
        self._extra_presets = dict(presets or {})
        self._priors = priors
        self._diffusion: dict[str, DiffusionPriors] = {}
        self._rasterizer = rasterizer

    # -- Pipeline API -------------------------------------------------------------------------------

    def presets(self) -> list[str]:
        return list(dict.fromkeys([*preset_names(), *self._extra_presets]))

    def resolve_preset(self, spec: JobSpec) -> PipelinePreset:
        """The request's preset with its options applied (ValidationError when either is bad)."""
        if spec.preset in self._extra_presets:
            return apply_options(self._extra_presets[spec.preset](), dict(spec.options))
        return get_preset(spec.preset, dict(spec.options))

    def stage_plan(self, spec: JobSpec) -> list[str]:
        """The stages this request runs, in order."""
        mode_stages = MODE_STAGES[spec.mode]
        if spec.stages is None:
            return list(mode_stages)
        wanted = set(spec.stages)
        plan = [s for s in mode_stages if s in wanted]
        if "export" in mode_stages and "export" not in plan and plan and plan[-1] == "texture":
            plan.append("export")  # a textured result is always exported
        return plan

    def check(self, spec: JobSpec) -> None:
        """Reject a bad request before it is queued (no GPU work); messages name the field."""
        if not isinstance(spec.prompt, str) or not isinstance(spec.negative_prompt, str):
            raise ValidationError("prompt and negative_prompt must be strings")
        if spec.mode not in JOB_MODES:
            raise ValidationError(f"mode must be one of {', '.join(JOB_MODES)}, got {spec.mode!r}")
        if spec.mode == "generate" and not spec.prompt.strip():
            raise ValidationError("prompt is empty: say what to make")
        for name, text in (("prompt", spec.prompt), ("negative_prompt", spec.negative_prompt)):
            if len(text) > LIMITS.max_prompt_chars:
                raise ValidationError(f"{name} has {len(text)} characters; the limit is {LIMITS.max_prompt_chars}")
        if isinstance(spec.seed, bool) or not isinstance(spec.seed, int) or not (0 <= spec.seed < 2**63):
            raise ValidationError(f"seed must be an integer in [0, 2^63), got {spec.seed!r}")
        if spec.preset not in self.presets():
            raise ValidationError(f"unknown preset {spec.preset!r}; choose one of {', '.join(self.presets())}")
        self.resolve_preset(spec)
        mode_stages = MODE_STAGES[spec.mode]
        for label, names in (("stages", spec.stages or []), ("pause_after", spec.pause_after)):
            for stage in names:
                if stage not in STAGES:
                    raise ValidationError(f"unknown stage {stage!r} in {label}; stages are {', '.join(STAGES)}")
                if stage not in mode_stages:
                    raise ValidationError(f"stage {stage!r} in {label} is not part of a {spec.mode!r} job "
                                          f"({', '.join(mode_stages)})")
        if spec.stages is not None and not self.stage_plan(spec):
            raise ValidationError("stages selects nothing to run")
        if spec.stages is not None:
            self._check_stage_chain(spec)
        if len(spec.cameras) > LIMITS.max_cameras:
            raise ValidationError(f"{len(spec.cameras)} cameras; the limit is {LIMITS.max_cameras}")
        for camera in spec.cameras:
            camera.validate()
        if spec.cameras and not (0 <= spec.reference_camera < len(spec.cameras)):
            raise ValidationError(f"reference_camera {spec.reference_camera} is not one of the "
                                  f"{len(spec.cameras)} cameras")
        if spec.mode == "generate":
            if spec.input_mesh is not None:
                raise ValidationError("a generate job takes no input_mesh; use mode 'geometry' or 'texture' to refine")
        else:
            if spec.input_mesh is None:
                raise ValidationError(f"mode {spec.mode!r} refines a mesh: input_mesh is missing")
            spec.input_mesh.validate(require_faces=True)
            extent = np.ptp(spec.input_mesh.vertices, axis=0)
            if float(np.linalg.norm(extent)) <= 0:
                raise ValidationError("input_mesh has no extent: all its vertices coincide")

    def _check_stage_chain(self, spec: JobSpec) -> None:
        """A subset must be a contiguous run of the mode's chain: each stage starts from the last."""
        chain = MODE_STAGES[spec.mode]
        plan = self.stage_plan(spec)
        idx = [chain.index(s) for s in plan]
        if idx != list(range(idx[0], idx[0] + len(idx))):
            raise ValidationError(f"stages {plan} skip a stage of the chain {list(chain)}; each stage starts from "
                                  "the one before it")
        if spec.mode == "generate" and plan[0] != "reference":
            raise ValidationError("a generate job starts with the reference stage")

    # -- run -----------------------------------------------------------------------------------------

    def _priors_for(self, device: torch.device) -> PriorSource:
        if self._priors is not None:
            return self._priors
        key = str(device)
        if key not in self._diffusion:
            self._diffusion[key] = DiffusionPriors(device)
        return self._diffusion[key]

    def run(self, spec: JobSpec, ctx: JobContext, resume: ResumePoint | None = None) -> RunOutcome:
        # 1. Check the request (the job system checked it at submit; a restart may bring an old one).
        self.check(spec)
        device = torch.device(ctx.device)

        # 2. Resolve the preset with the request's options.
        preset = self.resolve_preset(spec)
        rasterizer = self._rasterizer or MeshRasterizer(preset.rasterizer)
        plan = self.stage_plan(spec)

        # 3. Place the job: object frame, reference camera, preview rig.
        frame = job_frame(spec, preset, device)

        # 4. Restore finished stages (own checkpoints), then apply the client's edited mesh.
        store = CheckpointStore(ctx.work_dir)
        if resume is None:
            store.clear()
        carry = StageCarry()
        finished = [s for s in store.finished() if s in plan]
        for stage in finished:
            self._restore(stage, store.load(stage, device), carry, preset, frame, device)
        edited = resume.edited_mesh if resume is not None else None
        if edited is not None:
            edited.validate(require_faces=True)
            carry.mesh = TriMesh.from_payload(edited, apply_transform=False, device=device)
            carry.geometry = None  # the next stage starts from the edited mesh, not from the old state
            if carry.payload is not None:
                carry.payload = dataclasses.replace(
                    edited, transform=frame.transform, textures=list(carry.payload.textures))
            logger.info("job %s resumes from an edited mesh (%d faces)", ctx.job_id, carry.mesh.num_faces)
        if finished:
            logger.info("job %s: stages already finished: %s", ctx.job_id, ", ".join(finished))
        remaining = [s for s in plan if s not in finished]
        if not remaining:
            return RunOutcome(result_files=self._result_files(ctx.work_dir, preset))

        # 5. Load the priors (lazily: each stage asks for what it needs).
        priors = self._priors_for(device)

        # 6. Run the remaining stages.
        runners: dict[str, Callable[..., dict[str, Any]]] = {
            "reference": self._run_reference, "nerf": self._run_nerf, "neus": self._run_neus,
            "dmtet": self._run_dmtet, "polish": self._run_polish, "texture": self._run_texture,
            "export": self._run_export,
        }
        for stage in remaining:
            index = plan.index(stage)
            ctx.check_cancel()
            seed = stage_seed(spec.seed, stage)
            generator = torch.Generator().manual_seed(seed)
            # Modules built with the global RNG (MLPs, LoRA adapters) start the same on every run of this stage.
            torch.manual_seed(seed)
            reporter = StageProgress(ctx, stage, preset.preview_every)
            logger.info("job %s: stage %s", ctx.job_id, stage)
            checkpoint = runners[stage](spec=spec, preset=preset, frame=frame, carry=carry, priors=priors,
                                        reporter=reporter, generator=generator, seed=seed, device=device,
                                        rasterizer=rasterizer, ctx=ctx)
            if stage in MESH_STAGES:
                ctx.stage_result(stage, index, self._stage_payload(stage, carry, frame))
            store.save(stage, checkpoint)
            if stage in spec.pause_after and stage != plan[-1]:
                store.mark_paused(stage)
                return RunOutcome(paused_after=stage)
        return RunOutcome(result_files=dict(carry.files))

    @staticmethod
    def _result_files(work_dir: Path, preset: PipelinePreset) -> dict[str, Path]:
        glb = Path(work_dir) / preset.export.glb_name
        return {"glb": glb} if glb.exists() else {}

    def _stage_payload(self, stage: str, carry: StageCarry, frame: JobFrame) -> MeshPayload:
        if carry.payload is not None and stage in ("texture", "export"):
            return carry.payload
        return mesh_payload(carry.mesh, frame.transform)

    def _restore(self, stage: str, ckpt: dict[str, Any], carry: StageCarry, preset: PipelinePreset,
                 frame: JobFrame, device: torch.device) -> None:
        """Put a finished stage's checkpoint back into the carry."""
        if stage == "reference":
            carry.reference = ReferenceView(rgb=ckpt["rgb"], mask=ckpt["mask"], camera=frame.reference_camera,
                                            depth=ckpt.get("depth"))
            return
        if "mesh" in ckpt:
            carry.mesh = _mesh_from_ckpt(ckpt["mesh"], device)
        if stage == "nerf":
            carry.geometry = NerfState.from_state_dict(preset.nerf, ckpt["state"], device)
        elif stage == "neus":
            carry.geometry = NeusState.from_state_dict(preset.neus, ckpt["state"], device)
        elif stage == "dmtet":
            carry.geometry = DmtetState.from_state_dict(preset.dmtet, ckpt["state"], device)
        elif stage == "polish":
            carry.geometry = None
            carry.detail = carry.mesh
        elif stage in ("texture", "export"):
            carry.payload = _payload_from_ckpt(ckpt["payload"])
            if stage == "texture":
                carry.baked = None

    # -- stages --------------------------------------------------------------------------------------

    @staticmethod
    def _reference_view(carry: StageCarry, frame: JobFrame) -> ReferenceView | None:
        return carry.reference

    def _run_reference(self, *, spec, preset, frame, carry, priors, reporter, seed, **_) -> dict[str, Any]:
        reporter.check_cancel()
        view = priors.reference(spec, preset, frame, seed)
        carry.reference = view
        rgba = torch.cat([view.rgb, view.mask], -1).float().clamp(0, 1).cpu().numpy()
        reporter.ctx.progress("reference", 1, 1, {}, bake.encode_png(rgba))
        return {"rgb": view.rgb.detach().cpu(), "mask": view.mask.detach().cpu(),
                "depth": None if view.depth is None else view.depth.detach().cpu()}

    def _geometry_mesh(self, stage: str, state: Any) -> TriMesh:
        mesh = state.extract_mesh(normalize=False)  # stay in the job's object frame
        if mesh.num_faces == 0:
            raise JobFailed("empty_geometry", f"the {stage} stage ended with no surface; try another seed or "
                                              "more steps")
        return mesh

    def _run_nerf(self, *, spec, preset, frame, carry, priors, reporter, generator, seed, device, **_):
        reference = self._reference_view(carry, frame)
        guidance = priors.geometry_guidance("nerf", spec, preset, frame, reference, seed)
        reporter.preview = _state_preview(reporter, frame.preview_cameras, preset.preview_every, device)
        try:
            state = run_nerf(preset.nerf, guidance, reference, reporter, generator=generator, device=device)
        finally:
            guidance.release()
        carry.geometry = state
        carry.mesh = self._geometry_mesh("nerf", state)
        return {"state": state.state_dict(), "mesh": _mesh_to_ckpt(carry.mesh)}

    def _run_neus(self, *, spec, preset, frame, carry, priors, reporter, generator, seed, device, **_):
        # After a resume with an edited mesh (carry.geometry cleared), NeuS starts from that mesh.
        init = carry.geometry if isinstance(carry.geometry, NerfState) else carry.mesh
        reference = self._reference_view(carry, frame)
        guidance = priors.geometry_guidance("neus", spec, preset, frame, reference, seed)
        reporter.preview = _state_preview(reporter, frame.preview_cameras, preset.preview_every, device)
        try:
            state = run_neus(preset.neus, init, guidance, reference, reporter, generator=generator,
                             device=device)
        finally:
            guidance.release()
        carry.geometry = state
        carry.mesh = self._geometry_mesh("neus", state)
        return {"state": state.state_dict(), "mesh": _mesh_to_ckpt(carry.mesh)}

    def _run_dmtet(self, *, spec, preset, frame, carry, priors, reporter, generator, seed, device, **_):
        reference = self._reference_view(carry, frame)
        guidance = priors.geometry_guidance("dmtet", spec, preset, frame, reference, seed)
        reporter.preview = _state_preview(reporter, frame.preview_cameras, preset.preview_every, device)
        if isinstance(carry.geometry, NeusState):
            init: Any = carry.geometry
        else:
            init = carry.mesh if carry.mesh is not None else frame.input_mesh
        try:
            state = run_dmtet(preset.dmtet, init, guidance, reference, reporter, generator=generator, device=device)
        finally:
            guidance.release()
        carry.geometry = state
        carry.mesh = self._geometry_mesh("dmtet", state)
        return {"state": state.state_dict(), "mesh": _mesh_to_ckpt(carry.mesh)}

    def _run_polish(self, *, spec, preset, frame, carry, priors, reporter, generator, seed, device, rasterizer, **_):
        mesh = carry.mesh if carry.mesh is not None else frame.input_mesh
        targets = priors.normal_targets(preset, seed) if preset.polish.loss == "normal_estimator" else None
        latest = {"mesh": mesh}
        reporter.preview = lambda step: render_preview(
            latest["mesh"], rig_camera(frame.preview_cameras, step, preset.preview_every),
            rasterizer)
        polished = run_polish(preset.polish, mesh, targets, reporter, rasterizer=rasterizer, generator=generator,
                              device=device, on_step=lambda step, m: latest.__setitem__("mesh", m))
        carry.mesh = polished
        carry.detail = polished
        carry.geometry = None
        return {"mesh": _mesh_to_ckpt(polished)}

    def _run_texture(self, *, spec, preset, frame, carry, priors, reporter, generator, seed, device, rasterizer,
                     **_):
        cfg = preset.texture
        keep_topology = spec.mode == "texture" and carry.mesh is None
        mesh = frame.input_mesh if keep_topology else carry.mesh
        if mesh is None:
            raise JobFailed("no_geometry", "the texture stage has no mesh to texture")
        if cfg.simplify_to_faces and not keep_topology and mesh.num_faces > cfg.simplify_to_faces:
            detail_faces = mesh.num_faces
            mesh = simplify_mesh(mesh, cfg.simplify_to_faces)
            logger.info("texture: mesh simplified from %d to %d faces", detail_faces, mesh.num_faces)
        guidance = priors.texture_guidance(spec, preset, frame, seed)
        reference = self._reference_view(carry, frame)
        latest: dict[str, TextureState] = {}
        reporter.preview = lambda step: None if "state" not in latest else render_preview(
            mesh, rig_camera(frame.preview_cameras, step, preset.preview_every),
            rasterizer, latest["state"].color_field.color)
        try:
            state = run_texture(
                cfg, mesh, guidance, reporter,
                reference_rgb=None if reference is None else reference.rgb[None],
                reference_mask=None if reference is None else reference.mask[None],
                reference_camera=None if reference is None else reference.camera,
                rasterizer=rasterizer, generator=generator, device=device,
                on_step=lambda step, st: latest.__setitem__("state", st))
        finally:
            guidance.release()
        own_uvs = None if mesh.uvs is None else mesh.uvs.detach().cpu().numpy()
        baked = bake_texture(cfg, state, uvs=own_uvs, detail=carry.detail)
        carry.baked = baked
        textures = texture_payloads(baked.base_color, baked.normal_map, preset.export.normal_map_dtype)
        if keep_topology:
            # Texture only: the input's vertices, faces, UVs and transform go back exactly as they came.
            source = spec.input_mesh
            carry.payload = MeshPayload(
                vertices=source.vertices, faces=source.faces, uvs=source.uvs if source.uvs is not None
                else self._input_corner_uvs(source, mesh, baked), normals=source.normals, colors=source.colors,
                transform=source.transform, textures=textures).validate()
        else:
            textured = TriMesh(mesh.vertices, mesh.faces, torch.as_tensor(baked.uvs, device=mesh.device),
                               mesh.vertex_colors)
            carry.mesh = textured
            carry.payload = mesh_payload(textured, frame.transform, textures)
        return {"mesh": _mesh_to_ckpt(carry.mesh if carry.mesh is not None else mesh),
                "payload": _payload_to_ckpt(carry.payload), "field": state.state_dict()}

    @staticmethod
    def _input_corner_uvs(source: MeshPayload, mesh: TriMesh, baked: BakedTexture) -> np.ndarray:
        """New xatlas UVs for an input without UVs, in the input's own corner order (TriMesh.from_payload
        reverses the corners of a mirrored object)."""
        if np.array_equal(mesh.faces.cpu().numpy().astype(np.uint32), source.faces):
            return baked.uvs
        return np.ascontiguousarray(baked.uvs[:, ::-1])

    def _run_export(self, *, preset, carry, reporter, ctx, **_):
        reporter.check_cancel()
        if carry.payload is None:
            raise JobFailed("no_texture", "export needs the texture stage's result")
        result = run_export(preset.export, carry.payload, ctx.work_dir)
        carry.files.update(result.files)
        reporter.progress(1, 1, {})
        return {"payload": _payload_to_ckpt(carry.payload),
                "files": {k: str(v) for k, v in result.files.items()}}


def _payload_to_ckpt(payload: MeshPayload) -> dict[str, Any]:
    def t(a: np.ndarray | None) -> Tensor | None:
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a).astype(
            np.int64 if a.dtype == np.uint32 else a.dtype))

    return {
        "vertices": t(payload.vertices), "faces": t(payload.faces), "uvs": t(payload.uvs),
        "normals": t(payload.normals), "colors": t(payload.colors), "transform": t(payload.transform),
        "textures": [{"role": x.role, "png": x.png, "array": t(x.array)} for x in payload.textures],
    }


def _payload_from_ckpt(d: dict[str, Any]) -> MeshPayload:
    from dreampolish.protocol.scene import TexturePayload

    def a(x: Tensor | None, dtype: Any = None) -> np.ndarray | None:
        return None if x is None else np.ascontiguousarray(x.numpy().astype(dtype or x.numpy().dtype))

    return MeshPayload(
        vertices=a(d["vertices"]), faces=a(d["faces"], np.uint32), uvs=a(d["uvs"]), normals=a(d["normals"]),
        colors=a(d["colors"]), transform=a(d["transform"]),
        textures=[TexturePayload(role=x["role"], png=x["png"], array=a(x["array"])) for x in d["textures"]],
    )
