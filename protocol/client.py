"""BackendClient: talk to a DreamPolish backend from any Python (the Blender add-on, the
`dreampolish` command line, tests). No bpy; needs pyzmq, msgpack and numpy.

    from dreampolish.protocol.client import BackendClient
    from dreampolish.protocol.job import JobSpec

    with BackendClient("tcp://127.0.0.1:5557") as client:
        welcome = client.connect()                 # handshake: Welcome (presets, devices, limits)
        job_id = client.submit(JobSpec(prompt="a ceramic teapot", preset=welcome.default_preset))
        for event in client.events(job_id):        # Progress, StageResult, Paused, Resumed, Done/Failed/Cancelled
            ...

API (every call may raise BackendUnreachable, AccessRefused or VersionMismatch):

- BackendClient(address, server_public_key=None, timeout_s=10.0, heartbeat_s=1.0, dead_after_s=4.0,
  client_name="dreampolish-client")
  server_public_key: the backend's CURVE public key (Z85 text, 40 chars) when it runs with keys.
  client_key: this client's key pair (a NAME.key_secret file): a backend with an allow-list serves
  only the keys in it, and refuses others at once with AccessRefused ("this backend does not know
  your client key XXXXXXXX"); a backend serving as many connections as it may (welcome.limits
  max_connections_*) refuses one more with AccessRefused ("... refused the connection: too many
  connections ...").
- connect() -> messages.Welcome: opens the DEALER socket and does the hello/welcome handshake.
- submit(spec: JobSpec) -> str: queues a job; returns its id. RequestRejected if the backend refuses
  the spec (e.g. unknown preset), with the backend's message.
- events(job_id, timeout_s=None, until_pause=True) -> Iterator[Message]: the job's events in seq order,
  until its final event (Done, Failed, Cancelled) or, with until_pause, a Paused. timeout_s bounds the
  wait between two events (None: wait as long as the backend is alive).
- poll(timeout_s) -> Message | None: the next event of any job followed by this client, or None after
  timeout_s. Use it from a loop that must stay responsive.
- open() and the *_flow() methods (hello_flow, submit_flow, attach_flow, ...): the same requests as
  flows, for protocol.nonblocking.RequestQueue, which runs them without ever waiting (the add-on,
  on Blender's main thread).
- wait(job_id) -> list[StageResult]: follow a job to its end; raises JobFailedError / JobCancelledError.
- cancel(job_id), resume(job_id, mesh=None): the backend acknowledges; the effect arrives as events.
- attach(job_id, last_seq=None): follow a job after a reconnect; the backend replays every event after
  last_seq (default: the last seq this client saw for the job, else 0) and streams new ones.
- list_jobs() -> list[JobInfo] (every page); list_jobs_page(page="", limit=0) -> (jobs, next_page);
  delete(job_id): remove a finished job. A client sees its own jobs only (an admin key: all).
- fetch_result(job_id) -> messages.Result (state + every stage result).
- ping() -> float: round trip in seconds.
- reconnect() -> messages.Welcome: after BackendUnreachable (or a backend restart): a fresh socket, a new
  handshake, and attach() again to every job this client follows that has not ended, from the last seq it
  saw, so no event is lost or repeated.
- following: the ids of jobs whose events this client receives and that have not ended.
- connection: the socket's side (connection.BackendConnection): address, public_key (this client's
  CURVE key, Z85), heartbeat_s and dead_after_s.
- close(); the client is also a context manager.

Liveness (connection.py): while waiting, the client pings the backend every heartbeat_s of silence and raises
BackendUnreachable when nothing at all came back for dead_after_s after it sent something (dead
process, wrong address, or a wrong CURVE server key, which ZeroMQ reports as silence). Both that and
a request's timeout_s count from when what was sent has had time to go up on a slow link
(connection.SLOWEST_UPLINK_BYTES_PER_S): a large mesh is not lost while it is still sending. Once the
connection was made, its dropping raises BackendUnreachable at once, and again on every call until
reconnect(): ZeroMQ would connect again by itself, but the backend (restarted, or seeing a new peer)
no longer knows the requests and jobs of this client.

Events arrive exactly once and in order per job: duplicates (seq already seen) are dropped, and a
gap makes the client re-attach from the last seq it saw.

A client is not thread-safe: use it from one thread.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TypeVar

import zmq

from . import PROTOCOL_VERSION, codec
from . import messages as m

# The errors and key loaders are part of the client's API (__all__): callers, the add-on's vendored
# copy among them, import everything a client needs from this one module.
from .client_errors import (
    AccessRefused,
    BackendUnreachable,
    ClientError,
    JobCancelledError,
    JobFailedError,
    RequestRejected,
    UnknownJobError,
    checked_reply,
)
from .connection import BackendConnection, load_client_key, load_server_public_key
from .errors import VersionMismatch
from .job import JobSpec, variant_specs
from .payloads import JobInfo
from .scene import MeshPayload

log = logging.getLogger(__name__)

__all__ = [
    "AccessRefused",
    "BackendClient",
    "BackendUnreachable",
    "ClientError",
    "JobCancelledError",
    "JobFailedError",
    "RequestRejected",
    "UnknownJobError",
    "VersionMismatch",
    "load_client_key",
    "load_server_public_key",
]

T = TypeVar("T")
Flow = Generator[m.Message, m.Message, T]
"""A request: yields each message to send, receives its reply, returns the request's result."""


class BackendClient:
    """Requests to one backend, as flows run here (blocking) or by nonblocking.RequestQueue, and the
    events of the jobs it follows, each once and in order; the socket side is self.connection."""

    def __init__(
        self,
        address: str,
        server_public_key: str | bytes | None = None,
        timeout_s: float = 10.0,
        heartbeat_s: float = 1.0,
        dead_after_s: float = 4.0,
        client_name: str = "dreampolish-client",
        context: zmq.Context | None = None,
        client_key: str | Path | tuple[bytes, bytes] | None = None,
    ):
        """client_key: this client's CURVE key pair, a .key_secret file or (public, secret); without
        one a CURVE client makes a pair for this connection only (served only by a backend that
        serves any client key)."""
        self.connection = BackendConnection(
            address, server_public_key, client_key, heartbeat_s, dead_after_s, context
        )
        """The socket, its keys and its liveness (heartbeat_s, dead_after_s)."""
        self.timeout_s = timeout_s
        """Longest wait for the reply to a request."""
        self.client_name = client_name
        self.welcome: m.Welcome | None = None
        self.last_seq: dict[str, int] = {}
        """Seq of the last event delivered to the caller, per job."""
        self._events: collections.deque[m.Message] = collections.deque()
        self._repairing: set[str] = set()
        self.following: set[str] = set()
        """Jobs this client submitted, resumed or attached to, until their final event arrives."""

    # connection ----------------------------------------------------------------------------------

    def connect(self) -> m.Welcome:
        """Open the socket and do the handshake. Raises BackendUnreachable, VersionMismatch."""
        self.open()
        return self.run_flow(self.hello_flow())

    def open(self) -> None:
        """Open the DEALER socket (no waiting: ZeroMQ connects in the background and keeps what is
        sent until then). connect() is open() and the hello_flow()."""
        self.connection.open()

    def hello_flow(self) -> Flow[m.Welcome]:
        reply = yield m.Hello(client=f"{self.client_name} (protocol {PROTOCOL_VERSION})")
        if not isinstance(reply, m.Welcome):
            raise ClientError(f"expected welcome, got {reply.TYPE}")
        self.welcome = reply
        return reply

    def reconnect(self) -> m.Welcome:
        """New socket and handshake, then re-attach every followed job from the last seq seen."""
        self.close()
        self._repairing.clear()
        welcome = self.connect()
        for job_id in sorted(self.following):
            self.attach(job_id)
        return welcome

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> BackendClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # requests ------------------------------------------------------------------------------------
    # Each request is a flow: a generator that yields the messages to send and receives each one's
    # reply. The blocking methods run a flow here (run_flow); a caller that must never wait (Blender's
    # main thread) runs the same flows through protocol.nonblocking.RequestQueue.

    def run_flow(self, flow: Flow[T]) -> T:
        """Send each message the flow yields and hand it the reply, waiting up to timeout_s for each."""
        try:
            msg = next(flow)
            while True:
                try:
                    reply = self._request(msg)
                except ClientError as exc:
                    msg = flow.throw(exc)
                else:
                    msg = flow.send(reply)
        except StopIteration as done:
            return done.value

    def submit(self, spec: JobSpec) -> str:
        return self.run_flow(self.submit_flow(spec))

    def submit_flow(self, spec: JobSpec) -> Flow[str]:
        reply = yield m.Submit(spec=spec)
        self.last_seq.setdefault(reply.job_id, 0)
        self.following.add(reply.job_id)
        return reply.job_id

    def submit_variants(self, spec: JobSpec, count: int, up_to: str) -> list[str]:
        """Submit `count` seed variants of spec that pause after stage `up_to` (job.variant_specs);
        returns their job ids, variant 0 (spec's own seed) first. Resume the chosen one, cancel the rest."""
        return self.run_flow(self.submit_variants_flow(spec, count, up_to))

    def submit_variants_flow(self, spec: JobSpec, count: int, up_to: str) -> Flow[list[str]]:
        jobs = []
        for variant in variant_specs(spec, count, up_to):  # every variant is checked before any is sent
            jobs.append((yield from self.submit_flow(variant)))
        return jobs

    def cancel(self, job_id: str) -> None:
        self.run_flow(self.cancel_flow(job_id))

    def cancel_flow(self, job_id: str) -> Flow[None]:
        yield m.Cancel(job_id=job_id)

    def resume(self, job_id: str, mesh: MeshPayload | None = None) -> None:
        self.run_flow(self.resume_flow(job_id, mesh))

    def resume_flow(self, job_id: str, mesh: MeshPayload | None = None) -> Flow[None]:
        yield m.Resume(job_id=job_id, mesh=mesh)
        self.following.add(job_id)

    def attach(self, job_id: str, last_seq: int | None = None) -> None:
        self.run_flow(self.attach_flow(job_id, last_seq))

    def attach_flow(self, job_id: str, last_seq: int | None = None) -> Flow[None]:
        if last_seq is None:
            seq = self.last_seq.get(job_id, 0)  # buffered, not yet polled events stay queued
        else:
            seq = last_seq
            # Buffered events after seq will be replayed: drop them so they arrive once.
            self._events = collections.deque(e for e in self._events if e.job_id != job_id or e.seq <= seq)
        self.last_seq[job_id] = seq
        yield m.Attach(job_id=job_id, last_seq=seq)
        self.following.add(job_id)

    def list_jobs(self) -> list[JobInfo]:
        """Every job this client may see (its own; an admin: all), oldest first, page by page."""
        return self.run_flow(self.list_jobs_flow())

    def list_jobs_flow(self) -> Flow[list[JobInfo]]:
        jobs: list[JobInfo] = []
        page = ""
        while True:
            part, page = yield from self.list_jobs_page_flow(page)
            jobs.extend(part)
            if not page:
                return jobs

    def list_jobs_page(self, page: str = "", limit: int = 0) -> tuple[list[JobInfo], str]:
        """One page of jobs and the token of the next ("" after the last page)."""
        return self.run_flow(self.list_jobs_page_flow(page, limit))

    def list_jobs_page_flow(self, page: str = "", limit: int = 0) -> Flow[tuple[list[JobInfo], str]]:
        reply = yield m.ListJobs(page=page, limit=limit)
        if not isinstance(reply, m.JobList):
            raise ClientError(f"expected job_list, got {reply.TYPE}")
        if reply.next_page and reply.next_page == page:
            raise ClientError("the backend sent the same job_list page twice")
        return reply.jobs, reply.next_page

    def delete(self, job_id: str) -> None:
        """Delete a finished job of this client (an admin: any) and everything stored for it."""
        self.run_flow(self.delete_flow(job_id))

    def delete_flow(self, job_id: str) -> Flow[None]:
        yield m.DeleteJob(job_id=job_id)
        self.following.discard(job_id)
        self.last_seq.pop(job_id, None)

    def fetch_result(self, job_id: str) -> m.Result:
        """Every stage result of the job (large results arrive in several parts; they are joined here)."""
        return self.run_flow(self.fetch_result_flow(job_id))

    def fetch_result_flow(self, job_id: str) -> Flow[m.Result]:
        results: list[m.StageResult] = []
        first = 0
        while True:
            reply = yield m.FetchResult(job_id=job_id, first=first)
            if not isinstance(reply, m.Result):
                raise ClientError(f"expected result, got {reply.TYPE}")
            results.extend(reply.stage_results)
            if reply.more_from <= first:
                reply.stage_results = results
                reply.more_from = 0
                return reply
            first = reply.more_from

    def ping(self) -> float:
        start = time.monotonic()
        self.run_flow(self.ping_flow())
        return time.monotonic() - start

    def ping_flow(self) -> Flow[None]:
        yield m.Ping()

    # events --------------------------------------------------------------------------------------

    def poll(self, timeout_s: float = 0.0) -> m.Message | None:
        """The next event of a job this client follows, or None after timeout_s."""
        if self._events:
            return self._events.popleft()
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self.receive(deadline)
            if msg is None:
                return None
            if msg.IS_EVENT:
                return msg
            if isinstance(msg, m.Error):
                log.warning("backend error: %s (%s)", msg.message, msg.code)

    def events(
        self, job_id: str, timeout_s: float | None = None, until_pause: bool = True
    ) -> Iterator[m.Message]:
        """Yield job_id's events in order until a final event (or Paused, with until_pause)."""
        others: list[m.Message] = []
        try:
            while True:
                msg = self.poll(timeout_s if timeout_s is not None else 3600.0)
                if msg is None:
                    if timeout_s is not None:
                        raise TimeoutError(f"no event from job {job_id} for {timeout_s} s")
                    continue
                if msg.job_id != job_id:
                    others.append(msg)
                    continue
                yield msg
                if msg.TYPE in m.FINAL_EVENTS or (until_pause and isinstance(msg, m.Paused)):
                    return
        finally:
            # Events of other jobs stay queued for the next poll, in their order.
            self._events.extendleft(reversed(others))

    def wait(self, job_id: str, timeout_s: float | None = None) -> list[m.StageResult]:
        """Follow job_id to its end (through pauses); returns its stage results in order."""
        results = []
        for msg in self.events(job_id, timeout_s, until_pause=False):
            if isinstance(msg, m.StageResult):
                results.append(msg)
            elif isinstance(msg, m.Failed):
                raise JobFailedError(job_id, msg.code, msg.message)
            elif isinstance(msg, m.Cancelled):
                raise JobCancelledError(job_id)
        return results

    # internals -----------------------------------------------------------------------------------

    def send_request(self, msg: m.Message) -> str:
        """Send a request without waiting; returns the msg_id its reply will carry in `re`."""
        if not isinstance(msg, m.Message):
            raise ClientError(f"a request is a protocol message, not {type(msg).__name__}")
        msg.msg_id = codec.new_message_id()
        self.connection.send(msg)
        return msg.msg_id

    def no_reply(self, msg: m.Message) -> BackendUnreachable:
        return BackendUnreachable(
            f"no reply to {msg.TYPE} from {self.connection.address} within {self.timeout_s:.0f} s"
        )

    def buffer_event(self, msg: m.Message) -> None:
        """Keep an event for the next poll() (it arrived while a reply was awaited)."""
        self._events.append(msg)

    def take_buffered_events(self) -> list[m.Message]:
        events, self._events = list(self._events), collections.deque()
        return events

    def reply_deadline(self) -> float:
        """When a reply to what was just sent is overdue: timeout_s after it has gone up (the time a
        large request needs on a slow link, connection.SLOWEST_UPLINK_BYTES_PER_S)."""
        return max(time.monotonic(), self.connection.sending_until) + self.timeout_s

    def _request(self, msg: m.Message) -> m.Message:
        msg_id = self.send_request(msg)
        deadline = self.reply_deadline()
        while True:
            reply = self.receive(deadline)
            if reply is None:
                raise self.no_reply(msg)
            if reply.IS_EVENT:
                self.buffer_event(reply)
            elif reply.re == msg_id:
                return checked_reply(reply)

    def receive(self, deadline: float) -> m.Message | None:
        """The next message (an event this client accepts, or a reply to any request), or None at
        the deadline; a deadline already past checks the socket once without waiting. Raises
        BackendUnreachable or AccessRefused (connection.py)."""
        while True:
            msg = self.connection.receive(deadline)
            if msg is None or not msg.IS_EVENT or self._accept_event(msg):
                return msg

    def _accept_event(self, msg: m.Message) -> bool:
        """Exactly-once, in-order delivery per job: drop duplicates, repair gaps by re-attaching."""
        last = self.last_seq.get(msg.job_id, 0)
        if msg.seq <= last:
            return False
        if msg.seq > last + 1:
            if msg.job_id not in self._repairing:
                self._repairing.add(msg.job_id)
                log.info("job %s: missed events %d..%d, re-attaching", msg.job_id, last + 1, msg.seq - 1)
                self.connection.send(m.Attach(job_id=msg.job_id, last_seq=last, msg_id=codec.new_message_id()))
            return False
        self._repairing.discard(msg.job_id)
        self.last_seq[msg.job_id] = msg.seq
        if msg.TYPE in m.FINAL_EVENTS:
            self.following.discard(msg.job_id)
        return True
