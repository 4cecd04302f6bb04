"""What the stages share: schedules, the reference view and its losses, typed renders, the
progress/cancel reporter, and normal shading. The step they share is in stages/step.py.

Every geometry stage step does the same three things (stages/nerf.py, neus.py, dmtet.py):
1. render the reference camera (when a reference view is given) and add the weighted
   RGB, mask and relative-depth losses against the reference image;
2. render a batch of sampled training views and add the guidance loss;
3. add the stage's regularisers, step the optimiser, report every loss term, check cancel.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config_fields import ranged, ranged_required
from ..guidance.base import ReferenceView
from ..render.cameras import CameraBatch
from ..schedules import Ramp

log = logging.getLogger(__name__)


@dataclass
class ResolutionSchedule:
    """Render size of training views: `low` pixels square until the fraction switch_at of the stage, then
    `high`."""

    low: int = ranged_required(8, 2048)
    """Image side in pixels before switch_at."""
    high: int | None = ranged(None, 8, 2048)
    """Image side from switch_at on; None keeps `low`."""
    switch_at: float = ranged(0.0, 0, 1)
    """Fraction of the stage (schedules.stage_progress) where the size switches to `high`."""

    def at(self, progress: float) -> int:
        """The render size at `progress` in [0, 1]."""
        return int(self.high if self.high is not None and progress >= self.switch_at else self.low)

    def final(self) -> int:
        """The size the stage ends with."""
        return int(self.low if self.high is None else self.high)


class StageReporter(Protocol):
    """The pipeline adapts its JobContext to this."""

    def progress(self, step: int, total: int, losses: dict[str, Tensor | float]) -> None:
        """Called after every step; `losses` may hold device tensors (0-dim, detached), which the reporter
        reads back only when it reports (StageProgress: every preset.report_every steps)."""
        ...

    def check_cancel(self) -> None: ...

    def watch(self, state: Any) -> None:
        """Called once, when the stage's state exists (NerfState, NeusState, DmtetState, PolishState,
        TextureState; updated in place as the stage runs), so that the caller can render previews of it
        from its own cameras while the stage runs."""
        ...


class LoggingReporter:
    """Reports to the log every `every` steps; never cancels (command line, tests)."""

    def __init__(self, stage: str, every: int = 20):
        self.stage = stage
        self.every = every
        self.last: dict[str, float] = {}

    def progress(self, step: int, total: int, losses: dict[str, Tensor | float]) -> None:
        self.last = losses
        if step % self.every == 0 or step == total:
            terms = " ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
            log.info("%s %d/%d %s", self.stage, step, total, terms)

    def check_cancel(self) -> None:
        return None

    def watch(self, state: Any) -> None:
        return None


@dataclass
class ReferenceWeights:
    """Weights of the reference-view losses."""

    rgb: Ramp
    """MSE between the masked rendered colour and the masked reference colour."""
    mask: Ramp
    """MSE between the rendered opacity and the reference mask."""
    depth: Ramp
    """1 - Pearson correlation of rendered and reference depth inside the mask."""
    resolution: int = ranged(64, 8, 2048)
    """The reference view is rendered at this width (height follows its aspect)."""
    normal: Ramp = field(default_factory=lambda: Ramp(0.0))
    """1 - cos(rendered, reference normal) inside the mask, in the reference camera's frame
    (DreamCraft3D systems/dreamcraft3d.py, loss "normal"; lambda_normal is 0.0 in all four of its configs
    dreamcraft3d-coarse-nerf / -coarse-neus / -geometry / -texture.yaml, so 0 here too). Above 0, the
    reference stage estimates the reference normals and the stage renders normals on the reference view."""
    views: Literal["mean", "sum", "sqrt"] = "sum"
    """How several reference pictures' losses add up (spec.views; picture_share gives each one's weight):
    "sum", each picture at the full weight a single picture has (DreamCraft3D's lambda_rgb / lambda_mask /
    lambda_depth_rel are per reference view: each picture is an exact observation, as its one picture is);
    "mean", over their number N, so that all of them weigh what one does against the guidance; "sqrt",
    each over √N, between the two (all N weigh √N pictures' worth: 1.41 for two, 1.73 for three), the
    weighting being measured over seeds against the other two in BENCHMARKS.md, "Several pictures, several
    cameras". Measured there at seed 0: the torus from 0° and 89° keeps its hole from above at 0.911
    summed against 0.866 averaged; the cone from 30° and 0° is the same either way. Three pictures of the
    torus summed lost it from above at seed 0 (0.79, NeRF 0.18) with sum and sqrt alike: not the weight but
    the NeRF surface's fixed density level (stages/nerf.py fit_iso_level), which cut the ring in two."""
    alternate_every: int = ranged(0, 0, 1000)
    """Which steps carry the reference losses and which the guidance (DreamCraft3D's `freq.ref_or_guidance`,
    systems/dreamcraft3d.py training_step): 0, both on every step ("accumulate", its geometry/DMTet stage);
    N >= 2, every N-th step is reference-only and the others guidance-only ("alternate" with n_ref = N: its
    coarse NeRF and NeuS stages and its texture stage use n_ref 2, so half their steps run no guidance).
    Jobs without a reference view run the guidance on every step (reference_or_guidance)."""

    def picture_share(self, n: int) -> float:
        """The weight of each of `n` pictures' reference losses (`views`): 1 ("sum"), 1/n ("mean"), 1/√n
        ("sqrt"); 1 for a single picture either way."""
        if self.views == "sum":
            return 1.0
        if self.views == "mean":
            return 1.0 / n
        return 1.0 / math.sqrt(n)


@dataclass
class StageRender:
    """What a stage's state renders from a batch of cameras (volume render or rasterised mesh)."""

    rgb: Tensor
    """[B,H,W,3] albedo over the stage's background."""
    opacity: Tensor
    """[B,H,W,1] coverage in [0,1]."""
    depth: Tensor | None = None
    """[B,H,W,1] camera z-depth, 0 on the background."""
    normal: Tensor | None = None
    """[B,H,W,3] world normals (opacity-weighted for volume renders), background 0."""
    orientation: Tensor | None = None
    """[B,H,W,1] per-ray Ref-NeRF orientation penalty (volume renders with normals)."""

    @classmethod
    def from_volume(cls, out: dict[str, Tensor]) -> StageRender:
        """From render.volume.render_volume's output."""
        return cls(out["rgb"], out["opacity"], out.get("depth"), out.get("normal"), out.get("orientation"))


@dataclass
class ScaledReference:
    """The reference camera and images at the size a stage renders its reference view at."""

    camera: CameraBatch
    rgb: Tensor
    """[1,H,W,3]"""
    mask: Tensor
    """[1,H,W,1]"""
    depth: Tensor | None
    """[1,H,W,1] relative depth, or None."""
    normal: Tensor | None = None
    """[1,H,W,3] unit camera-frame normals (zero where there is no estimate), or None."""

    def to(self, device: torch.device | str) -> ScaledReference:
        return ScaledReference(self.camera.to(device), self.rgb.to(device), self.mask.to(device),
                               None if self.depth is None else self.depth.to(device),
                               None if self.normal is None else self.normal.to(device))


def reference_at(reference: ReferenceView, width: int) -> ScaledReference:
    """The reference camera and images resized to `width` (area filtering); the projection is NDC-based,
    so the same matrices serve any image size of the same aspect."""
    h0, w0 = reference.rgb.shape[:2]
    height = max(1, round(width * h0 / w0))
    cam = reference.camera
    cam = CameraBatch(cam.c2w, cam.proj, width, height, cam.elevation_deg, cam.azimuth_deg,
                      cam.distance, cam.fovy_deg)

    def resize(img: Tensor) -> Tensor:
        if img.shape[:2] == (height, width):
            return img[None]
        return F.interpolate(img.permute(2, 0, 1)[None], size=(height, width), mode="area").permute(0, 2, 3, 1)

    depth = None if reference.depth is None else resize(reference.depth)
    normal = None if reference.normal is None else F.normalize(resize(reference.normal), dim=-1)
    return ScaledReference(cam, resize(reference.rgb), resize(reference.mask), depth, normal)


def scaled_references(reference: ReferenceView | None, width: int, device: torch.device | str
                      ) -> ScaledReference | list[ScaledReference] | None:
    """The stage's reference view at `width` on `device`; with several pictures (ReferenceView.more) a list of
    every one (StepLoss.add_reference weighs their losses by ReferenceWeights.views)."""
    if reference is None:
        return None
    if not reference.more:
        return reference_at(reference, width).to(device)
    return [reference_at(v, width).to(device) for v in reference.views()]


def masked_mean(x: Tensor, weight: Tensor) -> Tensor:
    """sum(w·x) / sum(w), 0 where the weights are all 0: a mean over a mask without indexing by it (a
    boolean index sizes its output by the mask's count, which makes the host wait for the GPU)."""
    return (x * weight).sum() / weight.sum().clamp_min(1e-12)


def pearson_depth_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """1 - corr(pred, target) over pixels with mask > 0.5 (scale and shift invariant); 0 with fewer than two
    such pixels. Written with the mask as weights, so the shapes stay fixed (no host sync)."""
    m = (mask[..., 0] > 0.5).to(pred.dtype).expand_as(pred[..., 0])
    p = (pred[..., 0] - masked_mean(pred[..., 0], m)) * m
    t = (target[..., 0] - masked_mean(target[..., 0], m)) * m
    loss = 1 - (p * t).sum() / (p.norm() * t.norm()).clamp(min=1e-8)
    return torch.where(m.sum() >= 2, loss, pred.sum() * 0)


def normals_to_camera(normal_world: Tensor, cameras: CameraBatch) -> Tensor:
    """[B,H,W,3] world normals -> the renderer's camera frame (+X right, +Y up, +Z towards the viewer):
    n_cam = Rᵀ n_world with R the rotation part of camera-to-world."""
    rot = cameras.c2w[:, :3, :3].to(normal_world.dtype)
    return torch.einsum("bij,bhwi->bhwj", rot, normal_world)


def reference_normal_loss(render_normal: Tensor, ref: ScaledReference) -> Tensor:
    """1 − mean cos(rendered, reference) over pixels inside the mask where the reference has an estimate
    (DreamCraft3D systems/dreamcraft3d.py: 1 - F.cosine_similarity(pred, gt).mean() inside gt_mask)."""
    if ref.normal is None:
        return render_normal.sum() * 0
    rendered = normals_to_camera(render_normal, ref.camera.to(render_normal.device))
    valid = ((ref.mask[..., 0] > 0.5) & (ref.normal.norm(dim=-1) > 0.5)).to(rendered.dtype).expand_as(rendered[..., 0])
    cos = F.cosine_similarity(rendered, ref.normal.expand_as(rendered), dim=-1, eps=1e-8)
    return torch.where(valid.sum() > 0, 1 - masked_mean(cos, valid), render_normal.sum() * 0)


def reference_losses(render: StageRender, ref: ScaledReference, weights: ReferenceWeights, progress: float
                     ) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted reference-view loss and its terms (detached 0-dim tensors, read back only when the stage
    reports), for a render at the reference camera, at `progress` (schedules.stage_progress) through the
    stage."""
    rgb_l = F.mse_loss(render.rgb * ref.mask, ref.rgb * ref.mask)
    mask_l = F.mse_loss(render.opacity, ref.mask)
    total = weights.rgb.at(progress) * rgb_l + weights.mask.at(progress) * mask_l
    terms = {"ref_rgb": rgb_l.detach(), "ref_mask": mask_l.detach()}
    w_depth = weights.depth.at(progress)
    if ref.depth is not None and w_depth > 0 and render.depth is not None:
        depth_l = pearson_depth_loss(render.depth, ref.depth, ref.mask)
        total = total + w_depth * depth_l
        terms["ref_depth"] = depth_l.detach()
    w_normal = weights.normal.at(progress)
    if ref.normal is not None and w_normal > 0 and render.normal is not None:
        normal_l = reference_normal_loss(render.normal, ref)
        total = total + w_normal * normal_l
        terms["ref_normal"] = normal_l.detach()
    return total, terms


def shade_normals(normal: Tensor, opacity: Tensor, background: float = 1.0) -> Tensor:
    """World normals [B,H,W,3] shown as colours (n+1)/2 over the background -> [B,H,W,3] in [0,1].
    `normal` may be opacity-weighted (volume renders); it is normalised where the pixel is covered."""
    n = F.normalize(normal, dim=-1)
    return (n + 1) * 0.5 * opacity + background * (1 - opacity)


def adam_groups(groups: list[tuple[list[torch.nn.Parameter], float]]) -> torch.optim.Adam:
    """Adam over (parameters, learning rate) groups, skipping empty ones. Fused (one kernel for every
    parameter, its step count kept on the device): the default for-each Adam reads each group's step count
    back with `.item()` on every step. The dry run's `meta` parameters have no fused kernel."""
    params = [{"params": p, "lr": lr} for p, lr in groups if p]
    on_meta = any(q.device.type == "meta" for g in params for q in g["params"])
    return torch.optim.Adam(params, eps=1e-15, fused=not on_meta)
