"""Progress and previews of a running stage.

`StageProgress` is the StageReporter a stage reports to: it forwards progress to the job, checks
cancel, and every `every` steps attaches a preview PNG rendered by `preview` from the state the stage
handed to `watch`. Previews go round the request's camera rig, one camera each (`rig_camera`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import bake
from ..geometry.mesh import TriMesh
from ..pipeline_api import JobContext
from ..render.cameras import CameraBatch
from ..render.rasterize import MeshRasterizer

PreviewFn = Callable[[Any, int], bytes | None]
"""(the watched stage state, step) -> a preview PNG, or None when there is nothing to show yet."""


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


@torch.no_grad()
def render_state(state: Any, camera: CameraBatch) -> bytes:
    """Preview of a geometry stage's state (NerfState, NeusState, DmtetState): its own render, albedo
    over a neutral grey background."""
    out = state.render(camera)
    alpha = out.opacity[0].clamp(0, 1)
    image = out.rgb[0].clamp(0, 1) * alpha + 0.25 * (1 - alpha)
    return bake.encode_png(image.float().cpu().numpy())


def rig_camera(cameras: list[CameraBatch], step: int, every: int) -> CameraBatch:
    """The rig's camera for the preview at `step`: previews go round the rig, one camera each."""
    return cameras[step // max(every, 1) % len(cameras)]


class StageProgress:
    """StageReporter for one stage of a job (module docstring)."""

    def __init__(self, ctx: JobContext, stage: str, every: int, cameras: list[CameraBatch],
                 device: torch.device | str = "cpu"):
        self.ctx = ctx
        self.stage = stage
        self.every = every
        self.cameras = cameras
        self.device = device
        self.preview: PreviewFn | None = None
        """Set by the stage's runner; None sends no previews."""
        self.state: Any = None
        """What the running stage handed to `watch` (its state, updated in place as it optimises)."""

    def progress(self, step: int, total: int, losses: dict[str, float] | None = None,
                 preview_png: bytes | None = None) -> None:
        png = preview_png
        if png is None and self.wants_preview(step, total):
            png = self.preview(self.state, step)  # type: ignore[misc]  # wants_preview checked it is set
        clean = {k: float(v) for k, v in (losses or {}).items() if math.isfinite(float(v))}
        self.ctx.progress(self.stage, int(step), int(total), clean, png)

    def wants_preview(self, step: int, total: int) -> bool:
        return (self.preview is not None and self.state is not None and self.every > 0
                and (step % self.every == 0 or step == total))

    def camera(self, step: int) -> CameraBatch:
        """The preview camera for `step`, on the stage's device."""
        return rig_camera(self.cameras, step, self.every).to(self.device)

    def check_cancel(self) -> None:
        self.ctx.check_cancel()

    def watch(self, state: Any) -> None:
        self.state = state
