"""Will the preset fit the card: before a job starts on a CUDA device, its preset's peak memory (the dry
run's figures) is compared with the card's total memory, and a job that will not fit is announced in the
log and to the client, before an hour is spent finding out.

The client hears it as the job's first `progress` event: step 0 of 0 of the first stage to run, with the
losses `memory_needed_gb` and `device_memory_gb` (a progress event's losses are an open map of numbers,
so no message changes; the protocol CLI prints them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from dreampolish.protocol.messages import DEVICE_MEMORY_GB, MEMORY_NEEDED_GB

GB = 1e9

PRESET_PEAK_GB: dict[str, float] = {"draft": 12.98, "standard": 22.68, "high": 22.68, "refine": 12.98}
"""Peak GPU memory by preset in GB, from `dreampolish-backend dryrun` (BENCHMARKS.md, "Will it fit"),
2026-12-01: `standard` at full geometry 22.68 GB (polish dominates). `draft` was measured with small
geometry only (12.98 GB, the priors' share; its own stages are smaller than standard's), and `high` has
standard's grids with larger polish renders and atlas, so both figures are lower bounds. `refine` runs
draft's DMTet, polish and texture sizes with fewer steps and no NeRF or NeuS: draft's figure. `tiny` and
`micro` run on the CPU and have no entry. A table rather than a dry run at serve start: one takes a minute or more per
preset on a CPU. Request options that enlarge a stage are not counted."""


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
