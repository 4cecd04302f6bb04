"""Where a job runs.

The job system hands job ids to an Executor, which calls back
`run_job(job_id, device)` wherever it decides to run it. LocalExecutor runs one
worker thread per local device, each taking the oldest queued job. A
distributed executor (e.g. Ray actors, one per remote GPU) implements the same
four methods, so one backend address can front many GPUs without changing the
server or the job store.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

log = logging.getLogger(__name__)

RunJob = Callable[[str, str], None]
"""run_job(job_id, device): runs one job to its end (done, failed, cancelled or paused). Never raises."""


class Executor(Protocol):
    devices: tuple[str, ...]
    """The devices jobs may run on (announced in welcome)."""

    def start(self, run_job: RunJob) -> None: ...

    def enqueue(self, job_id: str) -> int:
        """Queue a job; returns its queue position: how many jobs are ahead of it (queued or running)
        when no worker is free for it, 0 when it starts at once."""
        ...

    def pending(self) -> int:
        """Jobs queued and not yet started."""
        ...

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop taking jobs and wait up to timeout_s for running ones to return."""
        ...


_STOP = object()


class LocalExecutor:
    """One worker thread per device; a FIFO queue shared by all of them."""

    def __init__(self, devices: Sequence[str]) -> None:
        if not devices:
            raise ValueError("LocalExecutor needs at least one device")
        self.devices = tuple(devices)
        self._queue: queue.Queue[object] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        """Workers running a job now."""
        self._count_lock = threading.Lock()

    def start(self, run_job: RunJob) -> None:
        for device in self.devices:
            t = threading.Thread(
                target=self._work, args=(device, run_job), name=f"job-worker-{device}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def _work(self, device: str, run_job: RunJob) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            with self._count_lock:
                self._busy += 1
            try:
                run_job(str(item), device)
            except Exception:  # run_job handles job failures; this only keeps the worker alive
                log.exception("worker on %s: unexpected error running job %s", device, item)
            finally:
                with self._count_lock:
                    self._busy -= 1

    def enqueue(self, job_id: str) -> int:
        with self._count_lock:
            ahead = self._queue.qsize() + self._busy
            self._queue.put(job_id)
        return ahead if ahead >= len(self.devices) else 0

    def pending(self) -> int:
        return self._queue.qsize()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        # Drop queued jobs (they stay "queued" in the store and run after a restart).
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            t.join(timeout_s)
            if t.is_alive():
                log.warning("%s did not stop within %.0f s", t.name, timeout_s)
        self._threads.clear()
