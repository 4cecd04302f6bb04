"""Fixed-size buffers for work whose size only the device knows (issue 28).

Compacting the elements a step needs (a surface's crossing tets, the volume samples in occupied space, the
pixels a mesh covers) into a tensor sized by their count makes the host read the count back, a host sync
every step. Compacting them into a fixed capacity with `torch.nonzero_static` does not: the device pads or
drops past the capacity, the count stays on the device, and `DeviceCapacity` reads it back only at
reporting steps (without waiting: a pinned copy and a CUDA event) and resizes the capacity from it. Steps
between an overflow and the resize leave the elements past the capacity out; the first overflow says so in
the log.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)


class DeviceCapacity:
    """A capacity resized, without waiting for the device, from the largest need seen between reports.

    `track` keeps each step's need (a 0-dim device tensor) on the device; `request` (reporting steps)
    starts copying the largest need since the last request to the host; `poll` (any step) reads it once
    it has landed and resizes: it grows when the need did not fit, and with `shrinks` it also shrinks when
    the fitting capacity is under `SHRINK_BELOW` of the current one (so that a need that only wobbles does
    not resize it every report). `capacity` is None until the first need lands: callers then size their
    buffers for the worst case, `at_most`."""

    SHRINK_BELOW = 0.75

    def __init__(self, what: str, capacity: int | None = None, *, headroom: float = 1.5, quantum: int = 1024,
                 minimum: int = 1024, power_of_two: bool = False, shrinks: bool = True,
                 logger: logging.Logger | None = None):
        if headroom < 1 or quantum < 1 or minimum < 1:
            raise ValueError("capacity headroom must be >= 1, quantum and minimum >= 1")
        self.what = what
        self.headroom = headroom
        self.quantum = quantum
        self.minimum = minimum
        self.power_of_two = power_of_two
        self.shrinks = shrinks
        self.capacity = capacity
        self.log = logger or log
        self.overflows = 0
        """Requests whose need exceeded the capacity (the steps before them lost elements)."""
        self._needed: Tensor | None = None
        self._host: Tensor | None = None
        self._event: Any = None

    def fitting(self, needed: int) -> int:
        """The capacity for a need: headroom above it, rounded up to the quantum (or a power of two)."""
        want = max(self.minimum, math.ceil(self.headroom * needed))
        if self.power_of_two:
            return 1 << max(want - 1, 0).bit_length()
        return -(-want // self.quantum) * self.quantum

    def size(self, at_most: int) -> int:
        """The buffer size for work of at most `at_most` elements."""
        return at_most if self.capacity is None else min(self.capacity, at_most)

    def track(self, needed: Tensor) -> None:
        """Keep a step's need (0-dim, on the device) until the next request."""
        needed = needed.detach()
        self._needed = needed if self._needed is None else torch.maximum(self._needed, needed)

    def request(self) -> None:
        """Start reading back the largest need since the last request (reporting steps; waits on nothing)."""
        if self._needed is None or self._event is not None:
            return
        if self._needed.device.type == "cuda":
            self._host = torch.empty((), dtype=self._needed.dtype, pin_memory=True)
            self._host.copy_(self._needed, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = self._needed
        self._needed = None
        self.poll()

    def poll(self) -> bool:
        """Resize if a requested need has landed and asks for it; whether the capacity changed."""
        if self._host is None or (self._event is not None and not self._event.query()):
            return False
        needed = int(self._host)  # host memory by now (the event has passed): no wait
        self._host, self._event = None, None
        fitting = self.fitting(needed)
        old = self.capacity
        if old is None:
            self.capacity = fitting
            return True
        if needed > old:
            level = logging.INFO if self.overflows else logging.WARNING
            self.log.log(level, "%s outgrew its buffers (%d needed, capacity %d): capacity now %d%s", self.what,
                    needed, old, fitting,
                    "" if self.overflows else "; steps since the last report left out what did not fit")
            self.overflows += 1
            self.capacity = fitting
            return True
        if self.shrinks and fitting < self.SHRINK_BELOW * old:
            self.capacity = fitting
            return True
        return False


def gather_static(keep: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The indices of the first `size` true elements of the 1-D bool `keep`, padded with keep.numel()
    (one past the end: scatter_rows drops the padding into a spare last row), and their count needed
    (0-dim, on the device). Nothing is read back."""
    idx = torch.nonzero_static(keep, size=size, fill_value=keep.numel()).squeeze(1)
    return idx, keep.sum()


def gather_rows(idx: Tensor, n: int, *tensors: Tensor) -> tuple[Tensor, ...]:
    """The rows `idx` (gather_static's, over n rows) of each tensor; padding slots take the last row."""
    at = idx.clamp_max(n - 1)
    return tuple(t.index_select(0, at) for t in tensors)


def scatter_rows(idx: Tensor, values: Tensor, n: int) -> Tensor:
    """[n, ...] zeros with `values` at the rows `idx` (gather_static's): the padding slots land in a spare
    last row, which is dropped."""
    return values.new_zeros((n + 1, *values.shape[1:])).index_put((idx,), values)[:-1]
