"""Will the preset fit the card: before a job starts on a CUDA device, its preset's peak memory (the dry
run's figures, backend/memory_figures.py) is compared with the card's total memory. A preset that fits
only with its idle priors in host memory runs so (preset field `offload`, "auto"), and says so; one that
would not fit even so is refused at submit (check_request_fits), before an hour is spent finding out.

The client hears it as the job's first `progress` event: step 0 of 0 of the first stage to run, with the
losses `memory_needed_gb` and `device_memory_gb` (when the figure is above the card's memory) and
`priors_offloaded` (a progress event's losses are an open map of numbers, so no message changes; the
protocol CLI prints them)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.messages import DEVICE_MEMORY_GB, MEMORY_NEEDED_GB, PRIORS_OFFLOADED

from .memory_figures import DRY_RUN_GB, GEOMETRY

GB = 1e9

FIGURE_OF: dict[str, str] = {"refine": "draft"}
"""Presets without a dry run of their own: `refine` runs draft's DMTet, polish and texture sizes with fewer
steps and no NeRF or NeuS (a generate dry run cannot run it: it refuses to generate), so draft's figure is
its bound. `tiny` and `micro` run on the CPU and have no figure."""
HEADROOM_GB = 1.0
"""What a card holds beside the dry run's figure: the CUDA context (about 0.5 GB) and the caching allocator's
slack. The dry run does not see either (commands/dryrun.py)."""


def preset_peak_gb(preset: str, offload: bool) -> float | None:
    """The dry run's peak of `preset` in GB, with its idle priors in host memory or not; None without a
    figure. The PyTorch rasteriser's figure: it bounds nvdiffrast's from above (memory_figures.py). Where
    memory_figures.GEOMETRY says "small", a lower bound (the stages' own work at the tiny preset's sizes): a
    preset is then refused only when even that does not fit."""
    runs = DRY_RUN_GB.get(FIGURE_OF.get(preset, preset))
    if runs is None:
        return None
    stages = runs.get("priors" if offload else "none")
    return None if stages is None else max(stages.values())


def device_total_memory(device: torch.device) -> int | None:
    """Bytes of memory of a CUDA device (torch.cuda.get_device_properties), None for any other device."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return int(torch.cuda.get_device_properties(index).total_memory)


@dataclass
class MemoryPlan:
    """How a preset runs on a card: offloaded or not, and whether the figure fits."""

    preset: str
    offload: bool
    needed_gb: float | None
    """The dry run's peak as it will run (None: no figure)."""
    device_gb: float | None
    """The card's memory (None: not a CUDA card)."""
    chosen: bool = False
    """Offloading was chosen by "auto" because the card is too small without it."""

    @property
    def fits(self) -> bool:
        return self.needed_gb is None or self.device_gb is None or self.needed_gb + HEADROOM_GB <= self.device_gb

    def message(self) -> str:
        how = " with its idle priors in host memory" if self.offload else ""
        about = "at least" if GEOMETRY.get(FIGURE_OF.get(self.preset, self.preset)) == "small" else "about"
        return (f"preset {self.preset!r} needs {about} {self.needed_gb:.1f} GB of GPU memory{how} (dry run, "
                f"+{HEADROOM_GB:.0f} GB for the CUDA context) and this card has {self.device_gb:.1f} GB")

    def losses(self) -> dict[str, float]:
        """What the job's first progress event carries."""
        out: dict[str, float] = {}
        if not self.fits:
            out.update({MEMORY_NEEDED_GB: round(self.needed_gb or 0.0, 2), DEVICE_MEMORY_GB: round(self.device_gb or 0, 2)})
        if self.chosen:
            out[PRIORS_OFFLOADED] = 1.0
        return out


def plan_memory(preset: str, offload: str, device: torch.device,
                total_memory: Callable[[torch.device], int | None] | None = None) -> MemoryPlan:
    """Whether `preset` (its `offload` setting: none, priors, auto) runs with its idle priors in host
    memory on `device`, and its figure against the card's memory. "auto" offloads exactly when the figure
    without offloading does not fit the card and the one with it does better; off a CUDA card it does not
    offload (nothing to gain)."""
    total = (total_memory or device_total_memory)(device)
    device_gb = None if total is None else total / GB
    if offload != "auto":
        return MemoryPlan(preset, offload == "priors", preset_peak_gb(preset, offload == "priors"), device_gb)
    plain = MemoryPlan(preset, False, preset_peak_gb(preset, False), device_gb)
    if plain.fits or device_gb is None:
        return plain
    return MemoryPlan(preset, True, preset_peak_gb(preset, True), device_gb, chosen=True)


def check_memory(preset: str, device: torch.device,
                 total_memory: Callable[[torch.device], int | None] | None = None,
                 offload: str = "none") -> MemoryPlan | None:
    """The plan when `preset` (with `offload`) does not fit `device`; None when it fits, when the device is
    not a CUDA card, or when the preset has no figure."""
    plan = plan_memory(preset, offload, device, total_memory)
    return None if plan.fits else plan


def check_preset_fits(preset: str, offload: str, devices: Mapping[str, int | None]) -> None:
    """Refuse (ValidationError with the figure and the card's size) a preset that does not fit the largest
    CUDA card here even with its idle priors in host memory (or, with offload=none, without)."""
    cards = {d: n for d, n in devices.items() if d.startswith("cuda") and n is not None}
    if not cards or len(cards) != len(devices):  # a CPU worker (or one of unknown size) runs it, slowly
        return
    device, largest = max(cards.items(), key=lambda kv: kv[1])
    plan = plan_memory(preset, "priors" if offload == "auto" else offload, torch.device("cuda"),
                       lambda _: largest)
    if plan.fits:
        return
    hint = ("" if plan.offload else "; with offload=priors it would need "
            f"{preset_peak_gb(preset, True) or 0:.1f} GB")
    raise ValidationError(f"{plan.message()} ({device}): it cannot run here{hint}; choose a smaller preset")


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


def check_request_fits(preset: Any, devices: Mapping[str, int | None] | list[str], stages: list[str],
                       name: str | None = None) -> None:
    """Refuse (ValidationError naming the stage, its settings and both sizes) a request whose options make a
    stage it runs need more memory than the largest of the devices holds, or whose preset `name` does not
    fit the cards even offloaded (check_preset_fits). Devices of unknown size pass."""
    sizes = devices if isinstance(devices, Mapping) else {d: device_memory(d) for d in devices}
    if name is not None:
        check_preset_fits(name, getattr(preset, "offload", "auto"), sizes)
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
