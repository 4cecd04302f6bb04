"""torch.compile of the guidance's per-step model calls (issue 28): the UNet passes, the VAE encoder and the
LoRA adapter's diffusion loss.

What is compiled is each model call, not the whole guidance step: between the calls the step switches the
shared UNet's LoRA adapters on and off (peft's `set_adapter` / `disable_adapters` flip `requires_grad` on
parameters, which Dynamo cannot trace) and draws its noise and timesteps from a `torch.Generator` (which
Dynamo does not take as an argument). Those few lines stay eager; each model call is one graph, checked by
tests/backend/guidance/test_graph_breaks.py. Each adapter state (frozen, variational, teacher) gets a graph
of its own, compiled the first time it runs (that step pays the compile time); Dynamo's guards pick it on
later steps.

Mode: torch.compile's default (Inductor's fused kernels, no CUDA graphs). "reduce-overhead" replays CUDA
graphs, which need static inputs and hand out outputs that the next replay overwrites: here the adapter's
parameters and optimiser state change every step, the same UNet runs as several graphs a step (frozen,
ε_φ, the adapter's loss with its backward, each holding its own memory pool), and the render gradient leaves
the VAE encoder's graph through a backward that runs after them. What CUDA graphs save is launch time, small
next to an SD UNet pass at 64x64 latents.

The compiled callables are cached per (function, settings), so jobs that share a model set in a long-lived
backend reuse one compilation; Dynamo's guards (the module, the shapes, the adapter state) decide when a
new graph is needed. A new render size or batch recompiles (`dynamic=False`: fixed shapes compile best).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch

CompileChoice = Literal["auto", "on", "off"]
"""The preset's `compile_guidance`: "auto" compiles on CUDA only."""

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class GuidanceCompile:
    """Whether and how the guidance's model calls run under torch.compile."""

    enabled: bool = False
    backend: str | Callable[..., Any] = "inductor"
    """torch.compile's backend; tests count graphs with a backend of their own."""
    fullgraph: bool = False
    """Raise on a graph break instead of splitting the graph (tests; production falls back to eager pieces)."""

    @classmethod
    def choose(cls, choice: CompileChoice, device: torch.device | str) -> GuidanceCompile:
        """The preset's choice on `device`: "auto" compiles on CUDA only (on the CPU compiling takes longer
        than the steps it speeds up, and on `meta`, the dry run's device, there is nothing to run)."""
        device = torch.device(device)
        if choice not in ("auto", "on", "off"):
            raise ValueError(f"compile_guidance must be 'auto', 'on' or 'off', got {choice!r}")
        on = choice == "on" or (choice == "auto" and device.type == "cuda")
        return cls(enabled=on and device.type != "meta")

    def __call__(self, fn: F) -> F:
        """`fn` compiled with these settings, or `fn` itself when compilation is off."""
        return _compiled(fn, self) if self.enabled else fn


@functools.cache
def _compiled(fn: Callable[..., Any], settings: GuidanceCompile) -> Callable[..., Any]:
    return torch.compile(fn, backend=settings.backend, fullgraph=settings.fullgraph, dynamic=False)
