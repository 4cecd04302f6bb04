"""Progress and previews of a running stage.

`StageProgress` is the StageReporter a stage reports to: it forwards progress to the job, checks
cancel, and every `every` steps attaches a preview PNG rendered by `preview` from the state the stage
handed to `watch`. Previews go round the request's camera rig, one camera each (`rig_camera`).

Stages call `progress` after every step with their losses still on the device. Only every `report_every`
steps (and at the first and last step, and with a preview) are they read back, and then without
blocking the next step: one stacked copy into pinned host memory and a CUDA event (`LossReadback`); the
report goes to the job once the copy has landed, at a later step's call or at the stage's last step.
So a steady-state step never makes the host wait for the GPU (issue 28).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Mapping
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


class LossReadback:
    """One report's loss values on their way to the host: the device tensors stacked and copied into pinned
    memory without blocking, with a CUDA event that says when the copy has landed. On the CPU the values
    are there at once; on `meta` (the dry run) there are none (NaN, dropped from the report)."""

    def __init__(self, step: int, total: int, losses: Mapping[str, Tensor | float], png: bytes | None):
        self.step, self.total, self.png = step, total, png
        self.floats = {k: float(v) for k, v in losses.items() if not isinstance(v, Tensor)}
        self.names = [k for k, v in losses.items() if isinstance(v, Tensor)]
        self.event: Any = None
        self.host: Tensor | None = None
        if not self.names:
            return
        tensors = [losses[k] for k in self.names]
        device = tensors[0].device  # type: ignore[union-attr]
        stacked = torch.stack([t.detach().to(device, torch.float32).reshape(()) for t in tensors])  # type: ignore[union-attr]
        if device.type == "cuda":
            self.host = torch.empty(stacked.shape, dtype=torch.float32, pin_memory=True)
            self.host.copy_(stacked, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        elif device.type != "meta":
            self.host = stacked

    def ready(self) -> bool:
        """Whether the copy has landed (never waits)."""
        return self.event is None or bool(self.event.query())

    def values(self) -> dict[str, float]:
        """The report's finite values (waits for the copy if it has not landed)."""
        if self.event is not None:
            self.event.synchronize()
        read = dict(zip(self.names, self.host.tolist())) if self.host is not None else {}
        return {k: v for k, v in {**read, **self.floats}.items() if math.isfinite(v)}


class StageProgress:
    """StageReporter for one stage of a job (module docstring)."""

    def __init__(self, ctx: JobContext, stage: str, every: int, cameras: list[CameraBatch],
                 device: torch.device | str = "cpu", report_every: int = 1):
        self.ctx = ctx
        self.stage = stage
        self.every = every
        self.report_every = max(int(report_every), 1)
        self.cameras = cameras
        self.device = device
        self.preview: PreviewFn | None = None
        """Set by the stage's runner; None sends no previews."""
        self.state: Any = None
        """What the running stage handed to `watch` (its state, updated in place as it optimises)."""
        self._pending: collections.deque[LossReadback] = collections.deque()

    def progress(self, step: int, total: int, losses: Mapping[str, Tensor | float] | None = None,
                 preview_png: bytes | None = None) -> None:
        png = preview_png
        if png is None and self.wants_preview(step, total):
            png = self.preview(self.state, step)  # type: ignore[misc]  # wants_preview checked it is set
        reported = png is not None or self.reports(step, total)
        if reported:
            self._pending.append(LossReadback(int(step), int(total), losses or {}, png))
        self._send(wait=step >= total)
        step_end = getattr(self.ctx, "step_end", None)  # an instrument's hook (backend/host_syncs.py)
        if step_end is not None:
            step_end(self.stage, int(step), int(total), reported)

    def reports(self, step: int, total: int) -> bool:
        """Whether `step` (1-based) reports its losses: the first, every report_every-th and the last."""
        return step <= 1 or step >= total or step % self.report_every == 0

    def _send(self, wait: bool) -> None:
        """Hand the job every report whose values have landed, in order (all of them with `wait`)."""
        while self._pending and (wait or self._pending[0].ready()):
            r = self._pending.popleft()
            self.ctx.progress(self.stage, r.step, r.total, r.values(), r.png)

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
