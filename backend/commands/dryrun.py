"""`dreampolish-backend dryrun --preset NAME [--option KEY=VALUE ...]`: will a preset fit, before an hour is spent?

Every stage of a generate job runs two steps through the pipeline's public API (`DreamPolishPipeline` with a
JobContext) and the production prior assembly (pipeline/priors.DiffusionPriors, in commands/dryrun_meta.py:
only the device and the weights differ), with the configured diffusion priors at FULL SIZE and random
weights on PyTorch's `meta` device: real shapes, no data, nothing downloaded (backend/models/full_size.py).
A tensor that slips onto the wrong device raises there as it would on CUDA ("Tensor on device meta is not on
the expected device cpu!"). The stages' own tensors (fields, renders, meshes) have data and live on the CPU.

`--option offload=priors` runs the job as a card too small for the preset would (models/residency.py: idle
priors in host memory between stages). Its report holds both figures per stage: `peak_gb`, what the card
holds offloaded, and `resident_peak_gb`, what it would hold with every loaded model resident: the same run
with the offloaded bytes counted back (LiveBytes.host), which is exact, since the stages' tensors are the
same either way. `moved_gb` is the bytes moved before each stage. backend/memory_figures.py is generated
from these reports (commands/dryrun_table.py).

Rasterisers: the stages rasterise with the PyTorch rasteriser here (nvdiffrast cannot run on `meta` or on
the CPU); its buffers bound nvdiffrast's from above, so each figure is an upper bound for nvdiffrast.

`--device cuda` runs the same on a card, for real (random weights), and reports the allocator's peak per
stage (`allocated_gb`) beside the counted one: bench/gpu_run.sh compares them.

Memory: a TorchDispatchMode sees every op's outputs, on every device; it counts each new storage's bytes
until the storage is freed, so `live` is what a GPU would hold (weights, activations kept for backward,
optimiser state) and the stage's peak is the most that was live at once. What it does not see: the CUDA
caching allocator's slack and fragmentation, cuDNN/cuBLAS workspaces, the CUDA context (~0.5 GB), and
kernels that differ on the GPU (nvdiffrast instead of the PyTorch rasteriser, fused attention, which
needs less than the math attention counted here). It is an estimate to compare with the card, not a
measurement.

Host memory at full geometry (one torch thread, 2-core CPU, quiet): draft holds 5.3 GB resident and takes
about 5 minutes, standard 9.0 GB and 7 minutes, high 9.1 GB and 8 minutes. On a machine with less memory to
spare, MALLOC_MMAP_THRESHOLD_=131072 in the environment makes glibc hand freed tensors back to the system
(standard: 6.7 GB) at about 1.7 times the time, most of it in the kernel mapping memory (BENCHMARKS.md,
issue 27).

`--geometry small` runs the stages' own (CPU) work at the tiny preset's resolutions while the priors stay
full size; the priors see their own input size whatever the render size (the VAE resizes), so their share
is unchanged, and the stages' share is then the small one. On a 2-core CPU the full-size geometry takes
minutes per step; the priors on `meta` take seconds.

The last line printed is one JSON object:
    {"preset": ..., "device": "meta", "dtype": ..., "geometry": "full"|"small",
     "stages": {"reference": {"ok": true, "peak_gb": ...}, ...}, "peak_gb": ..., "weights_gb": ...}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

log = logging.getLogger(__name__)

TWO_STEPS: dict[str, Any] = {
    "nerf.steps": 2, "neus.steps": 2, "dmtet.steps": 2, "polish.steps": 2, "texture.steps": 2,
    "reference.generation.num_inference_steps": 2, "preview_every": 0,
    "neus.init_steps": 2, "dmtet.color_init_steps": 2,
}
"""Every optimisation stage runs two steps (the second one sees the optimiser state the first made). The
second is the stage's last step, where every schedule has reached its end (schedules.stage_progress): a
render size that grows during a stage (NeRF: 128 px, then 384) is at its largest there, so the stage's
largest renders are measured.

Two hand-over loops are cut to two steps as well, and their peak is exact: NeuS's initialisation from the
NeRF (neus.init_steps, geometry/transitions.fit_sdf_field) and DMTet's colour-field fit
(dmtet.color_init_steps, transitions.fit_color_field) regress on a batch of the same size every step
(`init_batch` uniform + `init_batch` near-surface points; `batch` surface points) through the same ops, at a
fixed hash-grid level (update_progress(0.0) before the loop), with one Adam created before the loop: the
first step creates the Adam moments, and every later step holds exactly the tensors the second does. At
the standard preset the 300 NeuS steps took 25 of a 40-minute dry run on two cores.

Within a step, the ray chunks of a NeRF or NeuS render are cut as well (render/volume.measured_chunks_only,
set around the whole run): the first chunk and the last two are evaluated, the others are stand-ins that
hold what a chunk holds, so the render's peak is the job's (render/volume._StandInChunk says why). So are the
Marigold calls of the polish stage's view pool (32 views, one call each) and of the PBR bake's decomposition
(8 views): the first and the last are run, the others stand in, and the loops' peaks are the job's
(commands/dryrun_meta.MeasuredEstimates). The texture
bake's charts are a grid instead of xatlas's (bake.grid_charts: host work, no GPU memory)."""

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GB = 1e9


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the storages that ops create, on every device, until each is freed."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.segment_peak = 0
        self.hosted = 0
        """Bytes of offloaded models in host memory (not in `live`)."""
        self.peak_resident = 0
        self.segment_peak_resident = 0
        self._seen: set[int] = set()
        self._paused = False

    @contextlib.contextmanager
    def uncounted(self) -> Iterator[None]:
        """Storages made inside are not counted (the dry run's host memory for offloaded models)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def _release(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self._paused:
            return out
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self._seen:
                    nbytes = storage.nbytes()
                    self._seen.add(key)
                    self.live += nbytes
                    weakref.finalize(storage, self._release, key, nbytes)
        self.peak = max(self.peak, self.live)
        self.segment_peak = max(self.segment_peak, self.live)
        self.peak_resident = max(self.peak_resident, self.live + self.hosted)
        self.segment_peak_resident = max(self.segment_peak_resident, self.live + self.hosted)
        return out

    def host(self, nbytes: int) -> None:
        """Offloaded model bytes went to host memory (nbytes > 0) or came back (< 0): `live + hosted` is what
        the card would hold without offloading (module docstring)."""
        self.hosted += nbytes

    def reset_segment(self) -> tuple[int, int]:
        """The peaks (on the card; and with the offloaded models counted as resident) since the last reset;
        the next segment starts from what is live now."""
        peaks = (self.segment_peak, self.segment_peak_resident)
        self.segment_peak, self.segment_peak_resident = self.live, self.live + self.hosted
        return peaks


class DryRunContext:
    """pipeline_api.JobContext that closes a stage's memory segment when the stage reports its end."""

    def __init__(self, work_dir: Path, counter: LiveBytes, device: str = "cpu"):
        self.job_id = "dryrun"
        self.work_dir = work_dir
        self.device = device
        self.allocated: dict[str, int] = {}
        """On a card: torch.cuda.max_memory_allocated per stage (bench/gpu_run.sh)."""
        self.counter = counter
        self.peaks: dict[str, int] = {}
        self.resident_peaks: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.current: str | None = None
        self._started = time.perf_counter()

    def _end(self, stage: str) -> None:
        peak, resident = self.counter.reset_segment()
        self.peaks[stage] = max(self.peaks.get(stage, 0), peak)
        self.resident_peaks[stage] = max(self.resident_peaks.get(stage, 0), resident)
        if self.device.startswith("cuda"):
            self.allocated[stage] = torch.cuda.max_memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        now = time.perf_counter()
        self.seconds[stage] = now - self._started
        self._started = now
        log.info("dryrun %s finished: peak %.3f GB, %.1f s", stage, self.peaks[stage] / GB, self.seconds[stage])

    def progress(self, stage, step, total, losses=None, preview_png=None) -> None:
        self.current = stage
        log.info("dryrun %s %d/%d", stage, step, total)
        if stage == "reference" and step >= total:
            self._end(stage)  # the reference stage sends no mesh

    def stage_result(self, stage, index, mesh) -> None:
        self._end(stage)

    def check_cancel(self) -> None:
        return None


def _options(args: argparse.Namespace) -> dict[str, Any]:
    from dreampolish.protocol.job import parse_option

    options: dict[str, Any] = dict(TWO_STEPS)
    for item in args.option:
        key, value = parse_option(item)
        options[key] = value
    return options


def _small_geometry(preset: Any) -> Any:
    """`preset` with the stages' own work at the tiny preset's sizes; models, guidance settings and the
    Marigold estimator's settings unchanged (the priors' inputs are resized to their own resolution)."""
    from dataclasses import replace

    from ..presets import shrink_to_tiny

    tiny = shrink_to_tiny(preset)
    return replace(
        preset, reference=replace(preset.reference, size=tiny.reference.size),
        nerf=tiny.nerf, neus=tiny.neus, dmtet=tiny.dmtet, texture=tiny.texture,
        polish=replace(tiny.polish, estimator=preset.polish.estimator))


def dry_run(preset: str, options: dict[str, Any], dtype: torch.dtype, geometry: str = "full",
            device: str = "meta") -> dict[str, Any]:
    """Run every stage of `preset` (with `options`) for two steps; the report as a JSON-able dict."""
    from dreampolish.protocol.job import JobSpec

    from ..bake import grid_charts
    from ..pipeline import DreamPolishPipeline
    from ..presets import get_preset
    from ..render.volume import measured_chunks_only
    from .dryrun_meta import MetaDiffusionPriors

    base = get_preset(preset)
    if geometry == "small":
        base = _small_geometry(base)
    pipeline = DreamPolishPipeline(presets={"dryrun": lambda: base}, priors=None)
    spec = JobSpec(prompt="a dry run of the preset", preset="dryrun", options=options)
    resolved = pipeline.resolve_preset(spec)  # ValidationError for a bad option, before anything is built
    counter = LiveBytes()
    # the production assembly (pipeline/priors.py) on `meta`, or on a card (`--device cuda`: the stages too)
    priors = MetaDiffusionPriors(dtype, counter, torch.device(device))
    pipeline = DreamPolishPipeline(presets={"dryrun": lambda: base}, priors=priors)
    error: str | None = None
    with tempfile.TemporaryDirectory(prefix="dreampolish-dryrun-") as work:
        ctx = DryRunContext(Path(work), counter, "cpu" if device == "meta" else device)
        with counter, measured_chunks_only(), grid_charts():
            try:
                pipeline.run(spec, ctx)
            except Exception as exc:  # noqa: BLE001 - the report names the failing stage and the error
                error = f"{type(exc).__name__}: {exc}"
                log.exception("dry run failed in stage %s", ctx.current)
    models = priors.models(resolved)
    return {
        "preset": preset, "device": device, "dtype": str(dtype).removeprefix("torch."), "geometry": geometry,
        "offload": resolved.offload, "options": {k: v for k, v in options.items() if k not in TWO_STEPS},
        "rasterizer": "torch", "nvdiffrast": "at most the torch figure (the dry run cannot run nvdiffrast)",
        "stages": _stage_reports(pipeline.request_stages(spec), ctx, counter, error),
        "peak_gb": round(counter.peak / GB, 3), "resident_peak_gb": round(counter.peak_resident / GB, 3),
        "weights_gb": {k: round(v / GB, 3) for k, v in models.parameter_bytes().items()},
        "moved_gb": {k: round(v / GB, 3) for k, v in priors.moved.items()},
        "late_priors": list(models.residency.late),
        "seconds": round(sum(ctx.seconds.values()), 1), "moving_seconds": round(models.residency.seconds, 2),
        "allocated_gb": {k: round(v / GB, 3) for k, v in ctx.allocated.items()},
    }


def _stage_reports(chain: list[str], ctx: DryRunContext, counter: LiveBytes,
                   error: str | None) -> dict[str, dict[str, Any]]:
    """One line per stage of the generate chain (the pipeline's runners the preset runs), in order."""
    stages: dict[str, dict[str, Any]] = {}
    for stage in chain:
        if stage in ctx.peaks:
            stages[stage] = {"ok": True, "peak_gb": round(ctx.peaks[stage] / GB, 3),
                             "resident_peak_gb": round(ctx.resident_peaks[stage] / GB, 3),
                             "seconds": round(ctx.seconds[stage], 1)}
        elif error == "not reached":
            stages[stage] = {"ok": False, "error": error}
        elif error is not None:  # the first stage that did not finish is the one that failed
            stages[stage] = {"ok": False, "peak_gb": round(counter.segment_peak / GB, 3), "error": error}
            error = "not reached"
        else:
            stages[stage] = {"ok": False, "error": "not run"}
    return stages


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dryrun", help="run every stage two steps with full-size models on the meta device; report peak memory")
    p.add_argument("--preset", default="standard", help="preset name (default: standard)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a preset option, as a job's options (repeatable), e.g. texture.render_size=1024")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                   help="precision of the priors (default bf16, what CUDA cards with bf16 run)")
    p.add_argument("--device", default="meta",
                   help="meta (default: shapes only, nothing computed), or a card (cuda, cuda:1) to run the same "
                        "thing for real and report the allocator's peak per stage beside the counted one")
    p.add_argument("--geometry", choices=("full", "small"), default="full",
                   help="the stages' own work at the preset's sizes, or at the tiny preset's (fast on a CPU)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dreampolish.protocol.errors import ValidationError

    try:
        options = _options(args)
        report = dry_run(args.preset, options, DTYPES[args.dtype], args.geometry, args.device)
    except (ValidationError, KeyError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    for stage, entry in report["stages"].items():
        status = f"ok   peak {entry['peak_gb']:.2f} GB" if entry["ok"] else f"FAILED  {entry['error']}"
        print(f"  {stage:<10} {status}")
    print(json.dumps(report))
    return 0 if all(e["ok"] for e in report["stages"].values()) else 1

