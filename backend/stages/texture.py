"""Texture stage: fixed geometry, a hash-grid colour field optimised by score distillation (DSD by
default), then baked into a UV atlas.

Per step: sample views, rasterise the fixed mesh, colour every visible surface point with the
field, composite over the background with the antialiased coverage, and hand the image to the
guidance (GuidanceInput, shading="albedo"). A finished low mesh (issue 30) comes with its normal map,
baked from the polished surface before this stage: most of its views are then lit through the map's
per-pixel normals (shading="lit", TextureConfig.lit_share), so the guidance sees the polished detail. With a reference view, an L1 loss on it is added:
    L = L_guidance + λ_ref · mean(erode(mask_ref) · |rgb − rgb_ref|)
as DreamCraft3D's texture stage does (threestudio/systems/dreamcraft3d.py, stage "texture": F.l1_loss on
the reference mask eroded by a 9×9 max-pool at 1024 px), at its weight relative to the guidance
(TextureConfig.reference_weight). A refine (texture or geometry mode) has no reference view: its guidance is
TextureConfig.unanchored_guidance, SDS at CFG 2, which holds the colours near the prior's where DSD's CFG
direction alone runs them into saturation.

The optimised field is baked into the mesh's maps by `texture_bake` (UV atlas, normal map, materials).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..capacity import DeviceCapacity, gather_rows, gather_static, scatter_rows
from ..config_fields import ranged
from ..geometry.fields import ColorField, FieldConfig
from ..geometry.hashgrid import HashGridConfig
from ..geometry.mesh import TriMesh
from ..geometry.metrics import sample_surface
from ..geometry.transitions import fit_color_field, vertex_color_function
from ..guidance.base import Guidance, GuidanceInput
from ..guidance.intrinsics import IntrinsicsConfig
from ..guidance.lora import LoraConfig
from ..guidance.score_distillation import ScoreDistillationConfig, TimestepSchedule
from ..guidance.zero123 import Zero123GuidanceConfig
from ..render.cameras import CameraBatch, ViewSampler
from ..render.normal_map import TangentSpaceNormals
from ..render.rasterize import MeshRasterizer
from ..schedules import Ramp, stage_progress
from .base import ReferenceView, StageReporter
from .step import reference_or_guidance, request_capacities, seeded_init

logger = logging.getLogger(__name__)

def _texture_guidance() -> ScoreDistillationConfig:
    # DSD on SD 2.1-base: the CFG direction at a moderate weight plus the variational (LoRA) direction,
    # timesteps annealed from the whole schedule towards the detail end over the first half of the stage.
    return ScoreDistillationConfig(
        objective="dsd", guidance_scale=7.5,
        timesteps=TimestepSchedule(t_range=(0.02, 0.98), t_range_end=(0.02, 0.5), anneal_until=0.5),
        lambda_cfg=Ramp(6.5), lambda_var=Ramp(1.0), lora=LoraConfig(rank=4, learning_rate=1e-4),
    )


def _unanchored_guidance() -> ScoreDistillationConfig:
    # A texture stage with no reference view (texture and geometry refines, masked or not): SDS at DreamCraft3D's
    # texture guidance scale (configs/dreamcraft3d-texture.yaml: guidance_scale 2.0, there for its bootstrapped
    # score, stable-diffusion-bsd-guidance), on the stage's timesteps.
    # DSD's variational direction ε(y) − ε_φ is zero until the LoRA ε_φ has learnt the renders (its adapter and
    # camera MLP start at zero: ε_φ = ε(y)), so early on DSD is its CFG direction ε(y) − ε(∅) alone, which has
    # no fixed point: "bluer" is always more "blue". With a reference view the L1 loss holds the colours; without
    # one a masked refine's colour reached the prior's blue in 20 steps, ran on into saturation and ended
    # anywhere by seed (BENCHMARKS.md, "Masked refine"). SDS's noise residual ε(y) − ε pulls the render towards
    # the prior's images, which gives the colour a fixed point; a low CFG scale keeps that near the prior's own.
    return ScoreDistillationConfig(
        objective="sds", guidance_scale=2.0,
        timesteps=TimestepSchedule(t_range=(0.02, 0.98), t_range_end=(0.02, 0.5), anneal_until=0.5),
    )


def _picture_guidance() -> Zero123GuidanceConfig:
    # DreamCraft3D configs/dreamcraft3d-texture.yaml keeps a view-conditioned prior for the texture stage
    # (guidance_3d "stable-zero123-guidance", guidance_scale 5.0, min/max_step_percent 0.2/0.5), commented out
    # there because every DreamCraft3D job has a prompt; ours is the prior of a job that has none.
    return Zero123GuidanceConfig(guidance_scale=5.0, timesteps=TimestepSchedule(t_range=(0.2, 0.5)))


def _texture_field() -> FieldConfig:
    # Colour only: all levels active from the start (the geometry is fixed, nothing to stage).
    return FieldConfig(grid=HashGridConfig(start_levels=16), hidden_dim=64, n_hidden_layers=1)


@dataclass
class MaterialBakeConfig:
    """The PBR maps baked beside the base colour (module docstring, "Materials")."""

    delit_base_color: bool = True
    """Base colour from the decomposed (de-lit) albedo instead of the colour field as it is."""
    roughness_metallic: bool = True
    """Bake a glTF metallic-roughness map (G roughness, B metallic) from the decomposition."""
    views: int = ranged(8, 1, 64)
    """Views of the textured mesh that are decomposed (azimuths evenly spaced, elevations alternating
    between the ends of the stage's elevation range)."""
    render_size: int = ranged(512, 16, 2048)
    """Side in pixels of the decomposed renders."""
    view_weight_power: float = ranged(2.0, 0, 16)
    """p in the fusion weight cos(normal, to-camera)^p: higher trusts the most frontal view more."""
    default_roughness: float = ranged(0.8, 0, 1)
    """Roughness of texels no view sees (and of the GLB's material without a map)."""
    default_metallic: float = ranged(0.0, 0, 1)
    """Metallic of texels no view sees."""
    intrinsics: IntrinsicsConfig = field(default_factory=IntrinsicsConfig)
    """How the intrinsic model runs."""

    @property
    def decomposes(self) -> bool:
        return self.delit_base_color or self.roughness_metallic


@dataclass
class TextureConfig:
    steps: int = ranged(5000, 1, 200_000)
    """Optimisation steps (DreamCraft3D's texture stage: 5000)."""
    lr: float = ranged(1e-2, 0, 1)
    """Adam learning rate of the colour field."""
    render_size: int = ranged(512, 16, 2048)
    """Side in pixels of the rendered training views (the VAE sees 512)."""
    batch_size: int = ranged(1, 1, 64)
    """Views per step."""
    guidance: ScoreDistillationConfig = field(default_factory=_texture_guidance)
    """Score distillation on the text-to-image prior: guidance.objective is dsd (the method), or
    sds/vsd/bsd/csd for the ablation, with its weights and schedules."""
    unanchored_guidance: ScoreDistillationConfig = dataclasses.field(default_factory=_unanchored_guidance)
    """The text prior's guidance where the stage has no reference view to hold its colours (a refine: texture
    or geometry mode, masked or not), in place of `guidance`. With only `guidance` (DSD at CFG 7.5) a masked
    refine's colour overshot the prior's and ended anywhere in saturation, by seed (BENCHMARKS.md, "Masked
    refine"). Used where `unanchored` is true."""
    unanchored: bool = False
    """Whether a stage with no reference view takes `unanchored_guidance` in place of `guidance`. On for the
    tiny and micro presets (presets.shrink_to_tiny), where it was measured; off for the GPU presets until a
    card measures it: there DSD's adapter learns the renders over hundreds of steps, which gives its
    variational term the fixed point it lacks at the micro budget, and SDS at a low CFG scale is known to come
    out soft on Stable Diffusion (DreamFusion needed CFG 100 for SDS; DreamCraft3D's scale 2 is for its
    bootstrapped score, not plain SDS)."""
    picture_guidance: Zero123GuidanceConfig = dataclasses.field(default_factory=_picture_guidance)
    """A job with a picture and no prompt: score distillation on the view-conditioned prior, conditioned on
    the picture, in place of `guidance` (the text prior on an empty prompt pulls every view towards a
    generic image: issue 29)."""
    field: FieldConfig = field(default_factory=_texture_field)
    """The hash-grid colour field."""
    elevation_range_deg: tuple[float, float] = ranged((-10.0, 45.0), -90, 90)
    """Orbit elevation of training views."""
    fovy_deg: float = ranged(20.0, 1, 170)
    """Vertical field of view of training views (Zero123's fixed 20°)."""
    camera_distance: float = ranged(3.8, 0.1, 100)
    """Distance of training views from the object centre (object radius 0.5)."""
    # DreamCraft3D configs/dreamcraft3d-texture.yaml: lambda_rgb 1000 on the L1 reference loss against
    # lambda_sd 0.01 on the guidance, whose loss is ½‖x − sg(x − g)‖² / B (stable_diffusion_bsd_guidance.py
    # loss_vsd), the same reparameterised form as ours (score_distillation.reparameterised_loss), which this
    # stage adds at weight 1: so λ_ref = 1000 / 0.01 = 1e5. The earlier weight 1 on a masked MSE left the
    # reference 1e4-1e5 times weaker than there and the guidance repainted the reference view.
    reference_weight: float = ranged(1e5, 0, 1e6)
    """λ_ref, weight of the L1 loss on the reference view, relative to the guidance at 1 (0 turns it off)."""
    reference_erosion: float = ranged(4 / 1024, 0, 0.25)
    """The reference mask is eroded by this fraction of the image width before the L1 loss, so that the
    silhouette's mixed pixels do not pull background into the texture (DreamCraft3D: 4 px at 1024)."""
    inherit_colours: bool = False
    """Start the colour field from the mesh's vertex colours (the geometry stages' albedo, or the artist's),
    regressed onto them for `inherit_steps` steps, and sample the guidance's timesteps from
    `inherited_timesteps` (DreamCraft3D's texture stage inherits the geometry's colours,
    configs/dreamcraft3d-texture.yaml `geometry_convert_inherit_texture: true`, and anneals t only from 0.5
    down: `min_step_percent: 0.05`, `max_step_percent: [0, 0.5, 0.2, 5000]`). Off: the field starts from
    its random initialisation and the guidance's own schedule (issue 29; measured in BENCHMARKS.md). A mesh
    without vertex colours always starts from the random field."""
    inherit_steps: int = ranged(200, 1, 100_000)
    """Regression steps onto the vertex colours (batches of 4096 surface points) with inherit_colours."""
    inherited_timesteps: TimestepSchedule = dataclasses.field(  # `field` is the colour field here
        default_factory=lambda: TimestepSchedule(t_range=(0.05, 0.5), t_range_end=(0.05, 0.2), anneal_until=1.0))
    """The guidance's timestep schedule when the colours are inherited (DreamCraft3D's texture stage)."""
    alternate_every: int = ranged(2, 0, 1000)
    """0: the reference loss and the guidance on every step; N >= 2: every N-th step reference-only, the
    others guidance-only (DreamCraft3D configs/dreamcraft3d-texture.yaml: freq.ref_or_guidance "alternate",
    n_ref 2; stages/base.py ReferenceWeights.alternate_every)."""
    background: tuple[float, float, float] = ranged((1.0, 1.0, 1.0), 0, 1)
    """Background colour behind the object in training renders."""
    view_pool: int = ranged(0, 0, 4096)
    """0: fresh random views every step; N > 0: rasterise N random views of the fixed mesh once and draw
    every step's views from them (the geometry does not change, so on the CPU this saves the rasteriser)."""
    atlas_size: int = ranged(1024, 16, 8192)
    """Side of the baked texture atlas in texels."""
    chart_padding: int = ranged(4, 0, 64)
    """Gap between UV charts in texels (room for the dilation)."""
    dilation_texels: int = ranged(0, 0, 8192)
    """How far, in texels, the colours are dilated beyond the charts; 0 fills the whole atlas."""
    normal_map: bool = True
    """Also bake a tangent-space normal map from the detailed geometry (the DMTet/polish mesh)."""
    normal_ray_distance: float = ranged(0.03, 0.0, 1.0)
    """The cage of a finished (game-ready) low mesh's normal map: how far along the low mesh's normal, either
    way, the polished surface is searched for each texel (object frame, radius 0.5). The remeshed surface
    lies within about 0.02 of the bounding-box diagonal of the polished one (Hausdorff, BENCHMARKS.md): on the
    micro cone and lamp at 3000 faces 99.99 % and 99.98 % of the texels find it within 0.03 (99.8 % and 98.0 %
    within 0.01); a texel whose ray finds nothing takes its nearest polished vertices' normals."""
    # Lit guidance views of a finished low mesh (issue 30), after threestudio's textured-mesh stage
    # (configs/magic3d-refine-sd.yaml: material "diffuse-with-point-light-material", ambient_only_steps 0,
    # soft_shading true; models/materials/diffuse_with_point_light_material.py: diffuse_prob 0.75, the rest
    # albedo; data/uncond.py light_sample_strategy "magic3d": the light within 60° of the direction to the
    # camera). Its "textureless" renders are left out: on a fixed mesh they carry no gradient to the colours.
    # DreamCraft3D's texture stage renders albedo only ("no-material"): a mesh without a normal map keeps that.
    lit_share: float = ranged(0.75, 0, 1)
    """With a normal map (a finished low mesh's, baked from the polished surface before texturing): the share of
    guidance steps whose views are lit, albedo x (ambient + diffuse x max(0, n.l)) with n the map's normal per
    pixel, so the guidance sees the polished detail; the others see the albedo (threestudio's diffuse_prob).
    The reference-view loss always compares the albedo."""
    light_cone_deg: float = ranged(60.0, 0, 90)
    """A lit view's light comes from within this angle of the direction to its camera (uniform in angle and
    azimuth about it), a directional light."""
    light_strength: tuple[float, float] = ranged((0.0, 1.0), 0, 1)
    """The diffuse light's share of a lit view, drawn uniformly per view; the ambient is the rest, so a normal
    facing the light shows the albedo itself (threestudio's soft_shading)."""
    simplify_to_faces: int = ranged(0, 0, 4_000_000)
    """Decimate the mesh to about this many triangles before texturing (0 = keep it). With normal_map the
    detail the decimation removes comes back in the normal map; texture-only jobs always keep the input."""
    pbr: MaterialBakeConfig = dataclasses.field(default_factory=MaterialBakeConfig)  # `field` is a field here
    """De-lit base colour and the metallic-roughness map (the preset's base_color_only turns all maps off)."""

    @property
    def dilation(self) -> int | None:
        """dilation_texels as the bakes take it (bake.dilate): None fills the whole atlas."""
        return self.dilation_texels or None


@dataclass
class TextureState:
    """The texture stage's optimised state: the colour field over a fixed mesh."""

    color_field: ColorField
    mesh: TriMesh

    @torch.no_grad()
    def colors_at(self, points: np.ndarray) -> np.ndarray:
        """points [N,3] (object frame) -> colours [N,3] in [0,1]: the bake's colour function."""
        p = torch.as_tensor(points, dtype=torch.float32, device=self.mesh.device)
        return self.color_field.color(p).float().cpu().numpy()

    def state_dict(self) -> dict:
        return {"field": self.color_field.state_dict(), "active_levels": self.color_field.encoding.active_levels}

    @classmethod
    def from_state_dict(cls, cfg: TextureConfig, mesh: TriMesh, state: dict) -> TextureState:
        color_field = ColorField(cfg.field).to(mesh.device)
        color_field.load_state_dict(state["field"])
        color_field.encoding.active_levels = int(state["active_levels"])
        return cls(color_field, mesh)


@dataclass
class SurfaceViews:
    """The fixed mesh rasterised at a batch of cameras: all that colouring it needs."""

    cameras: CameraBatch
    world_pos: Tensor
    """[B,H,W,3] surface point per pixel (0 on the background)."""
    foreground: Tensor
    """[B,H,W] bool: pixel centres on the mesh."""
    opacity: Tensor
    """[B,H,W,1] antialiased coverage in [0,1]."""
    normal: Tensor | None = None
    """[B,H,W,3] the normal map's world normal per pixel (0 on the background) when the views were made with
    one: what lit views are shaded with."""

    @classmethod
    @torch.no_grad()
    def rasterize(cls, mesh: TriMesh, cameras: CameraBatch, rasterizer: MeshRasterizer,
                  normals: TangentSpaceNormals | None = None) -> SurfaceViews:
        raster = rasterizer.rasterize(mesh, cameras)
        normal = None if normals is None else normals.world_normals(raster.tri_id, raster.bary)
        return cls(cameras, raster.world_pos.detach(), raster.foreground.squeeze(-1),
                   raster.mask.detach().clamp(0.0, 1.0), normal)

    def __getitem__(self, idx: Tensor) -> SurfaceViews:
        return SurfaceViews(self.cameras[idx], self.world_pos[idx], self.foreground[idx], self.opacity[idx],
                            None if self.normal is None else self.normal[idx])


@dataclass
class Lights:
    """One directional light per view of a lit batch."""

    direction: Tensor
    """[B,3] unit vectors towards the light (world)."""
    strength: Tensor
    """[B] the diffuse light's share; the ambient is 1 - strength."""

    def shade(self, normal: Tensor) -> Tensor:
        """[B,H,W,1] ambient + diffuse x max(0, n.l) at world normals [B,H,W,3]."""
        s = self.strength.view(-1, 1, 1, 1)
        cos = (normal * self.direction.view(-1, 1, 1, 3)).sum(-1, keepdim=True).clamp_min(0.0)
        return (1.0 - s) + s * cos


def draw_lights(cfg: TextureConfig, cameras: CameraBatch, generator: torch.Generator) -> Lights:
    """A light per view within cfg.light_cone_deg of the direction from the object's centre to the camera,
    its diffuse share drawn from cfg.light_strength (TextureConfig, "Lit guidance views")."""
    b, dev = cameras.batch_size, cameras.device
    z = torch.nn.functional.normalize(cameras.c2w[:, :3, 3].float().cpu(), dim=-1)
    x = torch.stack([z[:, 1], -z[:, 0], torch.zeros_like(z[:, 0])], -1)
    x = torch.where(x.norm(dim=-1, keepdim=True) < 1e-6, torch.tensor([1.0, 0.0, 0.0]), x)  # a camera overhead
    x = torch.nn.functional.normalize(x, dim=-1)
    y = torch.cross(z, x, dim=-1)
    angle = torch.rand(b, generator=generator) * math.radians(cfg.light_cone_deg)
    azimuth = (torch.rand(b, generator=generator) * 2 - 1) * math.pi
    direction = (torch.cos(angle)[:, None] * z + torch.sin(angle)[:, None] * (
        torch.cos(azimuth)[:, None] * x + torch.sin(azimuth)[:, None] * y))
    lo, hi = cfg.light_strength
    strength = lo + (hi - lo) * torch.rand(b, generator=generator)
    return Lights(direction.to(dev), strength.to(dev))


def inherits_colours(cfg: TextureConfig, mesh: TriMesh) -> bool:
    """Whether the stage starts from the mesh's colours (TextureConfig.inherit_colours)."""
    return cfg.inherit_colours and mesh.vertex_colors is not None


def covered_pixels(pool: SurfaceViews | None, batch_size: int) -> DeviceCapacity:
    """The capacity of the covered pixels of a training batch (shade_albedo): with a view pool the most that
    `batch_size` of its views can cover (it never needs to grow); without one unknown until the first
    report, then 1.5 x the most covered seen (it only grows)."""
    if pool is None:
        # grows only: the mesh is fixed, so the most a view covers is soon seen, and a capacity that shrank
        # after a window of small views would drop pixels of the next large one
        return DeviceCapacity("covered pixels of a training batch", headroom=1.5, shrinks=False)
    # views are drawn with replacement: a batch may be the most covered view batch_size times
    most = batch_size * int(pool.foreground.flatten(1).sum(1).max())  # read back once, before the first step
    return DeviceCapacity("covered pixels of a training batch", headroom=1.0, capacity=max(most, 1),
                          shrinks=False)


def shade_albedo(color_field: ColorField, views: SurfaceViews, background: Tensor,
                 covered: DeviceCapacity | None = None, lights: Lights | None = None) -> Tensor:
    """The colour field on the surface, composited over the background -> rgb [B,H,W,3]; with `lights` (and
    views made with a normal map) the colours lit per pixel by the map's normals (Lights.shade).

    With `covered`, the covered pixels are gathered into a buffer of its capacity (torch.nonzero_static)
    and only they are evaluated; their count stays on the device for the stage to read back at reporting
    steps (backend/capacity.py), so the host never waits. Without it (or before the capacity is known) the
    field is evaluated at every pixel and the background's colours are dropped, B·H·W evaluations where a
    sphere of the object's radius (0.5) covers 44 % of a training view (20°, distance 3.8)."""
    fg, pos, opacity = views.foreground.unsqueeze(-1), views.world_pos, views.opacity
    flat = pos.reshape(-1, 3)
    n = flat.shape[0]
    size = n if covered is None else covered.size(n)
    if size < n:
        idx, count = gather_static(views.foreground.reshape(-1), size)
        covered.track(count)
        (covered_pos,) = gather_rows(idx, n, flat)
        # covered pixels past the capacity stay 0
        rgb = scatter_rows(idx, color_field.color(covered_pos).to(flat.dtype), n).reshape(pos.shape)
    else:
        if covered is not None:
            covered.track(views.foreground.sum())
        rgb = torch.where(fg, color_field.color(flat).reshape(pos.shape), 0.0)
    if lights is not None and views.normal is not None:
        rgb = rgb * lights.shade(views.normal)
    # Pixels only partly covered at the silhouette take the colour of their nearest covered neighbour:
    # a 3x3 max-pool of covered colours is enough for the one-pixel antialiasing band.
    partial = (opacity > 0) & ~fg
    spread = torch.nn.functional.max_pool2d(rgb.permute(0, 3, 1, 2), 3, stride=1, padding=1).permute(0, 2, 3, 1)
    rgb = torch.where(partial, spread, rgb)
    return rgb * opacity + background * (1.0 - opacity)


@dataclass
class ReferenceTarget:
    """The reference view as the texture stage compares with it: the fixed mesh seen from the reference
    camera, and the reference image and mask there."""

    views: SurfaceViews
    rgb: Tensor
    """[1,H,W,3]"""
    mask: Tensor
    """[1,H,W,1]"""

    @classmethod
    def build(cls, reference: ReferenceView, mesh: TriMesh, rasterizer: MeshRasterizer,
              device: torch.device | str, erosion: float = 0.0) -> ReferenceTarget:
        """`erosion`: how far the mask is eroded, as a fraction of the image width."""
        rgb = reference.rgb[None].to(device)
        mask = torch.ones_like(rgb[..., :1]) if reference.mask is None else reference.mask[None].to(device)
        return cls(SurfaceViews.rasterize(mesh, reference.camera.to(device), rasterizer), rgb,
                   erode_mask(mask, round(erosion * rgb.shape[2])))

    def loss(self, color_field: ColorField, background: Tensor) -> Tensor:
        """mean(mask · |rgb − rgb_ref|) at the reference camera, `mask` the eroded reference mask."""
        return (self.mask * (shade_albedo(color_field, self.views, background) - self.rgb).abs()).mean()


def erode_mask(mask: Tensor, radius: int) -> Tensor:
    """[B,H,W,1] mask eroded by `radius` pixels: 1 − maxpool(1 − mask) over a (2r+1)² window, as DreamCraft3D's
    texture stage makes its `grow_mask`."""
    if radius <= 0:
        return mask
    background = torch.nn.functional.max_pool2d((1 - mask).permute(0, 3, 1, 2), 2 * radius + 1, 1, radius)
    return (1 - background).permute(0, 2, 3, 1)


LIGHT_SEED_OFFSET = 0x11697
"""The lights of lit views are drawn from a generator of their own, seeded with the stage generator's seed plus
this, so that lighting the views leaves the views themselves (drawn from the stage's generator) unchanged."""


class GuidanceViews:
    """The texture stage's training views of the fixed mesh: drawn from a pool rasterised once or afresh every
    step, and what the guidance sees of them (the albedo, or with a normal map a lit view at cfg.lit_share)."""

    def __init__(self, cfg: TextureConfig, mesh: TriMesh, rasterizer: MeshRasterizer, generator: torch.Generator | None,
                 normal_map: np.ndarray | None = None):
        self.cfg, self.mesh, self.rasterizer, self.generator = cfg, mesh, rasterizer, generator
        self.device = mesh.device
        self.normals = None if normal_map is None else TangentSpaceNormals.of(mesh, normal_map)
        seed = LIGHT_SEED_OFFSET + (0 if generator is None else generator.initial_seed())
        self.light_generator = torch.Generator().manual_seed(seed % 2**63)
        self.sampler = ViewSampler(elevation_range=cfg.elevation_range_deg,
                                   distance_range=(cfg.camera_distance,) * 2, fovy_range=(cfg.fovy_deg, cfg.fovy_deg))
        self.pool = None
        if cfg.view_pool > 0:
            cameras = self.sampler.sample(cfg.view_pool, cfg.render_size, cfg.render_size, generator, self.device)
            self.pool = SurfaceViews.rasterize(mesh, cameras, rasterizer, self.normals)

    def draw(self) -> SurfaceViews:
        """A batch of views: from the pool, or rasterised afresh."""
        cfg = self.cfg
        if self.pool is not None:
            return self.pool[torch.randint(0, cfg.view_pool, (cfg.batch_size,), generator=self.generator).to(self.device)]
        cameras = self.sampler.sample(cfg.batch_size, cfg.render_size, cfg.render_size, self.generator, self.device)
        return SurfaceViews.rasterize(self.mesh, cameras, self.rasterizer, self.normals)

    def lights(self, views: SurfaceViews) -> Lights | None:
        """The batch's lights when it is to be lit (always drawn with a normal map, so that every step draws
        alike), else None."""
        if self.normals is None:
            return None
        lit = float(torch.rand((), generator=self.light_generator)) < self.cfg.lit_share
        lights = draw_lights(self.cfg, views.cameras, self.light_generator)
        return lights if lit else None

    def guidance_input(self, color_field: ColorField, background: Tensor, covered: DeviceCapacity, step: int
                       ) -> GuidanceInput:
        views = self.draw()
        lights = self.lights(views)
        rgb = shade_albedo(color_field, views, background, covered, lights)
        return GuidanceInput(rgb=rgb, opacity=views.opacity, cameras=views.cameras,
                             shading="albedo" if lights is None else "lit", step=step, total_steps=self.cfg.steps)


def run_texture(cfg: TextureConfig, mesh: TriMesh, guidance: Guidance, reference: ReferenceView | None,
                reporter: StageReporter, *, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu", rasterizer: MeshRasterizer | None = None,
                normal_map: np.ndarray | None = None) -> TextureState:
    """Optimise a colour field on `mesh` (object frame, radius 0.5), with the geometry stages' signature.

    With a reference view (and cfg.reference_weight > 0) the reference-view RGB loss is added. With
    `normal_map` (tangent space on mesh.uvs: a finished low mesh's, baked from the polished surface) the
    guidance sees lit views at cfg.lit_share (GuidanceViews); the reference loss compares the albedo."""
    rasterizer = rasterizer or MeshRasterizer()
    mesh = mesh.detach().to(device)
    with seeded_init(generator):  # the field's initial tables come from the job's generator
        color_field = ColorField(cfg.field)
    color_field = color_field.to(device)
    if inherits_colours(cfg, mesh):
        # the vertices and area-uniform points on the faces, coloured by the nearest vertex
        on_faces = torch.as_tensor(sample_surface(mesh, 8192, generator)[0], dtype=mesh.vertices.dtype,
                                   device=mesh.device)
        fit_color_field(color_field, vertex_color_function(mesh), torch.cat([mesh.vertices.detach(), on_faces]),
                        steps=cfg.inherit_steps, batch=4096, lr=cfg.lr, generator=generator or torch.Generator())
    # fused: one kernel per step, step count on the parameters' device. The default Adam reads its step count
    # (.item()) every step; that count is a CPU tensor, so no device sync, but the sync counter cannot tell.
    optimiser = torch.optim.Adam(color_field.parameters(), lr=cfg.lr, eps=1e-15, fused=True)
    background = torch.tensor(cfg.background, dtype=torch.float32, device=device)
    targets: list[ReferenceTarget] = []
    if reference is not None and cfg.reference_weight > 0:  # every picture of a multi-view request
        targets = [ReferenceTarget.build(v, mesh, rasterizer, device, cfg.reference_erosion) for v in reference.views()]
    views = GuidanceViews(cfg, mesh, rasterizer, generator, normal_map)
    state = TextureState(color_field, mesh)
    reporter.watch(state)
    # the field runs on the covered pixels only, gathered into a fixed capacity (shade_albedo): from a view
    # pool the most a batch can cover is known before the first step (one read-back here), otherwise the
    # capacity follows the largest coverage read back at reporting steps
    covered = covered_pixels(views.pool, cfg.batch_size)
    report: dict[str, Tensor | float] = {}
    for step in range(cfg.steps):
        reporter.check_cancel()
        color_field.update_progress(stage_progress(step, cfg.steps))
        do_reference, do_guidance = reference_or_guidance(step, cfg.alternate_every, bool(targets))
        total = torch.zeros((), device=device)
        # 0-dim device tensors, the latest of each term: the reporter reads them back at its reporting steps only
        if do_guidance:
            out = guidance(views.guidance_input(color_field, background, covered, step))
            total = total + out.loss
            report["guidance"] = out.loss.detach()
            report.update({f"guidance_{k}": v for k, v in out.diagnostics.items()})
        if do_reference:
            # several pictures: their mean (λ_ref at 1e5 already holds each pixel of every picture to it)
            ref_loss = sum(t.loss(color_field, background) for t in targets) / len(targets)
            total = total + cfg.reference_weight * ref_loss
            report["reference_rgb"] = ref_loss.detach()
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in color_field.parameters()
                                   if p.grad is not None))
        optimiser.step()
        report["total"] = total.detach()
        report["grad_norm"] = grad_norm
        request_capacities(reporter, step, cfg.steps, [covered])
        reporter.progress(step + 1, cfg.steps, dict(report))
    return state
