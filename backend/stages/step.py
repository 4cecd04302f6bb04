"""The optimisation step the stages share (stages/base.py lists its three parts).

A stage's step is written as:

    p = stage_progress(step, cfg.steps)                                         # schedules.py
    loss = StepLoss.start(device)
    loss.add_reference(lambda cam: state.render(cam), ref, cfg.reference, p)    # 1. reference view
    loss.add_guidance(guidance, GuidanceInput(...), cfg.guidance_weight.at(p))  # 2. guidance
    loss.add("eikonal", w, eikonal_loss(...))                                   # 3. regularisers
    optimiser_step(optimiser, loss, reporter, step, cfg.steps)

and every stage builds its modules inside `seeded_init(generator)`, so that their initial weights come
from the job's generator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..capacity import DeviceCapacity
from ..guidance.base import Guidance, GuidanceInput
from ..render.cameras import CameraBatch
from ..rng import global_rng_seeded
from .base import ReferenceWeights, ScaledReference, StageRender, StageReporter, reference_losses


def draw_seed(generator: torch.Generator | None) -> int:
    """A 31-bit seed drawn from the job's generator (or from the global RNG when there is none)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


@contextlib.contextmanager
def seeded_init(generator: torch.Generator | None) -> Iterator[None]:
    """Modules built inside draw their initial weights from a seed of `generator`, whatever other jobs
    do meanwhile (backend/rng.py); the global RNG is left as it was. Without a generator they use the
    global RNG as it stands."""
    if generator is None:
        yield
        return
    with global_rng_seeded(draw_seed(generator)):
        yield


@dataclass
class StepLoss:
    """One step's loss: the weighted sum of its terms, and each term's value for the report.

    The terms stay on the device as detached 0-dim tensors: reading one back (`.item()`) would make the host
    wait for the GPU on every step. The reporter reads them at its reporting steps only
    (pipeline/previews.py StageProgress, issue 28)."""

    total: Tensor
    terms: dict[str, Tensor | float] = field(default_factory=dict)

    @classmethod
    def start(cls, device: torch.device | str, earlier: StepLoss | None = None) -> StepLoss:
        """A zero loss; with `earlier`, its terms are reported again until this step replaces them (steps that
        alternate between reference and guidance terms report the latest of both)."""
        return cls(torch.zeros((), device=device), dict(earlier.terms) if earlier is not None else {})

    def add(self, name: str, weight: float, value: Tensor) -> None:
        """L += w · value, reported as `name` (unweighted)."""
        self.total = self.total + weight * value
        self.terms[name] = value.detach()

    def add_reference(self, render: Callable[[CameraBatch], StageRender],
                      ref: ScaledReference | list[ScaledReference] | None, weights: ReferenceWeights,
                      progress: float) -> None:
        """1. The reference-view losses (RGB, mask, relative depth) when the stage has a reference, with
        their weights at `progress` through the stage; with several pictures, each view's losses (each at its
        own camera, the relative depth per picture), each at its full weight, averaged or over √N
        (ReferenceWeights.views, .picture_share)."""
        if ref is None:
            return
        refs = ref if isinstance(ref, list) else [ref]
        share = weights.picture_share(len(refs))
        terms: dict[str, Tensor] = {}
        for one in refs:
            loss, part = reference_losses(render(one.camera), one, weights, progress)
            self.total = self.total + loss * share
            for name, value in part.items():  # reported as the mean over the pictures either way
                terms[name] = terms[name] + value / len(refs) if name in terms else value / len(refs)
        self.terms.update(terms)

    def add_guidance(self, guidance: Guidance, inp: GuidanceInput, weight: float) -> None:
        """2. The guidance loss on sampled views, with the guidance's own diagnostics."""
        g = guidance(inp)
        self.total = self.total + weight * g.loss
        self.terms["guidance"] = g.loss.detach()
        self.terms.update(g.diagnostics)


def reference_or_guidance(step: int, alternate_every: int, has_reference: bool) -> tuple[bool, bool]:
    """(whether the step adds the reference losses, whether it runs the guidance): both every step when
    alternate_every is 0 or there is no reference, else a reference-only step every alternate_every-th step
    (step 0 first, as DreamCraft3D's `true_global_step % n_ref == 0`) and guidance-only steps between."""
    if not has_reference:
        return False, True
    if alternate_every < 2:
        return True, True
    reference = step % alternate_every == 0
    return reference, not reference


def request_capacities(reporter: StageReporter, step: int, steps: int, capacities: Iterable[DeviceCapacity]) -> None:
    """Start reading back the needs of the step's fixed-size buffers (backend/capacity.py) when the reporter
    reads the losses back (StageProgress.reports), or every step for reporters that do not say when (the
    log, tests: no GPU to wait for)."""
    reports = getattr(reporter, "reports", None)
    if reports is None or reports(step + 1, steps):
        for capacity in capacities:
            capacity.request()


def optimiser_step(optimiser: torch.optim.Optimizer, loss: StepLoss, reporter: StageReporter, step: int,
                   steps: int, extra: dict[str, Tensor | float] | None = None,
                   capacities: Iterable[DeviceCapacity] = ()) -> None:
    """Step the optimiser on the loss (skipped when nothing in it depends on the parameters, e.g. an empty
    DMTet surface), then report every term, the total as "loss", and `extra`; `capacities` are requested
    at reporting steps (request_capacities)."""
    request_capacities(reporter, step, steps, capacities)
    optimiser.zero_grad(set_to_none=True)
    if loss.total.requires_grad:
        loss.total.backward()
        optimiser.step()
    loss.terms["loss"] = loss.total.detach()
    loss.terms.update(extra or {})
    reporter.progress(step + 1, steps, loss.terms)
