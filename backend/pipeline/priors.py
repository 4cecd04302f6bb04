"""Where a job's guidance comes from: the method's diffusion priors, or an oracle target mesh.

Both are seeded from (request seed, stage name) by the caller, so a stage rerun after a restart
draws exactly what it drew before.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Protocol

import torch
from dreampolish.protocol.job import JobSpec
from torch import Tensor

from ..geometry.mesh import TriMesh
from ..guidance.base import Guidance, GuidanceInput, GuidanceOutput, NormalTargets, ReferenceView
from ..guidance.compiled import GuidanceCompile
from ..guidance.intrinsics import Decomposer
from ..presets import PipelinePreset
from ..render.rasterize import MeshRasterizer
from .frame import JobFrame

logger = logging.getLogger(__name__)


class CombinedGuidance:
    """Weighted sum of several guidances: L = Σ_k w_k L_k; diagnostics prefixed by each one's name."""

    def __init__(self, parts: list[tuple[str, float, Guidance]]):
        self.parts = [(name, w, g) for name, w, g in parts if w != 0]

    def release(self) -> None:
        """Drop the LoRA adapters that variational objectives (VSD/BSD/DSD) added to the shared UNet, so
        that a long-lived backend does not collect one per job."""
        from ..guidance.score_distillation import ScoreDistillation  # imported where the priors are built

        for _, _, guidance in self.parts:
            if isinstance(guidance, ScoreDistillation):
                guidance.release()

    def __call__(self, inp: GuidanceInput) -> GuidanceOutput:
        total: Tensor | None = None
        diagnostics: dict[str, Tensor | float] = {}
        for name, weight, guidance in self.parts:
            out = guidance(inp)
            total = weight * out.loss if total is None else total + weight * out.loss
            # kept on the device (0-dim, detached): read back only at reporting steps (issue 28)
            diagnostics[f"{name}_loss"] = out.loss.detach()
            diagnostics.update({f"{name}_{k}": v for k, v in out.diagnostics.items()})
        if total is None:
            total = inp.rgb.sum() * 0.0
        return GuidanceOutput(total, diagnostics)


class PriorSource(Protocol):
    """Where a job's guidance comes from: the diffusion priors, or an oracle target."""

    def reference(self, spec: JobSpec, preset: PipelinePreset, frame: JobFrame, seed: int) -> ReferenceView: ...

    def geometry_guidance(self, stage: str, spec: JobSpec, preset: PipelinePreset, frame: JobFrame,
                          reference: ReferenceView | None, seed: int) -> CombinedGuidance: ...

    def normal_targets(self, preset: PipelinePreset, seed: int) -> NormalTargets: ...

    def texture_guidance(self, spec: JobSpec, preset: PipelinePreset, frame: JobFrame, seed: int,
                         reference: ReferenceView | None = None) -> CombinedGuidance: ...

    def intrinsics(self, preset: PipelinePreset, seed: int) -> Decomposer: ...


def front_view_prompts(cfg: Any, frame: JobFrame) -> Any:
    """View prompts whose "front" is the reference camera's side of the object."""
    return dataclasses.replace(cfg, front_azimuth_deg=float(frame.reference_camera.azimuth_deg[0]))


def zero123_reference_view(cam: Any) -> Any:
    """The artist's reference camera (B=1) as Zero123's reference orbit view, with its field of view so
    that the guidance can reframe the image as its sampled views."""
    from ..guidance.zero123 import ReferenceView as OrbitView

    return OrbitView(float(cam.elevation_deg[0]), float(cam.azimuth_deg[0]), float(cam.distance[0]),
                     float(cam.fovy_deg[0]))


def reference_needs(preset: PipelinePreset) -> tuple[bool, bool]:
    """(depth, normals): whether any geometry stage weighs the reference depth / normal loss (DreamCraft3D's
    requires_depth / requires_normal follow its lambda_depth_rel / lambda_normal the same way)."""
    weights = [preset.nerf.reference, preset.neus.reference, preset.dmtet.reference]
    return (any(max(w.depth.start, w.depth.final()) > 0 for w in weights),
            any(max(w.normal.start, w.normal.final()) > 0 for w in weights))


def stage_roles(stage: str, spec: JobSpec, preset: PipelinePreset) -> set[str]:
    """The prior roles (models/specs.ModelRole) that DiffusionPriors' guidance for `stage` uses: with
    offloading, only these stay on the device while the stage runs. It follows the assembly below: the
    reference's image (text_to_image, without a picture) and estimates (reference_needs); the geometry
    stages' Zero123 and text SDS where their weights are non-zero; polish's normal estimator; the texture's
    DSD (text_to_image) or, for a picture without words, Zero123, and the bake's intrinsics model."""
    has_prompt = bool(spec.prompt.strip())
    if stage == "reference":
        depth, normals = reference_needs(preset)
        return {r for r, used in (("text_to_image", spec.image is None), ("depth", depth), ("normals", normals))
                if used}
    if stage in ("nerf", "neus", "dmtet"):
        g = preset.guidance.for_stage(stage)
        return {r for r, used in (("zero123", bool(g.zero123_weight)), ("text_to_image", bool(g.text_weight)
                                                                          and has_prompt)) if used}
    if stage == "polish":
        return {"normals"} if preset.polish.loss == "normal_estimator" else set()
    if stage == "texture":
        picture_only = spec.image is not None and not has_prompt
        return {"zero123" if picture_only else "text_to_image", "intrinsics"}
    return set()


def given_reference(spec: JobSpec, preset: PipelinePreset, frame: JobFrame) -> tuple[Tensor, Tensor]:
    """The request's image prepared as the reference view (rgb [H,W,3], mask [H,W,1] on the frame's device)."""
    from ..stages.reference import prepare_image

    cam = frame.reference_camera
    if spec.image is None:  # the callers check; a bad call must still fail clearly
        raise ValueError("the request has no reference image")
    ref = preset.reference
    return prepare_image(spec.image, cam.width, cam.height, ref.fill_margin / ref.image_fill, ref.generation,
                         cam.device)


def given_views(spec: JobSpec, preset: PipelinePreset, frame: JobFrame) -> list[tuple[Tensor, Tensor]]:
    """A multi-view request's pictures, each as its camera (frame.view_cameras) took it: (rgb, mask) each."""
    from ..stages.reference import prepare_exact

    cams = frame.view_cameras or []
    return [prepare_exact(v.image, c.width, c.height, preset.reference.generation, c.device)
            for v, c in zip(spec.views, cams)]


def picture_zero123(models: Any, reference: ReferenceView, config: Any, seed: int, compile: Any) -> Guidance:
    """Zero123 conditioned on the reference picture; with several, each sampled view on the nearest one
    (guidance/zero123.py NearestReference), each reference with a seed of its own."""
    import torch.nn.functional as F

    from ..guidance.zero123 import NearestReference, Zero123Guidance

    def one(view: ReferenceView, k: int) -> Zero123Guidance:
        return Zero123Guidance(models.zero123, view.rgb, view.mask, zero123_reference_view(view.camera),
                               _seeded(config, seed + 7 * k), compile)

    if not reference.more:
        return one(reference, 0)
    return NearestReference([(F.normalize(v.camera.c2w[0, :3, 3].float(), dim=0), one(v, k))
                             for k, v in enumerate(reference.views())])


def _seeded(cfg: Any, seed: int) -> Any:
    return dataclasses.replace(cfg, seed=seed % (2**31))


class DiffusionPriors:
    """The method's priors: the text-to-image model (reference image, text SDS, DSD on the texture),
    Zero123 (view-conditioned SDS) and Marigold (polish normals), loaded once per model set and device
    and kept for the life of the process."""

    def __init__(self, device: torch.device):
        self.device = device
        self._models: dict[str, Any] = {}
        self.moved: dict[str, int] = {}
        """Bytes of priors moved between the device and host memory at each stage's start (offloading)."""

    def _load_models(self, name: str) -> Any:
        """The models of model set `name` on this device, loaded on first use (models/loading.PriorModels)."""
        from ..models.loading import PriorModels
        from ..models.specs import model_set

        return PriorModels(model_set(name), self.device)

    def models(self, preset: PipelinePreset):
        if preset.model_set not in self._models:
            self._models[preset.model_set] = self._load_models(preset.model_set)
        return self._models[preset.model_set]

    def enter_stage(self, stage: str, spec: JobSpec, preset: PipelinePreset, offload: bool) -> int:
        """Before `stage` runs: with `offload`, keep on the device only the priors it uses (stage_roles), the
        others in host memory (models/residency.py); the bytes moved."""
        if not offload:
            return 0
        moved = self.models(preset).place(stage_roles(stage, spec, preset))
        self.moved[stage] = moved
        if moved:
            logger.info("offloading: %.2f GB of priors moved before stage %s", moved / 1e9, stage)
        return moved

    def reference(self, spec: JobSpec, preset: PipelinePreset, frame: JobFrame, seed: int) -> ReferenceView:
        """The artist's image or one made from the prompt, with Marigold's depth and normals of it where a
        stage weighs their losses (stages/reference.py)."""
        cam, models = frame.reference_camera, self.models(preset)
        if frame.view_cameras:
            pictures = list(zip(given_views(spec, preset, frame), frame.view_cameras))
        elif spec.image is not None:
            pictures = [(given_reference(spec, preset, frame), cam)]
        else:
            pictures = [(self._generated_reference(models, spec, preset, frame, seed % (2**31)), cam)]
        wants_depth, wants_normals = reference_needs(preset)
        views = []
        for (rgb, mask), camera in pictures:  # the depth of each picture on its own (relative depth)
            depth, normal = self._reference_geometry(models.depth if wants_depth else None,
                                                     models.normals if wants_normals else None, rgb, mask, preset,
                                                     seed % (2**31))
            views.append(ReferenceView(rgb=rgb, mask=mask, camera=camera, depth=depth, normal=normal))
        models.unload("depth")  # used once per job: not resident through the later stages
        return dataclasses.replace(views[0], more=views[1:])

    def _generated_reference(self, models: Any, spec: JobSpec, preset: PipelinePreset, frame: JobFrame,
                             seed: int) -> tuple[Tensor, Tensor]:
        """(rgb, mask) the text-to-image model makes from the prompt (stages/reference.generate_reference)."""
        from ..stages.reference import generate_reference

        cam = frame.reference_camera
        return generate_reference(models, spec.prompt, spec.negative_prompt, cam.width, cam.height, seed,
                                  self.device, preset.reference.generation)

    def _reference_geometry(self, depth_model: Any, normals_model: Any, rgb: Tensor, mask: Tensor,
                            preset: PipelinePreset, seed: int) -> tuple[Tensor | None, Tensor | None]:
        """(depth, normals) of the reference image by the estimators given (stages/reference.estimate_geometry)."""
        from ..stages.reference import estimate_geometry

        return estimate_geometry(depth_model, normals_model, rgb, mask, preset.reference.generation.estimator, seed)

    def geometry_guidance(self, stage: str, spec: JobSpec, preset: PipelinePreset, frame: JobFrame,
                          reference: ReferenceView | None, seed: int) -> CombinedGuidance:
        from ..guidance.score_distillation import ScoreDistillation
        from ..guidance.text_prior import encode_prompts

        g = preset.guidance.for_stage(stage)  # each stage its own timestep schedule per prior
        models = self.models(preset)
        compile = GuidanceCompile.choose(preset.compile_guidance, self.device)
        parts: list[tuple[str, float, Guidance]] = []
        view_prompts = front_view_prompts(g.view_prompts, frame)
        if reference is not None and g.zero123_weight:
            parts.append(("zero123", g.zero123_weight, picture_zero123(models, reference, g.zero123, seed, compile)))
        if g.text_weight and spec.prompt.strip():  # an image job may come without a prompt
            prompts = encode_prompts(models.text_to_image, spec.prompt, spec.negative_prompt, view_prompts)
            parts.append(("text", g.text_weight,
                          ScoreDistillation(models.text_to_image, prompts, _seeded(g.text, seed + 1), compile)))
        return CombinedGuidance(parts)

    def normal_targets(self, preset: PipelinePreset, seed: int) -> NormalTargets:
        from ..guidance.normals import MarigoldNormalTargets

        return MarigoldNormalTargets(self.models(preset).normals, _seeded(preset.polish.estimator, seed))

    def texture_guidance(self, spec: JobSpec, preset: PipelinePreset, frame: JobFrame, seed: int,
                         reference: ReferenceView | None = None) -> CombinedGuidance:
        """DSD on the text prior; for a picture without a prompt, SDS on the view-conditioned prior
        conditioned on the picture (TextureConfig.picture_guidance), as its geometry stages have."""
        from ..guidance.score_distillation import ScoreDistillation
        from ..guidance.text_prior import encode_prompts

        models = self.models(preset)
        compile = GuidanceCompile.choose(preset.compile_guidance, self.device)
        if reference is not None and (spec.image is not None or spec.views) and not spec.prompt.strip():
            return CombinedGuidance([("texture", 1.0, picture_zero123(
                models, reference, preset.texture.picture_guidance, seed, compile))])
        prompts = encode_prompts(models.text_to_image, spec.prompt, spec.negative_prompt,
                                 front_view_prompts(preset.guidance.view_prompts, frame))
        return CombinedGuidance([("texture", 1.0, ScoreDistillation(
            models.text_to_image, prompts, _seeded(preset.texture.guidance, seed), compile))])

    def intrinsics(self, preset: PipelinePreset, seed: int) -> Decomposer:
        from ..guidance.intrinsics import MarigoldIntrinsics

        models = self.models(preset)
        # Used once per job, for the bake: unloaded after it, as the reference's depth model is.
        return MarigoldIntrinsics(models.intrinsics, _seeded(preset.texture.pbr.intrinsics, seed),
                                  background=preset.texture.background, on_close=lambda: models.unload("intrinsics"))


class OraclePriors:
    """A known target mesh (object frame) in place of every prior: the reference image is its render,
    the geometry and texture guidance compare with its renders, the polish targets are its normals.
    For tests and fidelity benchmarks without pretrained weights."""

    def __init__(self, target: TriMesh, texture: Tensor | None = None, rasterizer: MeshRasterizer | None = None):
        self.target = target
        self.texture = texture
        self.rasterizer = rasterizer or MeshRasterizer("torch")

    def reference(self, spec: JobSpec, preset: PipelinePreset, frame: JobFrame, seed: int) -> ReferenceView:
        """The target's render at the reference camera; with an image in the request, that image instead
        (without depth: the oracle has no estimator)."""
        from ..guidance.oracle import oracle_reference

        if frame.view_cameras:
            views = [ReferenceView(rgb=rgb, mask=mask, camera=c)
                     for (rgb, mask), c in zip(given_views(spec, preset, frame), frame.view_cameras)]
            return dataclasses.replace(views[0], more=views[1:])
        if spec.image is not None:
            rgb, mask = given_reference(spec, preset, frame)
            return ReferenceView(rgb=rgb, mask=mask, camera=frame.reference_camera)
        return oracle_reference(self.target.to(frame.reference_camera.device), frame.reference_camera,
                                self.rasterizer, self.texture)

    def geometry_guidance(self, stage: str, spec: JobSpec, preset: PipelinePreset, frame: JobFrame,
                          reference: ReferenceView | None, seed: int) -> CombinedGuidance:
        from ..guidance.oracle import OracleGuidance

        return CombinedGuidance([("oracle", 1.0, OracleGuidance(self.target, self.rasterizer, texture=self.texture))])

    def normal_targets(self, preset: PipelinePreset, seed: int) -> NormalTargets:
        from ..guidance.oracle import OracleNormals

        return OracleNormals(self.target, self.rasterizer)

    def texture_guidance(self, spec: JobSpec, preset: PipelinePreset, frame: JobFrame, seed: int,
                         reference: ReferenceView | None = None) -> CombinedGuidance:
        from ..guidance.oracle import OracleGuidance

        return CombinedGuidance([("oracle", 1.0, OracleGuidance(self.target, self.rasterizer, texture=self.texture))])

    def intrinsics(self, preset: PipelinePreset, seed: int) -> Decomposer:
        from ..guidance.intrinsics import OracleDecomposer

        # The target's own colours are its albedo; the oracle target has no other material than the
        # defaults the texture stage falls back to.
        pbr = preset.texture.pbr
        return OracleDecomposer(self.target, self.rasterizer, roughness=pbr.default_roughness,
                                metallic=pbr.default_metallic, texture=self.texture)
