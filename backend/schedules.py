"""Schedules over a stage, in fractions of the stage rather than in absolute steps.

A stage of N steps runs steps 0 … N−1. `stage_progress(step, N)` is 0 at its first step and 1 at its last,
and every schedule (a ramped weight, a render size that grows, an annealed timestep range, the hash grid's
coarse-to-fine levels) is written against that fraction. A preset with fewer steps (draft) then runs each
schedule to its end value, only faster, instead of stopping it part-way.

This module is the one place where a step number becomes a fraction: stages call `stage_progress` once
per step and hand the fraction to their schedules; a guidance reads it from its GuidanceInput.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config_fields import ranged, ranged_required


def stage_progress(step: int, steps: int) -> float:
    """Fraction of the stage done at 0-based `step` of `steps`: 0 at the first step, 1 at the last, clamped
    to [0, 1]. The only step of a one-step stage counts as its first (0), where schedules start."""
    if steps <= 1:
        return 0.0
    return min(max(step / (steps - 1), 0.0), 1.0)


@dataclass
class Ramp:
    """A value that moves linearly from `start` (up to the fraction start_at of the stage) to `end` (from
    end_at on)."""

    start: float = ranged_required(0, 1e6)
    """Value up to start_at."""
    end: float | None = ranged(None, 0, 1e6)
    """Value from end_at on; None keeps `start` (a constant)."""
    start_at: float = ranged(0.0, 0, 1)
    """Fraction of the stage where the ramp begins."""
    end_at: float = ranged(1.0, 0, 1)
    """Fraction of the stage where the ramp ends (1: at the stage's last step)."""

    def at(self, progress: float) -> float:
        """The value at `progress` (stage_progress) in [0, 1]."""
        if self.end is None or progress <= self.start_at:
            return float(self.start)
        if progress >= self.end_at:
            return float(self.end)
        t = (progress - self.start_at) / (self.end_at - self.start_at)
        return float(self.start + t * (self.end - self.start))

    def final(self) -> float:
        """The value the ramp ends on."""
        return float(self.start if self.end is None else self.end)
