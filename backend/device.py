"""Moving tensors made on the host (random draws from the job's CPU generator, camera matrices) to the
device without making the host wait.

`t.to("cuda")` from pageable host memory is a blocking copy: PyTorch follows the copy with a stream
synchronise, so the host waits for every kernel queued before it (a host sync, issue 28). With
`non_blocking=True` the CUDA driver stages pageable memory at once and returns without synchronising, so
the host tensor may be reused straight away. The other way (device to host) must stay blocking: the
host would read the tensor before the copy lands.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_device(t: Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> Tensor:
    """`t` on `device` (and `dtype`), copied without a stream synchronise when it goes host → GPU."""
    target = torch.device(device)
    return t.to(target, dtype=dtype, non_blocking=t.device.type == "cpu" and target.type != "cpu")
