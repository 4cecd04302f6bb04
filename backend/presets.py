"""Presets: every setting of a DreamPolish run as typed, nested dataclasses of the stage configs.

A preset is an instance of PipelinePreset. `get_preset` applies a request's options to a named
one and `save_preset` / `load_preset` keep one as plain JSON of its fields, both checked field by
field by config_values.py (annotations) and config_fields.py (ranges, file names).

Presets: tiny (tiny models, CPU, seconds per stage), micro (the micro priors, CPU, minutes), draft (GPU, fast),
standard (the method's settings), high (more of everything). They are written
as typed instances (dataclasses.replace of the standard one), so that an editor
and a type checker see into them; only requests name fields by dotted strings.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from dreampolish.protocol.errors import ValidationError

from .config_fields import ranged
from .config_values import apply_options, from_json_dict, to_json_dict
from .geometry.fields import FieldConfig
from .guidance.score_distillation import ScoreDistillationConfig, TimestepSchedule, method_dsd_weights
from .guidance.text_prior import ViewPromptConfig
from .guidance.zero123 import Zero123GuidanceConfig
from .stages.dmtet import DmtetConfig
from .stages.export import ExportConfig
from .stages.finish import FinishConfig
from .stages.nerf import NerfConfig
from .stages.neus import NeusConfig
from .stages.polish import PolishConfig
from .stages.reference import ReferenceConfig
from .stages.texture import TextureConfig

MICRO_SILHOUETTE_SPAN = 0.74
"""Share of its bounding sphere's diameter that the silhouette of the micro world's least spread-out shapes
spans in its renders (micro/world.py `silhouette_spans`: the cube 0.737 and the table 0.742 on average; the
cone 0.78, the sphere and the torus 1.0). The micro preset frames an artist's picture to it, so that no shape
comes out larger than the world showed it: larger, the micro priors flatten it (the red cone from the front
at 1.11 times its world size: Chamfer 4.6 %, IoU 0.60; at its size 1.2 % and 0.885)."""

# -- the pipeline's presets ----------------------------------------------------------------------------


@dataclass
class ReferenceStageConfig:
    """The reference image for the reference camera."""

    size: int = ranged(512, 32, 2048)
    """Longer side in pixels the reference image (and the reference camera) is used at."""
    generation: ReferenceConfig = field(default_factory=ReferenceConfig)
    """How the text-to-image model makes the image and how its mask is found."""
    default_fovy_deg: float = ranged(40.0, 1, 170)
    """Field of view of the front camera used when the request has no cameras."""
    fill_margin: float = ranged(1.15, 0.5, 4.0)
    """Frame-to-object size ratio: the reference camera sits where the object frame's sphere (radius 0.5)
    spans the shorter image side over fill_margin."""
    image_fill: float = ranged(1.0, 0.1, 1.0)
    """Share of that sphere's diameter the artist's picture's silhouette spans: its bounding box's longer side
    is recentred to image_fill · shorter side / fill_margin. 1.0 puts the box on the sphere, close to
    DreamCraft3D's preprocess_image.py (border_ratio 0.2 at its views' distance 3.8 and fovy 20: the box at
    80 % of their frame; ours at 75 %). Priors trained on objects inside the sphere want less (micro)."""
    object_size: float = ranged(0.0, 0.0, 1000.0)
    """A generated object's size in metres (the diameter of its frame's sphere); 0 = as large as fills the
    reference camera's frame at its distance from the object. With a size, the reference view is seen from the
    reference camera's side at the distance where that sphere fills the frame (pipeline/frame.py)."""


@dataclass
class PriorTimesteps:
    """One stage's timestep schedule for each geometry prior."""

    text: TimestepSchedule = field(default_factory=TimestepSchedule)
    """Text SDS timesteps in this stage."""
    zero123: TimestepSchedule = field(default_factory=TimestepSchedule)
    """Zero123 SDS timesteps in this stage."""


@dataclass
class GeometryGuidanceConfig:
    """The priors that guide NeRF, NeuS and DMTet: view-conditioned (Zero123) SDS plus text SDS."""

    zero123_weight: float = ranged(0.1, 0, 1e6)
    """Weight of the Zero123 SDS loss (DreamCraft3D: 0.1, next to reference RGB 1000)."""
    zero123: Zero123GuidanceConfig = field(default_factory=Zero123GuidanceConfig)
    """Zero123 settings (CFG 5, timesteps annealed from [0.7, 0.85] to [0.2, 0.5] over the first 4% of the stage)."""
    text_weight: float = ranged(0.1, 0, 1e6)
    """Weight of the text SDS loss."""
    text: ScoreDistillationConfig = field(default_factory=lambda: ScoreDistillationConfig(
        objective="sds", guidance_scale=20.0,
        timesteps=TimestepSchedule(t_range=(0.7, 0.85), t_range_end=(0.2, 0.5), anneal_until=0.04)))
    """Text-to-image SDS settings (CFG 20; timesteps as DreamCraft3D configs/dreamcraft3d-coarse-nerf.yaml
    guidance: [0.7, 0.85] -> [0.2, 0.5] over 200 of its 5000 steps, 0.04 of the stage)."""
    view_prompts: ViewPromptConfig = field(default_factory=ViewPromptConfig)
    """View-dependent prompt suffixes ("front/side/back/overhead view")."""
    # Later stages start from a formed shape, so they refine at low and middle noise instead of restarting
    # the NeRF's high-noise anneal (`text.timesteps`, `zero123.timesteps` above, used by NeRF).
    neus_timesteps: PriorTimesteps = field(default_factory=lambda: PriorTimesteps(
        text=TimestepSchedule(t_range=(0.2, 0.5)), zero123=TimestepSchedule(t_range=(0.2, 0.5))))
    """NeuS timesteps, both priors (DreamCraft3D configs/dreamcraft3d-coarse-neus.yaml: min/max_step_percent 0.2, 0.5)."""
    dmtet_timesteps: PriorTimesteps = field(default_factory=lambda: PriorTimesteps(
        text=TimestepSchedule(t_range=(0.02, 0.5)), zero123=TimestepSchedule(t_range=(0.2, 0.5))))
    """DMTet timesteps (DreamCraft3D configs/dreamcraft3d-geometry.yaml: guidance 0.02-0.5, guidance_3d 0.2-0.5)."""

    def for_stage(self, stage: str) -> GeometryGuidanceConfig:
        """These settings with the stage's own timestep schedules ("nerf" keeps `text`/`zero123` as they are)."""
        own = {"neus": self.neus_timesteps, "dmtet": self.dmtet_timesteps}.get(stage)
        if own is None:
            return self
        return replace(self, text=replace(self.text, timesteps=own.text),
                       zero123=replace(self.zero123, timesteps=own.zero123))


@dataclass
class PipelinePreset:
    """Every setting of one DreamPolish run. Per-request options override fields by dotted path."""

    description: str = ""
    """One line shown to users."""
    model_set: str = "default"
    """Model set (models/defaults.json) of the text-to-image, Zero123 and normal-estimator priors."""
    rasterizer: Literal["auto", "torch", "nvdiffrast"] = "auto"
    """Mesh rasteriser: nvdiffrast on CUDA when installed ("auto"), else the PyTorch one."""
    compile_guidance: Literal["auto", "on", "off"] = "auto"
    """torch.compile of the priors' per-step model calls: the UNet passes, the VAE encoder and the LoRA
    adapter's training step (guidance/compiled.py). "auto" compiles on CUDA only (on the CPU compiling
    takes longer than the steps it speeds up); "off" runs them eagerly everywhere."""
    offload: Literal["none", "priors", "auto"] = "auto"
    """Keep on the GPU only the priors the current stage uses, the others in host memory between stages
    (models/residency.py): "priors" always, "none" never, "auto" when the preset fits the card only so
    (memory_check.plan_memory, from the dry run's figures). On the CPU nothing is moved."""
    preview_every: int = ranged(100, 0, 200_000)
    """Steps between preview images (0: none)."""
    report_every: int = ranged(10, 1, 200_000)
    """Steps between progress reports, whose losses are read back from the device (issue 28): the steps in
    between never make the host wait for the GPU. A stage's last step always reports."""
    preview_size: int = ranged(256, 16, 2048)
    """Longer side in pixels of preview images."""
    reference: ReferenceStageConfig = field(default_factory=ReferenceStageConfig)
    """The reference stage."""
    guidance: GeometryGuidanceConfig = field(default_factory=GeometryGuidanceConfig)
    """The priors of the geometry stages."""
    nerf: NerfConfig = field(default_factory=NerfConfig)
    """NeRF stage (coarse geometry)."""
    neus: NeusConfig = field(default_factory=NeusConfig)
    """NeuS stage (SDF geometry)."""
    dmtet: DmtetConfig = field(default_factory=DmtetConfig)
    """DMTet stage (mesh geometry)."""
    polish: PolishConfig = field(default_factory=PolishConfig)
    """Surface polishing with the normal estimator."""
    finish: FinishConfig = field(default_factory=FinishConfig)
    """Game-ready output (issue 30): the polished surface remeshed to a face budget, with UVs and LODs; off
    while finish.faces is 0."""
    texture: TextureConfig = field(default_factory=TextureConfig)
    """Texture by score distillation and UV bake."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """Final artefacts."""
    base_color_only: bool = False
    """Bake the texture field's colours alone: no de-lighting, metallic-roughness or normal map."""
    refines_only: bool = False
    """The preset refines a mesh the request sends (modes geometry and texture) and refuses to generate one
    from a prompt: its short stages start from the artist's surface, not from nothing."""


def standard_preset() -> PipelinePreset:
    """The method's settings (METHOD.md: DreamCraft3D's public configs for NeRF/NeuS/DMTet/texture, a
    few hundred polish steps). GPU."""
    preset = PipelinePreset(description="the method's settings (GPU: about 4 minutes on one H100, projected)")
    texture = preset.texture.guidance
    texture.lambda_cfg, texture.lambda_var = method_dsd_weights(texture.guidance_scale)
    return preset


def draft_preset() -> PipelinePreset:
    """A fast GPU preview of the whole method at reduced steps and resolution."""
    p = standard_preset()
    # Ray chunks of 8,192 instead of 16,384 (the same images and gradients, VolumeRenderConfig.chunk_rays): the
    # backward pass recomputes one chunk's field graph at a time, and half a chunk's keeps NeRF, with its two
    # priors resident, 1.7 GB under a 12 GB card (10.34 GB; the dry run, BENCHMARKS.md issue 27).
    return replace(
        p, description="fast GPU preview of the method (about a minute on one H100, projected)", preview_every=50,
        nerf=replace(p.nerf, steps=1200, resolution=replace(p.nerf.resolution, high=256, switch_at=2 / 3),
                     render=replace(p.nerf.render, chunk_rays=8192)),
        neus=replace(p.neus, steps=1000, render=replace(p.neus.render, chunk_rays=8192)),
        dmtet=replace(p.dmtet, steps=1000),
        polish=replace(p.polish, steps=150, render_size=384),
        texture=replace(p.texture, steps=1000, atlas_size=1024),
    )


def high_preset() -> PipelinePreset:
    """More steps, finer grids and a larger atlas than the method's settings. GPU with ample memory."""
    p = standard_preset()
    return replace(
        p, description="longer runs, finer detail, 2K texture (GPU)",
        nerf=replace(p.nerf, steps=8000),
        neus=replace(p.neus, steps=8000),
        dmtet=replace(p.dmtet, steps=8000),
        polish=replace(p.polish, steps=600, render_size=768),
        texture=replace(p.texture, steps=8000, atlas_size=2048, normal_map=True, simplify_to_faces=60000),
    )


def refine_preset() -> PipelinePreset:
    """The fast lane for a mesh that already exists (an artist's model, or one a feed-forward generator made
    and the artist imported into Blender): DMTet fits the grid to it briefly, then polish and DSD texture, at
    draft's resolutions. No NeRF or NeuS, so about a third of draft's guidance steps (bench/projected_time.py
    projects it; issue 28's target is three minutes on one H100)."""
    p = draft_preset()
    return replace(
        p, description="refine a mesh you already have: short DMTet, polish and texture (GPU, a few minutes)",
        refines_only=True,
        # DMTet starts from the input's own SDF (dmtet.input_shape_weight keeps it): the steps fit the grid to
        # the surface and let the priors fix what it lacks, rather than grow a shape.
        dmtet=replace(p.dmtet, steps=300),
        polish=replace(p.polish, steps=150, render_size=384),
        texture=replace(p.texture, steps=600, atlas_size=1024),
    )


def _tiny_field(f: FieldConfig) -> FieldConfig:
    """A 4-level, 4096-entry hash grid and 16-wide MLPs: the smallest field that still learns a shape."""
    grid = replace(f.grid, n_levels=4, log2_hashmap_size=12, base_resolution=8, start_levels=4)
    return replace(f, grid=grid, hidden_dim=16)


def _tiny_geometry(p: PipelinePreset) -> dict[str, Any]:
    """The NeRF, NeuS and DMTet stages of `p` at four steps, small grids and 24-32 px renders."""
    nerf, neus, dmtet = p.nerf, p.neus, p.dmtet
    return dict(
        nerf=replace(
            nerf, steps=4, resolution=replace(nerf.resolution, low=24, high=24), density=_tiny_field(nerf.density),
            render=replace(nerf.render, n_samples=16, occupancy_resolution=16),
            orientation_weight=replace(nerf.orientation_weight, start=0.0, end=0.0),
            mesh_resolution=32, reference=replace(nerf.reference, resolution=32), occupancy_warmup=100),
        neus=replace(
            neus, steps=4, resolution=replace(neus.resolution, low=24), sdf=_tiny_field(neus.sdf),
            render=replace(neus.render, n_samples=16, occupancy_resolution=16), init_steps=10, init_batch=2048,
            init_resolution=32, mesh_resolution=32, eikonal_points=256, reference=replace(neus.reference, resolution=32)),
        dmtet=replace(
            dmtet, steps=4, resolution=replace(dmtet.resolution, low=32), grid_resolution=16,
            color=_tiny_field(dmtet.color), color_init_steps=10, reference=replace(dmtet.reference, resolution=32)),
    )


def shrink_to_tiny(preset: PipelinePreset) -> PipelinePreset:
    """`preset` with the tiny models, the PyTorch rasteriser, a few steps per stage and small grids and
    renders: what the tiny preset is made of, and what GPU smoke benchmarks shrink other presets with."""
    p = copy.deepcopy(preset)
    return replace(
        p, model_set="tiny", rasterizer="torch", preview_every=2, report_every=1, preview_size=48,
        reference=replace(p.reference, size=64, generation=replace(p.reference.generation, num_inference_steps=2)),
        guidance=replace(p.guidance, zero123_weight=1.0, text_weight=1.0),
        **_tiny_geometry(p),
        polish=replace(p.polish, steps=4, render_size=32, batch_size=1, view_pool=4,
                       estimator=replace(p.polish.estimator, num_inference_steps=1)),
        texture=replace(p.texture, steps=4, render_size=32, view_pool=4, atlas_size=128, field=_tiny_field(p.texture.field),
                        chart_padding=2, pbr=replace(p.texture.pbr, views=4, render_size=32), unanchored=True),
    )


def tiny_preset() -> PipelinePreset:
    """Tiny models, CPU, a few steps per stage at low resolution: the whole chain in about a minute on a
    two-core CPU. For tests and the CPU demo; the result shows that everything runs, not a good asset."""
    return replace(shrink_to_tiny(standard_preset()),
                   description="tiny models on the CPU, seconds per stage (tests and demo)")


def _micro_field(f: FieldConfig) -> FieldConfig:
    """An 8-level, 2^14-entry hash grid with 32-wide MLPs: enough detail for 64 px views, fast on a CPU."""
    grid = replace(f.grid, n_levels=8, log2_hashmap_size=14, base_resolution=8, start_levels=8)
    return replace(f, grid=grid, hidden_dim=32)


def micro_preset() -> PipelinePreset:
    """The micro priors (backend/micro/: small models trained on renders of a procedural world) through the
    whole method on the CPU in under two minutes on two cores: the CPU demo, and the quality test that shows
    whether score distillation turns a prompt of that world into the right object. Every stage keeps the
    method's losses and priors; steps, grids and renders are cut to the priors' 64 px world."""
    p = shrink_to_tiny(standard_preset())
    nerf, neus, dmtet = p.nerf, p.neus, p.dmtet
    # Reference and guidance on every step of NeRF, NeuS and texture (alternate_every 0), where the GPU
    # presets alternate them as DreamCraft3D does: at these budgets (160, 80, 80 steps) halving the guidance
    # steps cost geometry in 3 runs of 4 (torus and cone, seeds 0 and 1: Chamfer 3.36 % against 3.09, IoU 0.811
    # against 0.829, colour ΔE 9.6 either way; BENCHMARKS.md, bench/micro_ablation.py --cheaper).
    every_step = {"alternate_every": 0}
    return replace(
        p, description="micro priors on the CPU, under two minutes (CPU demo, quality tests)",
        model_set="micro", preview_every=20, preview_size=64, base_color_only=True,
        # An artist's picture spans what the world's least spread-out shapes span of their bounding sphere
        # (MICRO_SILHOUETTE_SPAN, 0.74): at the sphere's full span the red cone came out 1.28 times its world
        # size, and flat (Chamfer 4.0 %, IoU 0.59, against 1.2 % and 0.885 at its size).
        reference=replace(p.reference, size=64, image_fill=MICRO_SILHOUETTE_SPAN,
                          generation=replace(p.reference.generation, num_inference_steps=20, square=True)),
        # Both priors at 0.2 (DreamCraft3D's configs: 0.1 each beside reference RGB 1000 and mask 100). At the tiny
        # preset's 1.0 they pull the silhouette off the reference (NeuS reference-mask MSE 0.10 against 0.012 at
        # 0.2, "a red cone", seed 0), and the object loses the shape the reference image shows.
        guidance=replace(p.guidance, zero123_weight=0.2, text_weight=0.2),
        nerf=replace(nerf, steps=160, resolution=replace(nerf.resolution, low=32, high=48, switch_at=0.5),
                     density=_micro_field(standard_preset().nerf.density), mesh_resolution=48,
                     # CPU only: compacting the occupied samples costs no wait there, and evaluating every sample
                     # made a NeRF render + backward 3-8 times slower (VolumeRenderConfig.empty_space)
                     render=replace(nerf.render, n_samples=32, occupancy_resolution=24, empty_space="compact"),
                     reference=replace(nerf.reference, resolution=48, **every_step), occupancy_warmup=32),
        neus=replace(neus, steps=80, resolution=replace(neus.resolution, low=40), sdf=_micro_field(standard_preset().neus.sdf),
                     render=replace(neus.render, n_samples=32, occupancy_resolution=24, empty_space="compact"),
                     init_steps=60, init_batch=4096,
                     init_resolution=48, mesh_resolution=48, eikonal_points=1024,
                     reference=replace(neus.reference, resolution=48, **every_step)),
        # The micro text prior never saw normal maps (Stable Diffusion has): its DMTet guidance sees colour only.
        dmtet=replace(dmtet, steps=60, resolution=replace(dmtet.resolution, low=64), grid_resolution=32, normal_steps_of_4=0,
                      color=_micro_field(standard_preset().dmtet.color), color_init_steps=40,
                      reference=replace(dmtet.reference, resolution=64)),
        polish=replace(p.polish, steps=20, render_size=64, batch_size=2, view_pool=8),
        texture=replace(p.texture, steps=80, render_size=64, view_pool=0, atlas_size=256, chart_padding=2,
                        field=_micro_field(standard_preset().texture.field), normal_map=False, **every_step),
    )


PRESETS: dict[str, Callable[[], PipelinePreset]] = {
    "tiny": tiny_preset,
    "micro": micro_preset,
    "draft": draft_preset,
    "standard": standard_preset,
    "high": high_preset,
    "refine": refine_preset,
}
"""Built-in presets by name (fresh instances each call)."""


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str, options: dict[str, Any] | None = None) -> PipelinePreset:
    """The named preset with a request's "stage.field" options applied; ValidationError for an
    unknown name, an unknown option or a value of the wrong type."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValidationError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return apply_options(PRESETS[name](), options or {})


def save_preset(preset: PipelinePreset, path: Path) -> Path:
    """Write a preset as plain JSON of its fields."""
    path = Path(path)
    path.write_text(json.dumps(to_json_dict(preset), indent=1, sort_keys=True))
    return path


def load_preset(path: Path) -> PipelinePreset:
    """Read a preset written by save_preset (missing fields keep the standard defaults)."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValidationError(f"{path} does not hold a preset (a JSON object of fields)")
    return from_json_dict(PipelinePreset, data)
