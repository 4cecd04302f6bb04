"""Counting the operations that make the host wait for the device.

On a GPU, every op that hands a device value to Python (`.item()`, `float(t)`, `bool(t)`, a boolean-mask
index, `torch.unique`, `.cpu()`, `.tolist()`, `.numpy()`) waits until the queue has drained: the CPU stops
launching kernels and the GPU then waits for the CPU. An optimisation step that does none of these keeps
the queue full (issue 28). On the CPU they cost nothing, so they are counted, not timed:

    with HostSyncCounter() as syncs:
        run_steps()
    syncs.total, syncs.by_op   # how many, and which

Two layers see them: a TorchDispatchMode sees the aten ops that read a value back or size an output by
the data (`_local_scalar_dense` under `.item()`/`float()`/`bool()`, `nonzero` under a boolean index,
`_unique2`, `masked_select`, ...); a TorchFunctionMode sees the Tensor methods that copy to the host
(`.cpu()`, `.tolist()`, `.numpy()`), which on a CPU tensor never reach the dispatcher. (`.to("cpu")` is
not counted: on the CPU it cannot be told from `.to(device)`; write host copies as `.cpu()`.) Used by the sync
test (tests/backend/stages/test_host_syncs.py) and the projection (bench/projected_time.py).
"""

from __future__ import annotations

import collections
import traceback
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_ATEN_OPS = frozenset({
    "aten._local_scalar_dense",   # .item(), float(t), int(t), bool(t), `if t:`
    "aten.nonzero",               # boolean-mask indexing, torch.where(cond) with one argument
    "aten._unique2", "aten.unique_dim", "aten.unique_consecutive", "aten._unique",
    "aten.masked_select",
    "aten.is_nonzero",
    "aten.equal",                 # torch.equal returns a Python bool
    "aten._linalg_check_errors",  # torch.linalg.inv/cholesky/solve read their info flag back (use *_ex)
    "aten.repeat_interleave.Tensor",  # output size read from the data unless output_size is given
})
"""aten ops (overload packets, or an exact overload) that read device data back to the host."""

SYNC_TENSOR_METHODS = frozenset({"cpu", "tolist", "numpy"})
"""Tensor methods that copy device data to the host."""


class _FunctionLayer(TorchFunctionMode):
    def __init__(self, owner: HostSyncCounter):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNC_TENSOR_METHODS and args and isinstance(args[0], torch.Tensor):
            self.owner.record(f"Tensor.{name}")
        return func(*args, **(kwargs or {}))


class _DispatchLayer(TorchDispatchMode):
    def __init__(self, owner: HostSyncCounter):
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        full = func.name().replace("::", ".")  # "aten.index.Tensor"
        packet = full.split(".")[0] + "." + full.split(".")[1]
        if packet in SYNC_ATEN_OPS or full in SYNC_ATEN_OPS:
            self.owner.record(packet)
        elif packet in _MASK_INDEXING_OPS and _has_mask_index(args):
            self.owner.record(f"{packet}[bool mask]")
        return func(*args, **(kwargs or {}))


_MASK_INDEXING_OPS = frozenset({"aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"})
"""Indexing with a boolean mask sizes its output by the mask's count (a nonzero inside the kernel)."""


def _has_mask_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


CPU_ONLY_FILES = ("render/raster_torch.py",)
"""Code that runs only where the GPU path is missing: the PyTorch rasteriser stands in for nvdiffrast
on the CPU (DESIGN.md, Rasterisation). Its syncs are counted apart (`excused`), not as the step's."""


class HostSyncCounter:
    """Counts host syncs (module docstring) while active; `take()` hands over what was counted since the
    last take (one step's worth, when called once a step).

    excuse: file-name endings (`CPU_ONLY_FILES`); a sync with any of them on its call stack is counted in
    `excused` rather than `by_op`. keep_stacks: also count by the innermost project frame (`stacks`)."""

    def __init__(self, keep_stacks: bool = False, excuse: tuple[str, ...] = ()):
        self.by_op: collections.Counter[str] = collections.Counter()
        self.excused: collections.Counter[str] = collections.Counter()
        self.keep_stacks = keep_stacks
        self.excuse = excuse
        self.stacks: collections.Counter[str] = collections.Counter()
        """Where the syncs come from (the innermost project frame), when keep_stacks is set."""
        self._modes: list[Any] = []

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def record(self, op: str) -> None:
        if not (self.keep_stacks or self.excuse):
            self.by_op[op] += 1
            return
        stack = [f for f in traceback.extract_stack()[:-3] if "host_syncs" not in f.filename]
        if any(f.filename.endswith(end) for f in stack for end in self.excuse):
            self.excused[op] += 1
            return
        self.by_op[op] += 1
        if self.keep_stacks:
            ours = [f for f in stack if "/backend/" in f.filename or "dreampolish" in f.filename]
            where = f"{ours[-1].filename.rsplit('/', 2)[-1]}:{ours[-1].lineno}" if ours else "?"
            node = torch._C._current_autograd_node()  # inside backward: which op's gradient
            if node is not None:
                where += f" ({node.name()})"
            self.stacks[f"{op} @ {where}"] += 1

    def take(self) -> collections.Counter[str]:
        """The syncs counted since the last take (and forget them)."""
        out, self.by_op = self.by_op, collections.Counter()
        self.excused = collections.Counter()
        return out

    def __enter__(self) -> HostSyncCounter:
        self._modes = [_FunctionLayer(self), _DispatchLayer(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = []


class StepSyncRecorder:
    """A pipeline_api.JobContext that counts each optimisation step's host syncs. StageProgress calls its
    `step_end(stage, step, total, reported)` after every step of every stage (pipeline/previews.py), which
    closes the interval since the previous step: `steps[stage]` lists one StepSyncs per step. Wraps another
    context (`inner`, or none) and forwards the rest to it."""

    def __init__(self, counter: HostSyncCounter, work_dir: Any, inner: Any = None, device: str | None = None):
        self.counter = counter
        self.work_dir = work_dir
        self.inner = inner
        self.job_id = getattr(inner, "job_id", "sync-count")
        self.device = device or getattr(inner, "device", "cpu")
        self.on_step: Any = None
        """Called as on_step(stage, StepSyncs) after each step (an instrument's own per-step figures)."""
        self.steps: dict[str, list[StepSyncs]] = collections.defaultdict(list)
        self.stacks: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        """Per stage, where the syncs of its steady-state steps come from (with keep_stacks)."""

    def step_end(self, stage: str, step: int, total: int, reported: bool) -> None:
        syncs = self.counter.take()
        self.steps[stage].append(StepSyncs(step, total, reported, syncs))
        if self.on_step is not None:
            self.on_step(stage, self.steps[stage][-1])
        if not reported and step > 1:
            self.stacks[stage].update(self.counter.stacks)
        self.counter.stacks.clear()

    def steady_state(self, stage: str) -> list[StepSyncs]:
        """The stage's steps that neither report nor come first."""
        return [s for s in self.steps[stage] if not s.reported and s.step > 1]

    def progress(self, stage: str, step: int, total: int, losses: Any = None, preview_png: Any = None) -> None:
        if self.inner is not None:
            self.inner.progress(stage, step, total, losses, preview_png)

    def stage_result(self, stage: str, index: int, mesh: Any) -> None:
        if self.inner is not None:
            self.inner.stage_result(stage, index, mesh)

    def check_cancel(self) -> None:
        if self.inner is not None:
            self.inner.check_cancel()


@dataclass
class StepSyncs:
    """One step's count (StepSyncRecorder)."""

    step: int
    total: int
    reported: bool
    """The step reported its losses (or a preview), so it may read values back."""
    syncs: collections.Counter[str]

    @property
    def count(self) -> int:
        return sum(self.syncs.values())
