"""The global random generator, shared by every job in the process.

PyTorch builds modules (nn.Linear, the hash tables, LoRA adapters) with its one process-wide
generator. A job seeds it for the modules it builds, so that a seed reproduces; with several jobs in
one process (one per GPU, or several workers' jobs in one Ray actor) two jobs seeding and drawing from
it at once would each get some of the other's numbers. So the global generator is only ever seeded
inside `global_rng_seeded`, which holds one lock for the whole block: a job's module construction
draws exactly the numbers of its own seed, whatever runs beside it. Everything a job draws during
its steps comes from its own torch.Generator objects, never from the global one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

_LOCK = threading.RLock()


@contextlib.contextmanager
def no_seeded_block_beside() -> Iterator[None]:
    """Inside, no other thread's seeded block runs. For loading checkpoints: diffusers' and transformers'
    from_pretrained build modules on `meta` through a process-wide patch (accelerate's init_empty_weights
    replaces nn.Module.register_parameter), which would put another thread's new modules on `meta` too."""
    with _LOCK:
        yield


@contextlib.contextmanager
def global_rng_seeded(seed: int) -> Iterator[None]:
    """Inside, the global generators (CPU and every CUDA device) start from `seed` and no other
    thread's seeded block runs; after it they are as they were."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with _LOCK, torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
