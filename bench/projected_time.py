"""Projected seconds per stage on one H100, counted on the CPU (issue 28 item 5).

    .venv/bin/python bench/projected_time.py --preset standard [--steps 3] [--geometry scaled|full|small] [-v]
    .venv/bin/python bench/projected_time.py --preset all          # draft, standard, high (and refine)

Runs a generate job of the preset through the real pipeline as `dreampolish-backend dryrun` does
(backend/commands/dryrun.py): DreamPolishPipeline with the configured priors at FULL SIZE, random weights,
bf16, on PyTorch's `meta` device (backend/models/full_size.py, nothing downloaded), the stages' own tensors
on the CPU. The guidance is the production one (priors.CombinedGuidance over the ScoreDistillation and
Zero123Guidance objects the dry run's priors build); the reference image and the Marigold estimators are
the dry run's meta stand-ins of the production loops.

Every optimisation stage runs `--steps` steps (default 4), so that every schedule runs from its start to
its end; a step's figures are the mean over the steps after the first (which builds optimiser state), so
they sample the stage's phases at evenly spaced points (NeRF: its 128 px renders, then its larger ones;
DMTet: 3 steps of 4 render normals, its counted steps 1-3 two normal ones and an albedo one). Stages that
alternate reference-only and guidance-only steps (NeRF, NeuS, texture with a reference view) count the
steps after their first two (_warm_up_steps): one of each kind. The reference stage (its diffusion sampling) and the export count as one step each.

Geometry (--geometry): a NeRF step at 384 px takes minutes on one CPU core, so by default ("scaled") the
stages render at 1/SCALE of the preset's sides with the same number of ray chunks (so the same ops), and
their own per-step FLOPs (fields, MLPs: one matmul row per ray sample or pixel) are multiplied by SCALE².
Grids (marching cubes, DMTet's tetrahedra, occupancy), sample counts, fields and the priors' inputs (the
priors resize renders to their own size) stay the preset's. "full" runs the preset's sizes (hours);
"small" the tiny preset's sizes, unscaled (the priors' share only).

What is counted, by one TorchDispatchMode and a TorchFunctionMode beside it:
- FLOPs: torch.utils.flop_counter's formulas (the registry FlopCounterMode applies: matmuls,
  convolutions, attention; forward and backward). Elementwise work has no formula: FLOPs here are the
  tensor-core work.
- ops: dispatched aten ops that launch a kernel in eager mode (views, `detach`, `empty` and other
  metadata-only ops are not counted). Code that runs only on the CPU counts as its GPU kernels: the
  PyTorch rasteriser (render/raster_torch.py; nvdiffrast on a GPU) and the hash grid's PyTorch path
  (geometry/hashgrid.py; Triton kernels on a GPU) count STANDIN_LAUNCHES per call, forward, backward and
  double backward (the autograd nodes they make are tagged), instead of their ops.
- host syncs: backend/host_syncs.HostSyncCounter (`.item()`, `float(t)`, `bool(t)`, boolean-mask
  indexing, `nonzero`, `unique`, `.cpu()`, `.tolist()`, ...; the rasteriser's own are excused), plus
  host<->device copies: a CPU tensor copied into, or indexing, a `meta` tensor, `torch.tensor(host data,
  device=...)` (on CUDA a blocking copy from pageable memory waits for the stream) and `.to("cpu")` of a
  meta tensor. A value read from `meta` (which has none) is counted and answered 0; the guidances'
  `scalar()` diagnostics (NaN on meta) count as the `float()` they are on CUDA. In the priors' code the
  device tensors are on `meta`, so a read of a CPU tensor there is a host tensor's, not a sync; in the
  stages' code every tensor is on the CPU and counts as a device tensor (as bench/host_syncs.py counts).
  The stages' own `.to(device)` of host tensors cannot be seen (the device is the CPU).
- steps that report (`report_every`: losses read back) weigh 1/report_every in the syncs per step.

What a stage does outside its steps (building fields, NeuS's and DMTet's initial fits, the polish
estimator's targets, the texture's PBR bake, mesh extraction) is counted once ("once"). Loops whose
tensors are identical from one iteration to the next run shortened and their counts are scaled to the
preset's iterations: SHORTENED_LOOPS (NeuS's and DMTet's initial fits) and SAMPLING_LOOPS (the priors'
denoising loops: one step run, its UNet's counts scaled). The polish estimator runs once per view of its
pool: its counts per view are scaled to the views a stage of the preset's length draws. The UV unwrap
runs on a decimated mesh (UNWRAP_FACES).

Projection, per stage (the assumptions are printed beside the figures):
    eager    = steps × (max(FLOPs / (EAGER_UTIL · PEAK), ops × LAUNCH_S) + syncs × SYNC_S)  + once
    compiled = steps × (max(FLOPs / (COMPILED_UTIL · PEAK), fused_ops × LAUNCH_S) + syncs × SYNC_S) + once
    launch floor = steps × ops × LAUNCH_S + once
with fused_ops the kernels left after fusion (FUSION). Not in the model: host-side work (numpy, xatlas,
PNG encoding), data-dependent sizes (the occupancy grid skips empty space only after its warm-up: these
steps sample everything), the periodic occupancy refreshes, previews, the memory traffic of elementwise
ops. It is an instrument to compare code before and after, not a measurement.

Ends with one JSON line per preset: {"preset", "stages": {stage: {"steps", "tflop_per_step",
"ops_per_step", "syncs_per_step", "eager_s", "compiled_s", ...}}, "total_eager_s", "total_compiled_s"}.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402
from torch.utils.flop_counter import flop_registry  # noqa: E402

log = logging.getLogger("projected_time")

# -- assumptions ---------------------------------------------------------------------------------------

PEAK_FLOPS = 989e12
"""H100 SXM, dense bf16 tensor-core peak (NVIDIA H100 datasheet: 1,979 TFLOPS with sparsity)."""
EAGER_UTIL = 0.08
"""Share of the peak eager PyTorch reaches on SD-class UNets at batch 1-2 (issue 28)."""
COMPILED_UTIL = 0.30
"""Share of the peak torch.compile / CUDA graphs reach on the same (issue 28)."""
LAUNCH_S = 5e-6
"""Host time per kernel launch in eager PyTorch: the launch-bound floor is ops × this."""
SYNC_S = 50e-6
"""Cost of one host sync: the queue drains and the CPU's launch lead is lost (a rough figure)."""
FUSION = ("extern kernels (ops with a FLOP formula: matmul, convolution, attention; sort/topk/nonzero/"
          "unique; the stand-in kernels) + one kernel per run of other ops between them")
"""How fused_ops is estimated: Inductor fuses chains of pointwise ops and reductions into one kernel and
calls libraries for matmuls and convolutions (optimistic: a chain with several reductions may need
several kernels)."""

STAGES = ("reference", "nerf", "neus", "dmtet", "polish", "texture", "export")
OPTIMISED = ("nerf", "neus", "dmtet", "polish", "texture")
PRESETS_ALL = ("draft", "standard", "high", "refine")
"""`--preset all`: these, where they exist (refine arrives with issue 28 item 4)."""

STANDIN_LAUNCHES: dict[str, tuple[str, int, int]] = {
    "raster": ("nvdiffrast", 2, 2),
    "hashgrid": ("Triton hash grid", 1, 1),
}
"""CPU-only code: (what runs on a GPU, kernel launches per call forward, per backward: first and double
backward alike). nvdiffrast: rasterise or antialias, with its attribute interpolation; the hash grid's
kernels (geometry/hashgrid_triton.py) are one each."""
STANDIN_CODE = {
    "raster": ("render/raster_torch.py", None),
    "hashgrid": ("geometry/hashgrid.py", frozenset({"_torch_forward", "_dense_level", "_corner_index"})),
}
"""Where the CPU-only code lives: (file ending, function names or None for the whole file)."""

SHORTENED_LOOPS: dict[str, tuple[str, str, int]] = {
    "neus": ("neus.init_steps", "fit_sdf_field", 2),
    "dmtet": ("dmtet.color_init_steps", "fit_color_field", 2),
}
"""Stage: (option, function holding the loop, iterations run). Each iteration fits the same batch size
of points: its tensors are identical step to step, so its counts scale with the iterations."""

UNWRAP_FACES = 20_000
"""The texture stage's UV unwrap (xatlas: host work, outside the model) runs on the mesh decimated to at
most this many faces (texture.simplify_to_faces): on the random-weight DMTet surface at the preset's grid
it takes longer than the rest of the projection. A step's op count does not depend on the face count."""

SAMPLING_LOOPS: dict[str, tuple[str, str]] = {
    "reference.generation.num_inference_steps": ("reference", "t2i"),
    "reference.generation.estimator.num_inference_steps": ("reference", "marigold"),
    "polish.estimator.num_inference_steps": ("polish", "marigold"),
    "texture.pbr.intrinsics.num_inference_steps": ("texture", "marigold"),
}
"""The priors' denoising loops (option: stage, UNet): one UNet call per step on latents of one shape, run
with 1 step and their UNet's counts scaled to the preset's steps (None: Marigold's default)."""

TAG = "projected_time"
"""Key of the stand-in tag (kind, call) in an autograd node's metadata."""

NO_KERNEL = frozenset({
    "aten.detach", "aten.alias", "aten.lift_fresh", "aten.empty", "aten.empty_strided", "aten.empty_like",
    "aten.new_empty", "aten.new_empty_strided", "aten.set_", "aten.resize_", "aten._local_scalar_dense",
    "aten.is_same_size", "aten._has_compatible_shallow_copy_type", "prim.device", "prim.layout",
    "aten.size", "aten.stride", "aten.numel", "aten.dim", "aten.is_contiguous", "aten.storage_offset",
    "aten.sym_size", "aten.sym_stride", "aten.sym_numel", "aten.sym_storage_offset",
})
"""aten ops that launch no kernel (metadata, allocation); views are recognised by their schema."""
EXTERN = frozenset({"aten.sort", "aten.topk", "aten.nonzero", "aten._unique2", "aten.unique_dim",
                    "aten.unique_consecutive", "aten.masked_select", "aten._local_scalar_dense"})
"""Ops that stay their own kernel (or a sync) under compilation, besides those with a FLOP formula."""


# -- counting ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Tally:
    """Counts of one interval (or, cumulative, of a bucket)."""

    flops: float = 0.0
    geometry_flops: float = 0.0
    """The part of `flops` the stages' own code does (fields, renders): the rest is the priors'."""
    ops: float = 0.0
    fused: float = 0.0
    syncs: float = 0.0
    syncs_by_op: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, other: Tally, scale: float = 1.0) -> None:
        self.flops += scale * other.flops
        self.geometry_flops += scale * other.geometry_flops
        self.ops += scale * other.ops
        self.fused += scale * other.fused
        self.syncs += scale * other.syncs
        for k, v in other.syncs_by_op.items():
            self.syncs_by_op[k] += scale * v

    def minus(self, other: Tally) -> Tally:
        out = Tally()
        out.add(self)
        out.add(other, -1.0)
        return out

    def copy(self) -> Tally:
        out = Tally()
        out.add(self)
        return out


def _packet(func: Any) -> str:
    name = func.name().replace("::", ".")
    return ".".join(name.split(".")[:2])


def _is_view(func: Any) -> bool:
    return bool(getattr(func, "is_view", False))


class Counts:
    """Cumulative counts by bucket ("main", "estimator", and a SHORTENED_LOOPS function's name)."""

    def __init__(self) -> None:
        self.buckets: dict[str, Tally] = collections.defaultdict(Tally)
        self.bucket = "main"
        """Set by the priors' wrappers (the estimator) and by the function layer (the shortened loops)."""
        self.region: str | None = None
        """The stand-in ("raster", "hashgrid") the current torch call comes from, or None."""
        self.on_meta = False
        """In code whose device tensors are all on `meta` (the priors): its CPU tensors are host tensors."""
        self.host_method = False
        """Inside `.cpu()`, `.tolist()`, `.numpy()`: HostSyncCounter counts those."""
        self.skip_sync = False
        """The next sync HostSyncCounter records reads a host tensor (under on_meta): not a sync."""
        self.sampling = False
        """In a prior's denoising loop (SAMPLING_LOOPS): its UNet's counts go to their own bucket."""
        self.paused = 0
        self.standin_calls: collections.Counter[str] = collections.Counter()
        self.recorder: Any = None
        """The HostSyncCounter (sync_counter) while counting."""
        self.label = "start"
        """The stage the last progress event named ("between stages" after a stage's result): stacks' key."""
        self.stacks: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.pending: tuple[list[torch.Tensor], tuple[str, str]] | None = None
        self._fused_open = False
        self._bwd_seen: set[Any] = set()

    def snapshot(self) -> dict[str, Tally]:
        return {k: v.copy() for k, v in self.buckets.items()}

    def launch(self, tally: Tally, extern: bool, n: int = 1) -> None:
        """Count `n` kernel launches; extern ones (and the first op of a run) are a fused kernel each."""
        tally.ops += n
        if extern:
            tally.fused += n
            self._fused_open = False
        elif not self._fused_open:
            tally.fused += 1
            self._fused_open = True

    def tag_pending(self) -> None:
        """Tag the autograd nodes made by the last op of a stand-in's backward run with create_graph (its
        outputs get their grad_fn after the dispatch returns)."""
        if self.pending is not None:
            tensors, tag = self.pending
            self.pending = None
            for t in tensors:
                if t.grad_fn is not None and TAG not in t.grad_fn.metadata:
                    t.grad_fn.metadata[TAG] = tag

    def sync(self, op: str) -> None:
        """A sync this module found (host<->device copies, `scalar()`): through HostSyncCounter's record,
        which excuses the CPU-only rasteriser's and keeps stacks."""
        if self.recorder is not None:
            self.recorder.record(op)
        else:
            self.count_sync(op)

    def count_sync(self, op: str) -> None:
        tally = self.buckets[self.bucket]
        tally.syncs += 1
        tally.syncs_by_op[op] += 1
        self._fused_open = False  # a sync ends a compiled graph


def sync_counter(counts: Counts, keep_stacks: bool = False) -> Any:
    """backend/host_syncs.HostSyncCounter whose counts also go to the current bucket, without the reads of
    host tensors in the priors' code (there the device tensors are on `meta`, so a CPU tensor is a host
    one; in the stages' code every tensor is on the CPU and counts as a device tensor)."""
    from dreampolish.backend.host_syncs import CPU_ONLY_FILES, HostSyncCounter

    class BucketedSyncs(HostSyncCounter):
        def record(self, op: str) -> None:
            if counts.paused or counts.skip_sync:
                counts.skip_sync = False
                return
            before = sum(self.excused.values())
            super().record(op)
            if sum(self.excused.values()) == before:
                counts.count_sync(op)
            counts.stacks[counts.label].update(self.stacks)
            self.stacks.clear()

    counter = BucketedSyncs(keep_stacks=keep_stacks, excuse=CPU_ONLY_FILES)
    counts.recorder = counter
    return counter


def _meta(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "meta"


def _cpu(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "cpu"


class MetaScalars(TorchDispatchMode):
    """Answers a value read from a `meta` tensor (which holds none) with zeros, so that production code
    that reads one back (a sync on CUDA, counted by the inner modes) carries on."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and _meta(args[0]):
            dtype = args[0].dtype
            return False if dtype == torch.bool else (0.0 if dtype.is_floating_point else 0)
        if func is torch.ops.aten._to_copy.default and _meta(args[0]) and _to_cpu(kwargs):
            return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        if func is torch.ops.aten.copy_.default and _cpu(args[0]) and _meta(args[1]):
            return args[0].zero_()
        return func(*args, **kwargs)


def _to_cpu(kwargs: dict) -> bool:
    device = kwargs.get("device")
    return device is not None and torch.device(device).type == "cpu"


class _OpLayer(TorchDispatchMode):
    """Counts FLOPs, kernel launches and host<->device copies of every op into the current bucket."""

    def __init__(self, counts: Counts):
        super().__init__()
        self.counts = counts
        from dreampolish.backend.host_syncs import SYNC_ATEN_OPS

        self.sync_ops = SYNC_ATEN_OPS

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        c = self.counts
        if c.paused:
            return func(*args, **kwargs)
        packet = _packet(func)
        if c.on_meta and (packet in self.sync_ops or packet in _MASK_OPS) and not any(
                _meta(t) for t in tree_leaves((args, kwargs))):
            c.skip_sync = True  # a host tensor's value: no wait on CUDA
        c.tag_pending()
        out = func(*args, **kwargs)
        c.skip_sync = False
        if packet in NO_KERNEL or _is_view(func):
            return out
        region, bucket = c.region, c.bucket
        node = torch._C._current_autograd_node()
        if node is not None:  # the backward of a stand-in's op is the stand-in's backward kernel
            tag = node.metadata.get(TAG)
            region = None
            if tag is not None:
                region, call = tag
                if call not in c._bwd_seen:
                    c._bwd_seen.add(call)
                    c.launch(c.buckets[bucket], True, STANDIN_LAUNCHES[region][2])
                if torch.is_grad_enabled():  # create_graph: its own backward is the stand-in's double backward
                    c.pending = ([t for t in tree_leaves(out) if isinstance(t, torch.Tensor)], (region, f"{call}'"))
        tally = c.buckets[bucket]
        packet_obj = func._overloadpacket
        if packet_obj in flop_registry:
            flops = flop_registry[packet_obj](*args, **kwargs, out_val=out)
            tally.flops += flops
            if not c.on_meta:
                tally.geometry_flops += flops
        if region is None:
            c.launch(tally, packet_obj in flop_registry or packet in EXTERN)
        if _host_to_device(args, kwargs, out):
            c.sync("host-to-device copy")
        elif not c.host_method and _device_to_host(func, args, kwargs):
            c.sync("device-to-host copy")
        return out


_MASK_OPS = frozenset({"aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"})


def _host_to_device(args: tuple, kwargs: dict, out: Any) -> bool:
    """Whether an op makes a `meta` tensor from a CPU tensor of more than one element (a copy on CUDA:
    `.to(device)`, `copy_`, indexing a device tensor with host indices)."""
    outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    if not outs or not _meta(outs[0]):
        return False
    return any(_cpu(t) and t.dim() > 0 for t in tree_leaves((args, kwargs)))


def _device_to_host(func: Any, args: tuple, kwargs: dict) -> bool:
    """`.to("cpu")` of a `meta` tensor, or a blocking copy_ of one into a CPU tensor."""
    if func is torch.ops.aten._to_copy.default:
        return _meta(args[0]) and _to_cpu(kwargs)
    if func is torch.ops.aten.copy_.default:
        non_blocking = kwargs.get("non_blocking", args[2] if len(args) > 2 else False)
        return _cpu(args[0]) and _meta(args[1]) and not non_blocking
    return False


class _FunctionLayer(TorchFunctionMode):
    """Finds where each torch call comes from (a stand-in, a shortened loop), counts a stand-in call's
    kernels once and tags the autograd nodes it makes; counts `torch.tensor(data, device=...)` of host
    data as a host-to-device copy."""

    def __init__(self, counts: Counts):
        super().__init__()
        self.counts = counts
        self._last_call: Any = None
        self._call_id = 0
        self._loops = {fn for _, fn, _ in SHORTENED_LOOPS.values()}
        self._kinds: dict[Any, str | None] = {}

    def _where(self) -> tuple[str | None, Any, str | None]:
        """(stand-in kind, the outermost frame of it, shortened loop's function name) of the calling code."""
        frame = sys._getframe(2)
        region = outer = loop = None
        while frame is not None:
            code = frame.f_code
            if code not in self._kinds:
                self._kinds[code] = _standin_of(code.co_filename, code.co_name)
            kind = self._kinds[code]
            if kind is not None and region in (None, kind):
                region, outer = kind, frame
            elif code.co_name in self._loops and code.co_filename.endswith("transitions.py"):
                loop = code.co_name
            frame = frame.f_back
        return region, outer, loop

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        c = self.counts
        if c.paused:
            return func(*args, **kwargs)
        region, outer, loop = (None, None, None) if c.on_meta else self._where()
        saved = c.region, c.bucket
        c.region = region
        if loop is not None and c.bucket == "main":
            c.bucket = loop
        if region is not None and outer is not self._last_call:
            self._last_call = outer
            self._call_id += 1
            c.standin_calls[region] += 1
            c.launch(c.buckets[c.bucket], True, STANDIN_LAUNCHES[region][1])
        if func in (torch.tensor, torch.as_tensor) and kwargs.get("device") is not None:
            data = args[0] if args else kwargs.get("data")
            if not isinstance(data, torch.Tensor):
                c.sync("torch.tensor(host data, device=)")
        method = getattr(func, "__name__", "")
        host_method = method in ("cpu", "tolist", "numpy")
        if host_method and c.on_meta and args and not _meta(args[0]):
            c.skip_sync = True  # a host tensor's values: no wait on CUDA
        saved_method, c.host_method = c.host_method, c.host_method or host_method
        try:
            out = func(*args, **kwargs)
        finally:
            c.region, c.bucket, c.host_method = saved[0], saved[1], saved_method
            c.skip_sync = False
        if region is not None:
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                    t.grad_fn.metadata[TAG] = (region, self._call_id)
        return out


def _standin_of(filename: str, function: str) -> str | None:
    for kind, (ending, functions) in STANDIN_CODE.items():
        if filename.endswith(ending) and (functions is None or function in functions):
            return kind
    return None


@contextlib.contextmanager
def counting(counts: Counts, keep_stacks: bool = False) -> Iterator[Any]:
    """Every counter active, innermost last (each dispatch mode sees the op before the one entered before
    it): meta scalars answered, syncs counted, ops counted. Yields the sync counter."""
    syncs = sync_counter(counts, keep_stacks)
    with MetaScalars(), syncs, _counted_scalars(counts), unet_buckets(counts), _FunctionLayer(counts), \
            _OpLayer(counts):
        yield syncs


@contextlib.contextmanager
def _counted_scalars(counts: Counts) -> Iterator[None]:
    """The guidances' `scalar(x)` reads a diagnostic back (`float(x)`, a sync on CUDA) and answers NaN on
    `meta` without touching it: counted here as the sync it is on CUDA."""
    from dreampolish.backend.guidance import score_distillation, zero123

    patched = []
    for module in (score_distillation, zero123):
        original = getattr(module, "scalar", None)
        if original is None:
            continue

        def counted(x: Any, _original: Any = original) -> Any:
            value = _original(x)
            if isinstance(value, float) and isinstance(x, torch.Tensor) and x.device.type == "meta":
                counts.sync("scalar() on the device")
            return value

        module.scalar = counted
        patched.append((module, original))
    try:
        yield
    finally:
        for module, original in patched:
            module.scalar = original


@contextlib.contextmanager
def paused(counts: Counts) -> Iterator[None]:
    """Work that exists only because the dry run keeps the stages on the CPU (moving a render to `meta`)."""
    counts.paused += 1
    try:
        yield
    finally:
        counts.paused -= 1


@contextlib.contextmanager
def on_meta(counts: Counts, bucket: str | None = None, sampling: bool = False) -> Iterator[None]:
    """The priors' code (its device tensors on `meta`), its counts in `bucket` (default: the current);
    `sampling`: a denoising loop (SAMPLING_LOOPS)."""
    saved = counts.bucket, counts.on_meta, counts.sampling
    counts.bucket, counts.on_meta, counts.sampling = bucket or counts.bucket, True, sampling
    try:
        yield
    finally:
        counts.bucket, counts.on_meta, counts.sampling = saved


@contextlib.contextmanager
def unet_buckets(counts: Counts) -> Iterator[None]:
    """Inside a denoising loop, each UNet call's counts go to "<bucket>|unet:<t2i or marigold>"."""
    stack: list[str] = []

    def before(module: Any, args: Any) -> None:
        if counts.sampling and type(module).__name__ == "UNet2DConditionModel":
            stack.append(counts.bucket)
            kind = "t2i" if module.config.in_channels == 4 else "marigold"
            counts.bucket = f"{counts.bucket}|unet:{kind}"

    def after(module: Any, args: Any, out: Any) -> None:
        if counts.sampling and type(module).__name__ == "UNet2DConditionModel" and stack:
            counts.bucket = stack.pop()

    handles = [torch.nn.modules.module.register_module_forward_pre_hook(before),
               torch.nn.modules.module.register_module_forward_hook(after)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# -- the job --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Event:
    kind: str  # "step" (a step's end), "progress", "result"
    stage: str
    step: int
    reported: bool
    snapshot: dict[str, Tally]
    clock: float


class ProjectionContext:
    """pipeline_api.JobContext that snapshots the counts at every step's end (StageProgress's `step_end`
    hook where it has one, else every progress report, which then came every step) and stage's end."""

    def __init__(self, work_dir: Path, counts: Counts):
        self.job_id = "projection"
        self.work_dir = work_dir
        self.device = "cpu"
        self.counts = counts
        self.events: list[Event] = []
        self.current = "reference"

    def _event(self, kind: str, stage: str, step: int, reported: bool = True) -> None:
        self.current = stage
        if kind != "start of step":
            self.counts.label = "between stages" if kind == "result" else stage
        now = time.perf_counter()
        if self.events and kind != "start of step":
            log.info("%s %s %d (%.1f s)", stage, kind, step, now - self.events[-1].clock)
        self.events.append(Event(kind, stage, int(step), reported, self.counts.snapshot(), now))

    def step_end(self, stage: str, step: int, total: int, reported: bool) -> None:
        self._event("step", stage, step, reported)

    def progress(self, stage, step, total, losses=None, preview_png=None) -> None:
        self._event("progress", stage, step)
        if stage == "reference" and step >= total > 0:
            self._event("result", stage, step)  # the reference stage sends no mesh

    def stage_result(self, stage, index, mesh) -> None:
        self._event("result", stage, 0)

    def check_cancel(self) -> None:
        """Stages call it first thing in every step: the last call before a stage's first step end is
        where that step began."""
        self._event("start of step", self.current, 0)


class ProjectedGuidance:
    """The production CombinedGuidance over the dry run's meta guidances, fed the stage's render moved to
    `meta` (outside the count: on a GPU the render is already there); its backward runs here, as the
    stage's backward would run it, and the stage gets a zero loss on its own device."""

    def __init__(self, parts: list[tuple[str, float, Any]], counts: Counts):
        from dreampolish.backend.pipeline.priors import CombinedGuidance

        self.combined = CombinedGuidance(parts)
        self.counts = counts

    def release(self) -> None:
        self.combined.release()

    def __call__(self, inp: Any) -> Any:
        from dreampolish.backend.guidance.base import GuidanceOutput

        meta = torch.device("meta")
        with paused(self.counts):
            def move(t: Any) -> Any:
                return None if t is None else t.detach().to(meta).requires_grad_(t.requires_grad)

            moved = dataclasses.replace(inp, rgb=move(inp.rgb), opacity=move(inp.opacity), colour=move(inp.colour),
                                        normal=move(inp.normal), cameras=inp.cameras.to(meta))
        with on_meta(self.counts):
            out = self.combined(moved)
            if out.loss.requires_grad:
                out.loss.backward()
        with paused(self.counts):
            zero = inp.rgb.sum() * 0.0
            diagnostics = {k: torch.zeros(()) if isinstance(v, torch.Tensor) else v
                           for k, v in out.diagnostics.items()}
        return GuidanceOutput(zero, diagnostics)


class CountedEstimator:
    """A polish normal estimator whose work goes to the "estimator" bucket, with the views it estimated."""

    def __init__(self, inner: Any, counts: Counts):
        self.inner = inner
        self.counts = counts
        self.views = 0

    def __call__(self, rgb, opacity, cameras):
        self.views += int(rgb.shape[0])
        with on_meta(self.counts, "estimator", sampling=True):
            return self.inner(rgb, opacity, cameras)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class OnMeta:
    """A prior's callable run as the priors' code (Counts.on_meta)."""

    def __init__(self, inner: Any, counts: Counts):
        self.inner = inner
        self.counts = counts

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with on_meta(self.counts, sampling=True):
            return self.inner(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def projection_priors(counts: Counts) -> Any:
    """The dry run's priors (backend/commands/dryrun_meta.py: the production DiffusionPriors on `meta`) with
    the production CombinedGuidance's parts counted and the estimator counted apart."""
    from dreampolish.backend.commands.dryrun_meta import MetaDiffusionPriors

    class ProjectionPriors(MetaDiffusionPriors):
        def __init__(self) -> None:
            super().__init__(torch.bfloat16, None)
            self.estimator: CountedEstimator | None = None

        def geometry_guidance(self, *args: Any, **kwargs: Any) -> ProjectedGuidance:
            return ProjectedGuidance(super().geometry_guidance(*args, **kwargs).inner.parts, counts)

        def texture_guidance(self, *args: Any, **kwargs: Any) -> ProjectedGuidance:
            return ProjectedGuidance(super().texture_guidance(*args, **kwargs).inner.parts, counts)

        def reference(self, *args: Any, **kwargs: Any) -> Any:
            with on_meta(counts, sampling=True):
                return super().reference(*args, **kwargs)

        def intrinsics(self, preset: Any, seed: int) -> Any:
            return OnMeta(super().intrinsics(preset, seed), counts)

        def normal_targets(self, preset: Any, seed: int) -> CountedEstimator:
            self.estimator = CountedEstimator(super().normal_targets(preset, seed), counts)
            return self.estimator

    return ProjectionPriors()


SCALE = 8
"""--geometry scaled: render sides divided by this, so that a step's field and render work is 1/SCALE² of
the preset's (a 384 px NeRF step takes minutes on one core); volume renders keep their number of ray
chunks (chunk_rays / SCALE²), so their ops are the preset's, and the stages' per-step FLOPs are multiplied
by SCALE² (every matmul of a field runs once per ray sample or pixel). Every preset's render sides are
multiples of 128, so the sides stay whole."""
SCALED_SIDES = ("nerf.resolution.low", "nerf.resolution.high", "nerf.reference.resolution",
                "neus.resolution.low", "neus.resolution.high", "neus.reference.resolution",
                "dmtet.resolution.low", "dmtet.resolution.high", "dmtet.reference.resolution",
                "polish.render_size", "texture.render_size", "texture.pbr.render_size")
SCALED_CHUNKS = ("nerf.render.chunk_rays", "neus.render.chunk_rays")


def preset_for(name: str, geometry: str) -> Any:
    """The named preset (ValidationError for an unknown one). geometry "scaled": render sizes / SCALE;
    "small": its stages' own work at the tiny preset's sizes and the priors at full size (as `dryrun
    --geometry small`), the preset's step counts kept."""
    from dreampolish.backend.commands.dryrun import _small_geometry
    from dreampolish.backend.config_values import apply_options
    from dreampolish.backend.presets import get_preset

    preset = get_preset(name)
    if geometry == "scaled":
        options: dict[str, Any] = {}
        for path in SCALED_SIDES:
            side = _option_value(preset, path)
            if side is not None:
                if side % SCALE:
                    raise ValueError(f"{name}: {path} = {side} is not a multiple of {SCALE}; use --geometry full")
                options[path] = side // SCALE
        for path in SCALED_CHUNKS:
            options[path] = max(_option_value(preset, path) // SCALE**2, 1)
        return apply_options(preset, options)
    if geometry != "small":
        return preset
    small = _small_geometry(preset)
    stages = {s: dataclasses.replace(getattr(small, s), steps=getattr(preset, s).steps) for s in OPTIMISED}
    return dataclasses.replace(small, **stages)


def run_job(preset: Any, steps: int, keep_stacks: bool = False) -> tuple[ProjectionContext, Counts, Any, float]:
    """Run `preset` with `steps` steps per optimisation stage under the counters."""
    from dreampolish.backend.pipeline import DreamPolishPipeline
    from dreampolish.protocol.job import JobSpec

    options: dict[str, Any] = {f"{s}.steps": steps for s in OPTIMISED}
    options["preview_every"] = 0
    for option, _, iterations in SHORTENED_LOOPS.values():
        options[option] = iterations
    options.update({option: 1 for option in SAMPLING_LOOPS})
    faces = preset.texture.simplify_to_faces
    options["texture.simplify_to_faces"] = min(faces, UNWRAP_FACES) if faces else UNWRAP_FACES
    if preset.refines_only:
        # A refine preset runs on a mesh the artist sends: a sphere of the object frame's size stands in.
        import numpy as np
        import trimesh
        from dreampolish.protocol.scene import MeshPayload

        sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
        mesh = MeshPayload(vertices=np.asarray(sphere.vertices, np.float32), faces=np.asarray(sphere.faces, np.uint32))
        spec = JobSpec(prompt="a projection of the preset", preset="projection", mode="geometry", input_mesh=mesh,
                       options=options)
    else:
        spec = JobSpec(prompt="a projection of the preset", preset="projection", options=options)
    counts = Counts()
    priors = projection_priors(counts)
    pipeline = DreamPolishPipeline(presets={"projection": lambda: preset}, priors=priors)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dreampolish-projection-") as work:
        ctx = ProjectionContext(Path(work), counts)
        ctx._event("start", "reference", 0)
        with counting(counts, keep_stacks):
            pipeline.run(spec, ctx)
    return ctx, counts, priors, time.perf_counter() - started


# -- the projection -------------------------------------------------------------------------------------

def _diff(after: dict[str, Tally], before: dict[str, Tally], bucket: str = "main") -> Tally:
    return after.get(bucket, Tally()).minus(before.get(bucket, Tally()))


def _mean(tallies: list[Tally]) -> Tally:
    out = Tally()
    for t in tallies:
        out.add(t, 1.0 / len(tallies))
    return out


def seconds(t: Tally, steps: float = 1.0) -> dict[str, float]:
    """Projected seconds of `steps` repetitions of the work `t` (module docstring)."""
    sync = t.syncs * SYNC_S
    return {
        "eager_s": steps * (max(t.flops / (EAGER_UTIL * PEAK_FLOPS), t.ops * LAUNCH_S) + sync),
        "compiled_s": steps * (max(t.flops / (COMPILED_UTIL * PEAK_FLOPS), t.fused * LAUNCH_S) + sync),
        "flop_bound_eager_s": steps * t.flops / (EAGER_UTIL * PEAK_FLOPS),
        "launch_floor_s": steps * t.ops * LAUNCH_S,
        "sync_s": steps * sync,
    }


def stage_figures(ctx: ProjectionContext, preset: Any, priors: Any, measured_steps: int,
                  pixel_scale: float = 1.0) -> dict[str, Any]:
    """Per stage: the preset's steps, the mean steady step (its stage-side FLOPs times `pixel_scale`), the
    once work and the projected seconds."""
    windows: dict[str, tuple[Event, Event]] = {}
    start = ctx.events[0]
    for e in ctx.events:
        if e.kind == "result" and e.stage not in windows:
            windows[e.stage] = (start, e)
            start = e
    out: dict[str, Any] = {}
    for stage in STAGES:
        if stage not in windows:
            continue
        first, last = windows[stage]
        scales, notes = _bucket_scales(stage, preset, priors)
        if stage not in OPTIMISED:
            step = _scaled_buckets(last.snapshot, first.snapshot, scales, with_main=True)
            out[stage] = _figures(1, step, Tally(), last.clock - first.clock, notes)
            continue
        inside = [e for e in ctx.events if first.clock <= e.clock <= last.clock
                  and (e.stage == stage or e.kind == "start of step")]
        step, counted = _mean_step(inside, preset, measured_steps, _warm_up_steps(stage, preset))
        once = _diff(last.snapshot, first.snapshot).minus(counted)
        step.flops += (pixel_scale - 1) * step.geometry_flops
        step.geometry_flops *= pixel_scale
        for name in ("flops", "ops", "fused", "syncs"):
            setattr(once, name, max(getattr(once, name), 0.0))
        once.add(_scaled_buckets(last.snapshot, first.snapshot, scales, with_main=False))
        out[stage] = _figures(int(getattr(preset, stage).steps), step, once, last.clock - first.clock, notes)
    return out


def _warm_up_steps(stage: str, preset: Any) -> int:
    """Steps of a stage not counted in its mean: the first, which builds optimiser state; in a stage that
    alternates reference-only and guidance-only steps (stages/step.py reference_or_guidance) the first
    period, so that the first guidance step (the guidance's own set-up: LoRA adapters, their optimiser) is
    not counted either, and the counted steps hold both kinds in the stage's proportion."""
    cfg = getattr(preset, stage)
    every = cfg.alternate_every if stage == "texture" else getattr(getattr(cfg, "reference", None),
                                                                    "alternate_every", 0)
    has_reference = not preset.refines_only  # a refine job has no reference view: guidance every step
    return every if every >= 2 and has_reference else 1


def _mean_step(inside: list[Event], preset: Any, measured_steps: int, warm_up: int = 1) -> tuple[Tally, Tally]:
    """The mean of a stage's steps after its `warm_up` first ("main" bucket), and the counts of all its
    steps together. Syncs: the steps that report (read losses back) weigh 1/report_every, as in a stage of
    the preset's length."""
    ends = [e for e in inside if e.kind == "step"]
    if not ends:  # code without the step_end hook reported every step
        ends = [e for e in inside if e.kind == "progress" and 1 <= e.step <= measured_steps]
    starts = [e for e in inside if e.kind == "start of step" and e.clock <= ends[0].clock]
    first = starts[-1] if starts else inside[0]
    if len(ends) <= warm_up:
        raise RuntimeError(f"{len(ends)} steps measured, {warm_up} of them warm-up: raise --steps")
    per_step = [(e.reported, _diff(e.snapshot, prev.snapshot))
                for prev, e in zip(ends[warm_up - 1:], ends[warm_up:])]
    step = _mean([t for _, t in per_step])
    plain = [t for reported, t in per_step if not reported]
    reporting = [t for reported, t in per_step if reported]
    if plain:
        quiet = _mean(plain)
        share = 1 / max(int(preset.report_every), 1) if reporting else 0.0
        step.syncs = (1 - share) * quiet.syncs + (share * _mean(reporting).syncs if reporting else 0.0)
        step.syncs_by_op = quiet.syncs_by_op
    return step, _diff(ends[-1].snapshot, first.snapshot)


def _bucket_scales(stage: str, preset: Any, priors: Any) -> tuple[dict[str, float], list[str]]:
    """Factors from what ran to what the preset runs, by bucket name part, with a note for each."""
    from dreampolish.backend.models.full_size import MARIGOLD_DENOISING_STEPS

    scales: dict[str, float] = {}
    notes: list[str] = []
    for option, (owner, kind) in SAMPLING_LOOPS.items():
        if owner == stage:
            full = _option_value(preset, option) or MARIGOLD_DENOISING_STEPS
            scales[f"|unet:{kind}"] = float(full)
            notes.append(f"{kind} UNet: 1 denoising step of {full} run, scaled")
    if stage in SHORTENED_LOOPS:
        option, function, ran = SHORTENED_LOOPS[stage]
        full = _option_value(preset, option)
        scales[function] = full / ran
        notes.append(f"{function}: {ran} of {full} iterations run, scaled")
    estimator = getattr(priors, "estimator", None)
    if stage == "polish" and estimator is not None and estimator.views:
        views = _polish_views(preset.polish)
        scales["estimator"] = views / estimator.views
        notes.append(f"estimator: {estimator.views} views run, scaled to the {views:.1f} a stage estimates")
    return scales, notes


def _scaled_buckets(after: dict[str, Tally], before: dict[str, Tally], scales: dict[str, float],
                    with_main: bool) -> Tally:
    """The buckets' counts between two snapshots, each times the factors of its name's parts ("main"
    itself only `with_main`)."""
    out = Tally()
    for bucket in set(after) | set(before):
        if bucket == "main" and not with_main:
            continue
        factor = 1.0
        for part, scale in scales.items():
            if part in bucket:
                factor *= scale
        out.add(_diff(after, before, bucket), factor)
    return out


def _option_value(preset: Any, dotted: str) -> int | None:
    node = preset
    for part in dotted.split("."):
        node = getattr(node, part)
    return None if node is None else int(node)


def _polish_views(cfg: Any) -> float:
    """Views the polish estimator estimates in a stage: every step's batch without a pool; with a pool of P
    views and B draws a step for N steps, the expected distinct views drawn, P(1 - (1 - 1/P)^(N·B))."""
    draws = cfg.steps * cfg.batch_size
    if cfg.view_pool <= 0:
        return float(draws)
    return cfg.view_pool * (1 - (1 - 1 / cfg.view_pool) ** draws)


def _figures(steps: int, step: Tally, once: Tally, wall: float, notes: list[str]) -> dict[str, Any]:
    per = seconds(step, steps)
    extra = seconds(once)
    return {
        "steps": steps,
        "tflop_per_step": round(step.flops / 1e12, 4),
        "geometry_tflop_per_step": round(step.geometry_flops / 1e12, 4),
        "ops_per_step": round(step.ops, 1),
        "fused_ops_per_step": round(step.fused, 1),
        "syncs_per_step": round(step.syncs, 2),
        "eager_s": round(per["eager_s"] + extra["eager_s"], 2),
        "compiled_s": round(per["compiled_s"] + extra["compiled_s"], 2),
        "launch_floor_s": round(per["launch_floor_s"] + extra["launch_floor_s"], 2),
        "flop_bound_eager_s": round(per["flop_bound_eager_s"] + extra["flop_bound_eager_s"], 2),
        "sync_s": round(per["sync_s"] + extra["sync_s"], 3),
        "once_tflop": round(once.flops / 1e12, 3),
        "once_ops": round(once.ops),
        "once_syncs": round(once.syncs, 1),
        "once_eager_s": round(extra["eager_s"], 2),
        "syncs_by_op": {k: round(v, 2) for k, v in step.syncs_by_op.most_common() if v > 0},
        "cpu_wall_s": round(wall, 1),
        "notes": notes,
    }


def project(name: str, steps: int = 3, geometry: str = "scaled", keep_stacks: bool = False) -> dict[str, Any]:
    """The projection of preset `name` as a JSON-able dict (the script's last line)."""
    preset = preset_for(name, geometry)
    ctx, counts, priors, wall = run_job(preset, steps, keep_stacks)
    stages = stage_figures(ctx, preset, priors, steps, SCALE**2 if geometry == "scaled" else 1.0)
    from dreampolish.backend.pipeline import DreamPolishPipeline

    expected = DreamPolishPipeline().mode_stages("geometry" if preset.refines_only else "generate")
    missing = [s for s in STAGES if s in expected and s not in stages]
    if missing:
        raise RuntimeError(f"the job ended before stage(s) {', '.join(missing)} finished")
    return {
        "preset": name, "geometry": geometry, "measured_steps": steps, "stages": stages,
        "total_eager_s": round(sum(s["eager_s"] for s in stages.values()), 1),
        "total_compiled_s": round(sum(s["compiled_s"] for s in stages.values()), 1),
        "total_launch_floor_s": round(sum(s["launch_floor_s"] for s in stages.values()), 1),
        "standin_calls": dict(counts.standin_calls), "wall_s": round(wall, 1),
        "stacks": {k: dict(v.most_common(40)) for k, v in counts.stacks.items() if v},
    }


def assumptions() -> list[str]:
    return [
        f"H100 SXM bf16 dense peak {PEAK_FLOPS / 1e12:.0f} TFLOP/s; eager at {EAGER_UTIL:.0%} of it, "
        f"compiled at {COMPILED_UTIL:.0%}",
        f"launch {LAUNCH_S * 1e6:.0f} us per kernel (launch floor = ops x that); host sync {SYNC_S * 1e6:.0f} us",
        f"compiled kernels (fused ops) = {FUSION}",
        "CPU-only code counted as its GPU kernels per call: "
        + ", ".join(f"{v[0]} {v[1]} fwd + {v[2]} bwd" for v in STANDIN_LAUNCHES.values()),
        "stage seconds = steps x per-step + once (setup, initial fits, estimator targets, bake, extraction)",
        "not modelled: host-side numpy/xatlas/PNG work, occupancy refreshes, previews, elementwise memory traffic",
    ]


def print_report(report: dict[str, Any]) -> None:
    print(f"\npreset {report['preset']} (geometry {report['geometry']}, {report['measured_steps']} steps "
          f"counted per stage, {report['wall_s']:.0f} s on this CPU)")
    head = (f"  {'stage':9} {'steps':>6} {'TFLOP/step':>10} {'ops/step':>9} {'fused/step':>10} {'syncs/step':>10} "
            f"{'once TFLOP':>10} {'eager s':>8} {'compiled s':>10} {'launch floor s':>14} {'bound':>6} {'CPU s':>6}")
    print(head)
    for stage, s in report["stages"].items():
        bound = "FLOP" if s["flop_bound_eager_s"] >= s["launch_floor_s"] else "launch"
        print(f"  {stage:9} {s['steps']:>6} {s['tflop_per_step']:>10.3f} {s['ops_per_step']:>9.0f} "
              f"{s['fused_ops_per_step']:>10.0f} {s['syncs_per_step']:>10.2f} {s['once_tflop']:>10.1f} "
              f"{s['eager_s']:>8.1f} {s['compiled_s']:>10.1f} {s['launch_floor_s']:>14.1f} {bound:>6} {s['cpu_wall_s']:>6.0f}")
    print(f"  {'total':9} {'':>6} {'':>10} {'':>9} {'':>10} {'':>10} {'':>10} {report['total_eager_s']:>8.1f} "
          f"{report['total_compiled_s']:>10.1f} {report['total_launch_floor_s']:>14.1f}")
    for stage, s in report["stages"].items():
        if s["syncs_by_op"] or s.get("notes"):
            print(f"  {stage}: syncs/step {s['syncs_by_op']} {'; '.join(s.get('notes', []))}")
    print("  assumptions: " + "\n               ".join(assumptions()))


def json_line(report: dict[str, Any]) -> str:
    keys = ("steps", "tflop_per_step", "ops_per_step", "syncs_per_step", "eager_s", "compiled_s",
            "fused_ops_per_step", "launch_floor_s", "once_tflop", "once_ops", "once_syncs")
    return json.dumps({
        "preset": report["preset"], "geometry": report["geometry"],
        "stages": {k: {f: v[f] for f in keys} for k, v in report["stages"].items()},
        "total_eager_s": report["total_eager_s"], "total_compiled_s": report["total_compiled_s"],
    })


def preset_names(requested: str) -> list[str]:
    from dreampolish.backend.presets import PRESETS
    from dreampolish.protocol.errors import ValidationError

    if requested == "all":
        return [p for p in PRESETS_ALL if p in PRESETS]
    if requested not in PRESETS:
        raise ValidationError(f"unknown preset {requested!r}; choose all or one of {', '.join(PRESETS)}")
    return [requested]


def main(argv: list[str] | None = None) -> int:
    from dreampolish.protocol.errors import ValidationError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="standard", help="a preset's name, or all (draft, standard, high, refine)")
    parser.add_argument("--steps", type=int, default=4,
                        help="steps run per optimisation stage (at least 3; stages that alternate reference and "
                             "guidance steps count the steps after their first two)")
    parser.add_argument("--geometry", choices=("scaled", "full", "small"), default="scaled",
                        help="the stages' renders at 1/8 of the preset's sides, FLOPs scaled (default); at the "
                             "preset's sizes (hours on a CPU); or at the tiny preset's, not scaled")
    parser.add_argument("--stacks", action="store_true",
                        help="list where the syncs come from (innermost project line), per stage, whole run")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every counted step and its CPU time")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        names = preset_names(args.preset)
    except ValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.steps < 3:
        print("error: --steps must be at least 3 (the first step is not counted)", file=sys.stderr)
        return 2
    reports = []
    for name in names:
        report = project(name, args.steps, args.geometry, args.stacks)
        print_report(report)
        for stage, where in report["stacks"].items():
            print(f"  syncs in {stage} (all steps and once work):")
            for line, n in where.items():
                print(f"    {n:6d} {line}")
        reports.append(report)
    for report in reports:
        print(json_line(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
