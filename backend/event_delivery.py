"""Live event delivery: which clients follow which job, and the events on their way to each.

The server's loop thread owns the ROUTER socket and calls everything here. An event published by a
worker is forwarded to every follower that is up to date; a follower whose send queue is full, or
that missed an event, is marked behind and caught up from the job store later, with a backoff that
grows while it reads nothing. So a slow or absent client costs bounded memory and next to no time,
and every follower sees each event once, in seq order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import zmq
from dreampolish.protocol import messages as m

log = logging.getLogger(__name__)


class StoredEvents(Protocol):
    """Where a follower that fell behind is caught up from: jobs.JobManager."""

    def events_after(self, job_id: str, last_seq: int) -> Iterator[tuple[int, list[memoryview]]]: ...

    def event_type(self, job_id: str, seq: int) -> str: ...


def send_to_peer(router: zmq.Socket, peer: bytes, frames: Sequence[object]) -> bool | None:
    """Send without blocking: True sent, False deferred (the peer's queue is full), None peer gone."""
    try:
        router.send_multipart([peer, *frames], zmq.NOBLOCK, copy=False)
        return True
    except zmq.Again:
        return False
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EHOSTUNREACH:
            return None
        raise


@dataclass
class Follower:
    """One client following one job."""

    last_sent: int
    """Seq of the last event sent to this client."""
    behind: bool = False
    """True when a send was deferred or an event skipped: catch up from the store."""
    retry_at: float = 0.0
    """Monotonic time of the next catch-up attempt."""
    backoff_s: float = 0.005
    """Grows while the client reads nothing, so a stalled client costs next to nothing."""


class Followers:
    """The followers of every job, by job id and peer (the ROUTER identity of the client)."""

    def __init__(self, store: StoredEvents) -> None:
        self.store = store
        self.by_job: dict[str, dict[bytes, Follower]] = {}

    def add(self, job_id: str, peer: bytes, last_seq: int) -> Follower:
        """Follow job_id from after last_seq; what is already stored comes from the store."""
        sub = Follower(last_sent=last_seq, behind=True)
        self.by_job.setdefault(job_id, {})[peer] = sub
        return sub

    def remove(self, job_id: str, peer: bytes) -> None:
        peers = self.by_job.get(job_id)
        if peers is not None:
            peers.pop(peer, None)
            if not peers:
                del self.by_job[job_id]

    def forget_job(self, job_id: str) -> None:
        self.by_job.pop(job_id, None)

    def next_retry(self) -> float | None:
        """Monotonic time of the earliest catch-up due, None when no follower is behind."""
        return min(
            (sub.retry_at for peers in self.by_job.values() for sub in peers.values() if sub.behind),
            default=None,
        )

    def forward(self, router: zmq.Socket, job_id: str, seq: int, frames: list[zmq.Frame]) -> None:
        """A just-published event, to every follower of its job that is up to date."""
        for peer, sub in list(self.by_job.get(job_id, {}).items()):
            if sub.behind or seq <= sub.last_sent:
                continue
            if seq > sub.last_sent + 1:
                sub.behind = True  # an event went missing on the way here: replay from the store
                continue
            self._deliver(router, job_id, peer, sub, seq, frames)

    def catch_up(self, router: zmq.Socket) -> None:
        """Replay stored events to each follower that is behind and due."""
        now = time.monotonic()
        for job_id, peers in list(self.by_job.items()):
            for peer, sub in list(peers.items()):
                if not sub.behind or sub.retry_at > now:
                    continue
                try:
                    self._replay(router, job_id, peer, sub, now)
                except Exception:  # the loop outlives any one job's files; that follower is dropped
                    log.exception("cannot replay job %s to %s; it stops following", job_id, peer.hex())
                    self.remove(job_id, peer)

    def _deliver(
        self, router: zmq.Socket, job_id: str, peer: bytes, sub: Follower, seq: int, frames: Sequence[object]
    ) -> None:
        sent = send_to_peer(router, peer, frames)
        if sent is None:
            self.remove(job_id, peer)
        elif not sent:
            sub.behind = True
        else:
            sub.last_sent = seq
            if self.store.event_type(job_id, seq) in m.FINAL_EVENTS:
                self.remove(job_id, peer)  # nothing follows a final event

    def _replay(self, router: zmq.Socket, job_id: str, peer: bytes, sub: Follower, now: float) -> None:
        sub.behind = False
        start = sub.last_sent
        for seq, frames in self.store.events_after(job_id, sub.last_sent):
            self._deliver(router, job_id, peer, sub, seq, frames)
            if sub.behind or peer not in self.by_job.get(job_id, {}):
                break
        if sub.behind:
            sub.backoff_s = 0.005 if sub.last_sent > start else min(sub.backoff_s * 2, 0.5)
            sub.retry_at = now + sub.backoff_s
