"""Which loaded priors sit in the card's memory: with offloading (preset field `offload`), only those the
current stage uses; the others wait in host memory until a stage needs them again.

The move is whole models, as diffusers' `DiffusionPipeline.enable_model_cpu_offload` does it
(diffusers/pipelines/pipeline_utils.py: every model goes to the CPU, and accelerate's
`cpu_offload_with_hook` moves a model to the device when its forward runs, offloading the one before it in
`model_cpu_offload_seq`). Here the move happens at stage boundaries instead of at each forward: within a
geometry stage the text UNet and Zero123's UNet both run every step, and per-forward hooks would move
both models twice a step. At a boundary each moved byte crosses the bus once (models.residency.place).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

MODEL_PARTS = ("unet", "vae", "text_encoder", "image_encoder", "camera_projection")
"""The networks of a prior bundle (TextToImageModels, Zero123Models, a Marigold pipeline)."""


def bundle_modules(bundle: Any) -> list[torch.nn.Module]:
    """The networks of one loaded prior (the parts that hold weights)."""
    return [m for name in MODEL_PARTS if isinstance(m := getattr(bundle, name, None), torch.nn.Module)]


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (what a move carries)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class Residency:
    """Where each loaded prior role is: on the compute device (the default) or in host memory.

    to_host / to_device: how a module moves (module.to(host) / module.to(device) in production; the dry run
    passes its own, since a `meta` module has no data to copy)."""

    device: torch.device
    host: torch.device = field(default_factory=lambda: torch.device("cpu"))
    to_host: Callable[[torch.nn.Module], Any] | None = None
    to_device: Callable[[torch.nn.Module], Any] | None = None
    hosted: set[str] = field(default_factory=set)
    moved_bytes: int = 0
    """Bytes moved so far, both ways."""
    seconds: float = 0.0
    """Wall time spent placing models so far (a card's copies to and from host memory)."""
    late: list[str] = field(default_factory=list)
    """Roles a stage asked for while they were in host memory (ready)."""
    on_move: Callable[[int, bool], Any] | None = None
    """Told (bytes, to host?) of each move: before a move to the device, after one to host memory."""

    def _move(self, bundle: Any, off: bool) -> int:
        modules = bundle_modules(bundle)
        moved = sum(module_bytes(m) for m in modules)
        if not off and self.on_move is not None:
            self.on_move(moved, False)
        for module in modules:
            if off:
                (self.to_host or (lambda m: m.to(self.host)))(module)
            else:
                (self.to_device or (lambda m: m.to(self.device)))(module)
        if off and self.on_move is not None:
            self.on_move(moved, True)
        self.moved_bytes += moved
        return moved

    def place(self, loaded: dict[str, Any], keep: Iterable[str]) -> int:
        """Move the loaded roles not in `keep` to host memory and those in `keep` back to the device; the
        bytes moved (each way counted once)."""
        keep = set(keep)
        started = time.perf_counter()
        moved = 0
        for role, bundle in loaded.items():
            if role in keep and role in self.hosted:
                moved += self._move(bundle, off=False)
                self.hosted.discard(role)
            elif role not in keep and role not in self.hosted:
                moved += self._move(bundle, off=True)
                self.hosted.add(role)
        if moved and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()  # what left the card is free for other processes too
        self.seconds += time.perf_counter() - started
        return moved

    def ready(self, role: str, bundle: Any) -> Any:
        """`bundle` on the device: a role asked for while in host memory moves back (logged: the stage's
        roles in pipeline/priors.stage_roles missed it, so that stage's peak is higher than offloading
        promises)."""
        if role in self.hosted:
            logger.warning("prior %s was in host memory when a stage asked for it; moving it back", role)
            self._move(bundle, off=False)
            self.hosted.discard(role)
            self.late.append(role)
        return bundle

    def forget(self, role: str, bundle: Any = None) -> None:
        """An unloaded role is nowhere (`bundle`: the unloaded models, whose host copy is gone)."""
        if role in self.hosted and bundle is not None and self.on_move is not None:
            self.on_move(-sum(module_bytes(m) for m in bundle_modules(bundle)), True)
        self.hosted.discard(role)
