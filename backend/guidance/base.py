"""One interface for every source of guidance: score distillation objectives
(SDS, VSD, BSD, CSD, DSD), the view-conditioned prior, and the oracle that
stands in for them in tests and benchmarks.

A Guidance takes what a stage rendered at a batch of cameras and returns a
scalar loss whose gradient flows into the render, plus diagnostics (e.g.
"grad_norm", "t") that go into progress messages. A step never reads a value
back from the device (issue 28): diagnostics computed on the device stay
detached 0-dim tensors, read at reporting steps, and the per-step random draws
come from a generator on the device (`step_generator`). The reference view that
the stages fit and the oracle renders lives here too, below the stages that use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import Tensor

from ..render.cameras import CameraBatch
from ..schedules import stage_progress


@dataclass
class GuidanceInput:
    rgb: Tensor
    """[B,H,W,3] rendered colour in [0,1] (display/sRGB values, what image models expect)."""
    opacity: Tensor
    """[B,H,W,1] rendered coverage in [0,1]."""
    cameras: CameraBatch
    normal: Tensor | None = None
    """[B,H,W,3] rendered unit normals in WORLD space (background zero), when the stage has them."""
    shading: Literal["albedo", "normal", "lit"] = "albedo"
    """What `rgb` shows: the colour field, normals shaded as colours ((n+1)/2, for geometry-only steps), or the
    colour field lit by a light through a normal map's normals (the texture stage of a finished low mesh)."""
    colour: Tensor | None = None
    """[B,H,W,3] the colour render when `rgb` is normal-shaded. Priors that must always see colour use
    `colour_render()`: DreamCraft3D (systems/dreamcraft3d.py, stage geometry) gives `comp_normal` to the text
    guidance only and `comp_rgb` to guidance_3d (Zero123) on every step."""
    step: int = 0
    """Current step of the stage (for timestep annealing and weight schedules)."""
    total_steps: int = 1
    """Steps of the stage."""

    def progress(self) -> float:
        """Fraction of the stage done (schedules.stage_progress): what the guidance's schedules read."""
        return stage_progress(self.step, self.total_steps)

    def colour_render(self) -> Tensor:
        """The colour render: `rgb`, or `colour` when `rgb` shows shaded normals."""
        if self.shading == "normal" and self.colour is not None:
            return self.colour
        return self.rgb


@dataclass
class GuidanceOutput:
    loss: Tensor
    """Scalar; backpropagates into GuidanceInput tensors."""
    diagnostics: dict[str, Tensor | float] = field(default_factory=dict)
    """Detached 0-dim tensors for values computed on the device (read back only when reported), Python
    floats for values the host knows (schedule weights)."""


def step_generator(device: torch.device, seed: int) -> torch.Generator | None:
    """The generator of a guidance's per-step draws (timesteps, noise), on the device that uses them: a
    draw on the host followed by `.to(device)` is a blocking copy from pageable memory, which waits for the
    device's queue. On the CPU this is the CPU generator seeded as before, so a seed draws what it drew.
    None on `meta` (the dry run), which has no generator and no values to draw."""
    if device.type == "meta":
        return None
    return torch.Generator(device=device).manual_seed(seed)


class Guidance(Protocol):
    def __call__(self, inp: GuidanceInput) -> GuidanceOutput: ...


class NormalTargets(Protocol):
    """Supplies target normals for the polish stage: a normal estimator (Marigold), or the oracle."""

    def __call__(self, rgb: Tensor, opacity: Tensor, cameras: CameraBatch) -> Tensor:
        """rgb [B,H,W,3] in [0,1], opacity [B,H,W,1] -> [B,H,W,3] unit normals in the renderer's
        CAMERA frame (+X right, +Y up, +Z towards the viewer); zero where there is no estimate."""
        ...


@dataclass
class ReferenceView:
    """The reference image at the reference camera (from the text-to-image model, or the oracle's render)."""

    rgb: Tensor
    """[H,W,3] in [0,1] (over a white background where the mask is 0)."""
    mask: Tensor
    """[H,W,1] foreground in [0,1]."""
    camera: CameraBatch
    """B=1, the same H and W as the images."""
    depth: Tensor | None = None
    """[H,W,1] relative depth (larger = farther; any scale and offset), for the relative-depth loss."""
    normal: Tensor | None = None
    """[H,W,3] unit normals in the reference camera's frame (+X right, +Y up, +Z towards the viewer), zero
    where there is no estimate, for the reference normal loss."""
    more: list[ReferenceView] = field(default_factory=list)
    """The further pictures of a multi-view request, each a view of its own with its camera (their `more`
    empty); this one, the first camera's, defines the front."""

    def views(self) -> list[ReferenceView]:
        """Every reference view: this one, then `more`."""
        return [self, *self.more]
