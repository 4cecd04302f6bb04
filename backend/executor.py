"""Where a job runs.

The job system hands job ids to an Executor, which calls back
`run_job(job_id, device)` wherever it decides to run it. LocalExecutor runs one
worker thread per local device, each taking the next job of a FairQueue: jobs
from different clients interleave (round robin between clients, first come first
served within one), so one client's twenty jobs do not hold back another's one. A
distributed executor (e.g. Ray actors, one per remote GPU) implements the same
four methods and takes its jobs from a FairQueue too, so one backend address can
front many GPUs without changing the server or the job store.
"""

from __future__ import annotations

import collections
import logging
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

    def enqueue(self, job_id: str, client: str = "") -> int:
        """Queue a job of `client` (its key; "" = the one user); returns its queue position: how many
        jobs are ahead of it (queued or running) when no worker is free for it, 0 when it starts at
        once. Jobs are taken round robin between clients (FairQueue)."""
        ...

    def pending(self) -> int:
        """Jobs queued and not yet started."""
        ...

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop taking jobs and wait up to timeout_s for running ones to return."""
        ...


class FairQueue:
    """Job ids per client, taken round robin between clients and in order within one. Thread-safe."""

    def __init__(self) -> None:
        self._by_client: dict[str, collections.deque[str]] = {}
        self._turns: collections.deque[str] = collections.deque()
        """Clients with queued jobs, the one whose turn is next first."""
        self._cond = threading.Condition()
        self._closed = False
        self._closed_event = threading.Event()
        """Set by close(), for wait_closed (a second waiter on _cond could take a put's notify)."""

    def put(self, job_id: str, client: str = "") -> int:
        """Queue job_id; returns how many queued jobs will be taken before it."""
        with self._cond:
            jobs = self._by_client.get(client)
            if jobs is None:
                jobs = self._by_client[client] = collections.deque()
                self._turns.append(client)
            rounds = len(jobs)  # it is taken in this round of the rotation (0 = the next)
            ahead = rounds
            before = True
            for other in self._turns:
                if other == client:
                    before = False
                    continue
                ahead += min(len(self._by_client[other]), rounds + 1 if before else rounds)
            jobs.append(job_id)
            self._cond.notify()
            return ahead

    def get(self) -> str | None:
        """The next job (waits for one); None once closed."""
        with self._cond:
            while not self._turns and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            client = self._turns.popleft()
            jobs = self._by_client[client]
            job_id = jobs.popleft()
            if jobs:
                self._turns.append(client)  # its next job waits for every other client's turn
            else:
                del self._by_client[client]
            return job_id

    def __len__(self) -> int:
        with self._cond:
            return sum(len(j) for j in self._by_client.values())

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def wait_closed(self, timeout_s: float) -> bool:
        """Wait up to timeout_s for close(); True once closed."""
        return self._closed_event.wait(timeout_s)

    def close(self) -> None:
        """Drop every queued job (they stay "queued" in the store) and wake every waiting get()."""
        with self._cond:
            self._closed = True
            self._by_client.clear()
            self._turns.clear()
            self._cond.notify_all()
        self._closed_event.set()


class WorkerLost(Exception):
    """Raised by a Pipeline.run when the worker running the job went away mid-job (a lost node or
    process): the job system queues the job again, to resume from its last finished stage."""


class QueueWorkers:
    """One worker thread per device, taking jobs from a FairQueue shared by all of them. Subclasses may
    retire a device's thread (device_usable) when what runs its jobs is gone for good."""

    def __init__(self, devices: Sequence[str]) -> None:
        if not devices:
            raise ValueError(f"{type(self).__name__} needs at least one device")
        self.devices = tuple(devices)
        self._queue = FairQueue()
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

    def device_usable(self, device: str) -> bool:
        """Called before each job a device's thread takes; False ends that thread."""
        return True

    def _work(self, device: str, run_job: RunJob) -> None:
        while True:
            if not self.device_usable(device):
                if not self._queue.closed:
                    log.warning("worker on %s retired: it takes no more jobs", device)
                return
            item = self._queue.get()
            if item is None:
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

    def enqueue(self, job_id: str, client: str = "") -> int:
        with self._count_lock:
            ahead = self._queue.put(job_id, client) + self._busy
        return ahead if ahead >= len(self.devices) else 0

    def pending(self) -> int:
        return len(self._queue)

    def shutdown(self, timeout_s: float = 10.0) -> None:
        # Drop queued jobs (they stay "queued" in the store and run after a restart).
        self._queue.close()
        for t in self._threads:
            t.join(timeout_s)
            if t.is_alive():
                log.warning("%s did not stop within %.0f s", t.name, timeout_s)
        self._threads.clear()


class LocalExecutor(QueueWorkers):
    """One worker thread per local device; a FairQueue shared by all of them."""
