"""Will the preset fit the card: before a job starts on a CUDA device, its preset's peak memory (the dry
run's figures) is compared with the card's total memory, and a job that will not fit is announced in the
log and to the client, before an hour is spent finding out.

The client hears it as the job's first `progress` event: step 0 of 0 of the first stage to run, with the
losses `memory_needed_gb` and `device_memory_gb` (a progress event's losses are an open map of numbers,
so no message changes; the protocol CLI prints them)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.messages import DEVICE_MEMORY_GB, MEMORY_NEEDED_GB

GB = 1e9

PRESET_PEAK_GB: dict[str, float] = {"draft": 12.98, "standard": 22.68, "high": 22.68, "refine": 12.98}
"""Peak GPU memory by preset in GB, from `dreampolish-backend dryrun` (BENCHMARKS.md, "Will it fit"),
2026-12-01: `standard` at full geometry 22.68 GB (polish dominates). `draft` was measured with small
geometry only (12.98 GB, the priors' share; its own stages are smaller than standard's), and `high` has
standard's grids with larger polish renders and atlas, so both figures are lower bounds. `refine` runs
draft's DMTet, polish and texture sizes with fewer steps and no NeRF or NeuS: draft's figure. `tiny` and
`micro` run on the CPU and have no entry. A table rather than a dry run at serve start: one takes a minute or more per
preset on a CPU. Request options that enlarge a stage are not counted here; check_request_fits (below)
refuses at submit those that cannot fit by a lower bound."""


def device_total_memory(device: torch.device) -> int | None:
    """Bytes of memory of a CUDA device (torch.cuda.get_device_properties), None for any other device."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return int(torch.cuda.get_device_properties(index).total_memory)


@dataclass
class MemoryShortfall:
    """A preset that needs more memory than the card has."""

    preset: str
    needed_gb: float
    device_gb: float

    def message(self) -> str:
        return (f"preset {self.preset!r} needs about {self.needed_gb:.1f} GB of GPU memory (dry run) and this "
                f"card has {self.device_gb:.1f} GB: the job will probably run out of memory; choose a smaller "
                f"preset, or check with `dreampolish-backend dryrun --preset {self.preset}`")

    def losses(self) -> dict[str, float]:
        """What the job's first progress event carries."""
        return {MEMORY_NEEDED_GB: round(self.needed_gb, 2), DEVICE_MEMORY_GB: round(self.device_gb, 2)}


def check_memory(preset: str, device: torch.device,
                 total_memory: Callable[[torch.device], int | None] | None = None) -> MemoryShortfall | None:
    """The shortfall when `preset`'s dry-run peak exceeds `device`'s memory (`total_memory`, by default
    device_total_memory); None when it fits, when the device is not a CUDA card, or when the preset has no
    figure."""
    needed = PRESET_PEAK_GB.get(preset)
    total = (total_memory or device_total_memory)(device)
    if needed is None or total is None or needed * GB <= total:
        return None
    return MemoryShortfall(preset, needed, total / GB)


# --- what a request's options need at least ---------------------------------------------------------
#
# The table above is the presets' measured peak; a request's options can enlarge a stage far past it
# (NeRF at resolution 2048 with a batch of 64 and 1024 samples a ray, a DMTet grid of 512 cells a side).
# At submit, the backend refuses what cannot fit on any of its devices by a lower bound counted from the
# tensors such a stage must hold at once, never from a guess of the rest:
BYTES_PER_RAY = 64
"""Volume rendering (render/volume.py), per rendered pixel of a step: colour, opacity, depth and normal
(8 float32) kept for the backward pass, and as much again for their gradients."""
BYTES_PER_SAMPLE = 44
"""Per sample of one chunk of rays (chunk_rays x n_samples): position and direction (6 float32), density,
colour and weight (5 float32)."""
BYTES_PER_GRID_VERTEX = 12 + 4 * 4 * 4
"""DMTet grid (geometry/tets.py), per vertex of the (res+1)^3 lattice: its rest position (3 float32) and its
SDF and deformation (4 float32) with their gradient and two Adam moments."""
BYTES_PER_TET = 4 * 8
"""Per tetrahedron of the 6 res^3 of the Kuhn subdivision: four int64 vertex indices."""


@dataclass(frozen=True)
class StageNeed:
    """The least memory a stage of a request needs, with the settings that set it."""

    stage: str
    settings: str
    """The settings in words, e.g. 'nerf.batch_size=64, nerf.resolution=2048, nerf.render.n_samples=1024'."""
    nbytes: int


def _volume_need(name: str, cfg: Any) -> StageNeed:
    side = max(cfg.resolution.low, cfg.resolution.high or 0)
    rays = cfg.batch_size * side * side
    chunk = min(cfg.render.chunk_rays, rays) * cfg.render.n_samples
    settings = (f"{name}.batch_size={cfg.batch_size}, {name}.resolution={side}, "
                f"{name}.render.n_samples={cfg.render.n_samples}")
    return StageNeed(name, settings, rays * BYTES_PER_RAY + chunk * BYTES_PER_SAMPLE)


def least_memory(preset: Any) -> list[StageNeed]:
    """What the volume stages (nerf, neus) and the DMTet grid of a resolved preset need at least."""
    needs = [_volume_need(name, getattr(preset, name)) for name in ("nerf", "neus") if hasattr(preset, name)]
    dmtet = getattr(preset, "dmtet", None)
    if dmtet is not None:
        res = dmtet.grid_resolution
        nbytes = (res + 1) ** 3 * BYTES_PER_GRID_VERTEX + 6 * res**3 * BYTES_PER_TET
        needs.append(StageNeed("dmtet", f"dmtet.grid_resolution={res}", nbytes))
    return needs


def device_memory(device: str) -> int | None:
    """Bytes a device can hold: a CUDA card's total memory, the computer's for "cpu"; None when unknown
    (a remote worker's device)."""
    if device == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    if device.startswith("cuda") and torch.cuda.is_available():
        return device_total_memory(torch.device(device))
    return None


def check_request_fits(preset: Any, devices: Mapping[str, int | None] | list[str], stages: list[str]) -> None:
    """Refuse (ValidationError naming the stage, its settings and both sizes) a request whose options make a
    stage it runs need more memory than the largest of the devices holds. Devices of unknown size pass."""
    sizes = devices if isinstance(devices, Mapping) else {d: device_memory(d) for d in devices}
    known = {d: n for d, n in sizes.items() if n is not None}
    if not known:
        return
    device, largest = max(known.items(), key=lambda kv: kv[1])
    for need in least_memory(preset):
        if need.stage in stages and need.nbytes > largest:
            raise ValidationError(
                f"options: stage {need.stage} at {need.settings} needs at least {need.nbytes / GB:.1f} GB "
                f"and the largest device here ({device}) has {largest / GB:.1f} GB; lower these settings"
            )
