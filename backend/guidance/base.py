"""One interface for every source of guidance: score distillation objectives
(SDS, VSD, BSD, CSD, DSD), the view-conditioned prior, and the oracle that
stands in for them in tests and benchmarks.

A Guidance takes what a stage rendered at a batch of cameras and returns a
scalar loss whose gradient flows into the render, plus float diagnostics
(e.g. "grad_norm", "t") that go into progress messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor

from ..render.cameras import CameraBatch


@dataclass
class GuidanceInput:
    rgb: Tensor
    """[B,H,W,3] rendered colour in [0,1] (display/sRGB values, what image models expect)."""
    opacity: Tensor
    """[B,H,W,1] rendered coverage in [0,1]."""
    cameras: CameraBatch
    normal: Tensor | None = None
    """[B,H,W,3] rendered unit normals in WORLD space (background zero), when the stage has them."""
    step: int = 0
    """Current step of the stage (for timestep annealing and weight schedules)."""
    total_steps: int = 1


@dataclass
class GuidanceOutput:
    loss: Tensor
    """Scalar; backpropagates into GuidanceInput tensors."""
    diagnostics: dict[str, float] = field(default_factory=dict)


class Guidance(Protocol):
    def __call__(self, inp: GuidanceInput) -> GuidanceOutput: ...
