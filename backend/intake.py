"""Requests that carry binary frames, checked away from the socket: a bounded cost per client.

A submit with a mesh or a reference image, or a resume with an edited mesh, is decoded, checked and
stored on an intake thread, never on the thread that serves the socket: checking a PNG inflates its
pixel data (up to about 134 MB and 0.4 s of CPU for a 16-bit RGBA picture at the largest side), and a
mesh of a million faces takes as long to check. The socket's thread only counts the request's bytes.

Each client (its key, or its connection when clients have no keys) has at most one request being
checked at a time; its further ones wait in order, and clients take turns (round robin), so a client
sending costly requests back to back delays its own requests, not another's. What waits is bounded, per
client and overall, in requests and in bytes (protocol/limits.py, announced in `welcome.limits`); a
request past a bound is refused at once, with `limit_exceeded` naming the limit.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from dreampolish.protocol.errors import LimitExceeded
from dreampolish.protocol.limits import LIMITS

log = logging.getLogger(__name__)

Work = Callable[[], None]
"""Decode, check and answer one request (it reports its own errors; an exception is logged)."""


@dataclass(frozen=True)
class IntakeLimits:
    """What may wait to be checked (each field is a published limit of the same name)."""

    requests_per_client: int = LIMITS.max_pending_requests_per_client
    requests_total: int = LIMITS.max_pending_requests_total
    bytes_per_client: int = LIMITS.max_pending_bytes_per_client
    bytes_total: int = LIMITS.max_pending_bytes_total

    def published(self) -> dict[str, int]:
        """These limits under their names in `welcome.limits`."""
        return {
            "max_pending_requests_per_client": self.requests_per_client,
            "max_pending_requests_total": self.requests_total,
            "max_pending_bytes_per_client": self.bytes_per_client,
            "max_pending_bytes_total": self.bytes_total,
        }


@dataclass
class _Pending:
    work: Work
    nbytes: int


class RequestIntake:
    """Intake threads taking clients' requests round robin, one request per client at a time."""

    def __init__(self, limits: IntakeLimits | None = None, threads: int = 2) -> None:
        self.limits = limits or IntakeLimits()
        self._queues: dict[Hashable, collections.deque[_Pending]] = {}
        self._turns: collections.deque[Hashable] = collections.deque()
        """Clients with a request waiting and none being checked, the next to be served first."""
        self._busy: set[Hashable] = set()
        """Clients with a request being checked now."""
        self._requests: collections.Counter[Hashable] = collections.Counter()
        self._bytes: collections.Counter[Hashable] = collections.Counter()
        """Requests and bytes per client, waiting or being checked."""
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"backend-intake-{i}", daemon=True) for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def offer(self, client: Hashable, nbytes: int, what: str, work: Work) -> None:
        """Queue work for client (nbytes: the request's size). Raises LimitExceeded, naming the limit,
        when the client or the backend already holds as much as it may; nothing is queued then."""
        with self._cond:
            self._check(client, nbytes, what)
            self._requests[client] += 1
            self._bytes[client] += nbytes
            queue = self._queues.get(client)
            if queue is None:
                queue = self._queues[client] = collections.deque()
                if client not in self._busy:
                    self._turns.append(client)
            queue.append(_Pending(work, nbytes))
            self._cond.notify()

    def _check(self, client: Hashable, nbytes: int, what: str) -> None:
        lim = self.limits
        waiting = (
            ("max_pending_requests_per_client", self._requests[client] + 1, lim.requests_per_client, "of yours"),
            ("max_pending_requests_total", self._requests.total() + 1, lim.requests_total, "of all clients"),
            ("max_pending_bytes_per_client", self._bytes[client] + nbytes, lim.bytes_per_client, "of yours"),
            ("max_pending_bytes_total", self._bytes.total() + nbytes, lim.bytes_total, "of all clients"),
        )
        for name, would_be, limit, whose in waiting:
            if would_be > limit:
                unit = "bytes" if "bytes" in name else "requests"
                raise LimitExceeded(
                    f"{what}: refused, {name} is {limit}: requests {whose} waiting to be checked would hold "
                    f"{would_be} {unit}; send it again when an earlier request is answered"
                )

    def pending(self, client: Hashable | None = None) -> tuple[int, int]:
        """(requests, bytes) waiting or being checked: of client, or of all clients."""
        with self._cond:
            if client is None:
                return self._requests.total(), self._bytes.total()
            return self._requests[client], self._bytes[client]

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._turns and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                client = self._turns.popleft()
                queue = self._queues[client]
                item = queue.popleft()
                if not queue:
                    del self._queues[client]
                self._busy.add(client)
            try:
                item.work()
            except Exception:  # the work answers its own errors; this only keeps the thread alive
                log.exception("error checking a request")
            finally:
                self._done(client, item)
                del item  # its frames (a mesh, a picture) are not kept while this thread waits

    def _done(self, client: Hashable, item: _Pending) -> None:
        with self._cond:
            self._busy.discard(client)
            self._requests[client] -= 1
            self._bytes[client] -= item.nbytes
            if self._requests[client] <= 0:
                del self._requests[client], self._bytes[client]
            if client in self._queues:
                self._turns.append(client)  # its next request waits for every other client's turn
                self._cond.notify()

    def close(self, timeout_s: float = 10.0) -> None:
        """Drop what waits and stop the threads (a request being checked finishes first)."""
        with self._cond:
            self._closed = True
            self._queues.clear()
            self._turns.clear()
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout_s)
