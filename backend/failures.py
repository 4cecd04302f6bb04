"""Why a job failed, in the artist's words: a pipeline's exception -> (wire error code, message), and giving
back what a failed job allocated. The job runner (jobs.py) and the Ray executor's worker both use it."""

from __future__ import annotations

import ctypes
import errno
import gc
import sys

from dreampolish.protocol.errors import DISK_FULL, INTERNAL_ERROR, OUT_OF_MEMORY, ProtocolError

from .pipeline_api import JobFailed

__all__ = ["classify_failure", "release_memory"]


OOM_HINT = (
    "The GPU ran out of memory. Try a smaller preset, fewer or smaller cameras, or close other programs "
    "using the GPU, then submit again."
)
CPU_OOM_HINT = (
    "The computer ran out of memory. Try a smaller preset or fewer or smaller cameras, or close other "
    "programs, then submit again."
)


def _torch_oom_type() -> type[BaseException] | None:
    """torch.OutOfMemoryError when torch is loaded (a torch error cannot happen before it is)."""
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None)
    return oom if isinstance(oom, type) else None


def _is_cpu_allocation_failure(exc: BaseException) -> bool:
    # torch's CPU allocator raises a plain RuntimeError ("[enforce fail at alloc_cpu.cpp] ...
    # DefaultCPUAllocator: can't allocate memory" / "not enough memory"): no type says it is one.
    return isinstance(exc, RuntimeError) and "DefaultCPUAllocator" in str(exc)


DISK_FULL_HINT = "The backend's disk is full. Free some space, then submit the job again."


def _disk_full(exc: BaseException) -> bool:
    """True when exc, or an error it was raised from, is a full disk (ENOSPC) or quota (EDQUOT): a
    pipeline's own write (a checkpoint, an export) fails with the same OSError as the store's."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def classify_failure(exc: BaseException, where: str = "") -> tuple[str, str]:
    """(code, message) for the failed event of a job whose pipeline raised exc; where: the stage and its
    settings in words (StoreJobContext.where), for an out-of-memory failure. The allocator's own text goes
    to the log only."""
    if isinstance(exc, JobFailed):
        return exc.code, exc.message
    if isinstance(exc, ProtocolError):  # ValidationError, DiskFull, StoreError: their code says it
        return exc.code, str(exc)
    if _disk_full(exc):
        return DISK_FULL, DISK_FULL_HINT
    torch_oom = _torch_oom_type()
    if (torch_oom is not None and isinstance(exc, torch_oom)) or (
        isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)
    ):
        return OUT_OF_MEMORY, f"out of memory{where}. {OOM_HINT}"
    if isinstance(exc, MemoryError) or _is_cpu_allocation_failure(exc):
        return OUT_OF_MEMORY, f"out of memory{where}. {CPU_OOM_HINT}"
    return INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"


def release_memory() -> None:
    """Give back what a failed job allocated, once its exception (and the frames holding its tensors) is
    gone: CUDA's caching allocator keeps freed blocks for reuse and glibc keeps freed heap pages, so both
    are asked to return them to the system."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
