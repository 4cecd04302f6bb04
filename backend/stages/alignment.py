"""Where an artist's picture really puts its object: a shift and scale of the reference view, learnt with the
first geometry stage (issue 29).

A picture is recentred on its silhouette's bounding box (stages/reference.py, DreamCraft3D's
preprocess_image.py), while every prior judges views of an object centred on the origin of its frame. The
two agree for a picture taken from the side; from above they do not: a cone seen from 30° has its base's
near rim at the bottom of its silhouette and only its apex at the top, so the box's centre lies below where
the object's centre projects, and the box's longer side spans more of the bounding sphere than from the
side. Measured with the micro priors (bench/robustness_grid.py): the red cone's picture from 30°, recentred,
sits 6 px of 64 off and 0.91 times the size the object has at the reference camera, and the chain made a
cylinder (Chamfer 7.8 %, IoU 0.49); the same picture framed exactly as the object projects made the cone
(1.2 %, 0.89).

So NeRF compares its render of the reference view with the picture moved by (tx, ty) and scaled by s about
its centre, and learns (tx, ty, log s) with the field, within bounds (|t| ≤ max_shift of the image's half
side, |log s| ≤ max_log_scale): the priors keep the object centred and at the size they know, the
reference loss moves the picture onto it. The stages after NeRF take the picture as NeRF aligned it.

Measured at the micro preset's 160 NeRF steps it did not find the framing (the cone from 30° stayed a
cylinder, 7.9 %; BENCHMARKS.md, "The right object at any seed and camera"), so it is off in every preset:
an instrument for the next attempt (a longer warm-up on the silhouette alone, a larger step), not a fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config_fields import ranged
from ..guidance.base import ReferenceView
from .base import ScaledReference


@dataclass
class AlignmentConfig:
    enabled: bool = False
    """Learn the picture's shift and scale in the NeRF stage (jobs with an artist's picture only; a generated
    reference is drawn centred as the priors draw every view)."""
    max_shift: float = ranged(0.3, 0.0, 1.0)
    """Largest shift, as a fraction of the image's half side (normalised device coordinates)."""
    max_log_scale: float = ranged(0.2, 0.0, 1.0)
    """Largest |log s| (0.2: from 0.82 to 1.22 times)."""
    lr: float = ranged(1e-2, 0.0, 1.0)
    """Adam learning rate of the three raw parameters."""


class ReferenceAlignment(torch.nn.Module):
    """(tx, ty, log s) = bounds · tanh(raw): the warp that moves the reference picture onto the object."""

    def __init__(self, cfg: AlignmentConfig, raw: Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        self.raw = torch.nn.Parameter(torch.zeros(3) if raw is None else raw.detach().clone().float())

    def shift_scale(self) -> tuple[Tensor, Tensor]:
        """(t [2] in normalised coordinates, s scalar)."""
        t = self.cfg.max_shift * torch.tanh(self.raw[:2])
        s = torch.exp(self.cfg.max_log_scale * torch.tanh(self.raw[2]))
        return t, s

    def warp(self, image: Tensor, fill: float) -> Tensor:
        """[B,H,W,C] -> the same moved by t and scaled by s about the centre; `fill` where nothing maps."""
        t, s = self.shift_scale()
        theta = torch.zeros(1, 2, 3, device=image.device, dtype=image.dtype)
        theta[0, 0, 0] = theta[0, 1, 1] = 1 / s
        theta[0, :, 2] = -t / s  # output p samples the input at (p - t) / s
        x = image.permute(0, 3, 1, 2) - fill
        grid = F.affine_grid(theta.expand(x.shape[0], -1, -1), list(x.shape), align_corners=False)
        return (F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
                ).permute(0, 2, 3, 1)

    def apply(self, ref: ScaledReference) -> ScaledReference:
        """The reference's images warped (colour over white, mask, depth and normals over nothing)."""
        depth = None if ref.depth is None else self.warp(ref.depth, 0.0)
        normal = None if ref.normal is None else self.warp(ref.normal, 0.0)
        return ScaledReference(ref.camera, self.warp(ref.rgb, 1.0), self.warp(ref.mask, 0.0), depth, normal)

    @torch.no_grad()
    def apply_to_view(self, view: ReferenceView) -> ReferenceView:
        """The stage's reference view (full size) as this alignment sees it, for the stages after NeRF."""
        def one(img: Tensor | None, fill: float) -> Tensor | None:
            return None if img is None else self.warp(img[None].to(self.raw.device), fill)[0].to(img.device)

        normal = one(view.normal, 0.0)
        if normal is not None:
            normal = F.normalize(normal, dim=-1) * (normal.norm(dim=-1, keepdim=True) > 0.5)
        return dataclasses.replace(view, rgb=one(view.rgb, 1.0), mask=one(view.mask, 0.0),
                                   depth=one(view.depth, 0.0), normal=normal)
