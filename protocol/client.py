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
  your client key XXXXXXXX").
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
- close(); the client is also a context manager.

Liveness: while waiting, the client pings the backend every heartbeat_s of silence and raises
BackendUnreachable when nothing at all came back for dead_after_s after it sent something (dead
process, wrong address, or a wrong CURVE server key, which ZeroMQ reports as silence). Once the
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
from .errors import ProtocolError, VersionMismatch
from .job import JobSpec, variant_specs
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

# ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH (zmq.h): one side speaks CURVE, the other does not.
_MECHANISM_MISMATCH = 0x11000002
_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
)


class ClientError(Exception):
    """Base of the client's own errors."""


class BackendUnreachable(ClientError):
    """No answer from the backend: not running, wrong address, network down, or wrong CURVE server key."""


class AccessRefused(BackendUnreachable):
    """The backend refused the connection itself: it does not know this client's key, or the client
    and the backend disagree on CURVE. The message is one line that says which."""


class RequestRejected(ClientError):
    """The backend answered a request with an Error (code + message)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


class UnknownJobError(RequestRejected):
    """The backend has no job with that id."""


class JobFailedError(ClientError):
    def __init__(self, job_id: str, code: str, message: str):
        super().__init__(f"job {job_id} failed: {message} ({code})")
        self.job_id = job_id
        self.code = code
        self.message = message


class JobCancelledError(ClientError):
    def __init__(self, job_id: str):
        super().__init__(f"job {job_id} was cancelled")
        self.job_id = job_id


def load_server_public_key(value: str | bytes | Path) -> bytes:
    """A CURVE public key from its Z85 text, or from a NAME.key file written by `dreampolish-backend keys`."""
    if isinstance(value, bytes):
        value = value.decode("ascii")
    text = str(value).strip()
    if len(text) == 40 and not Path(text).exists():
        return text.encode("ascii")
    path = Path(text).expanduser()
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line.startswith("public-key"):
                return line.split("=", 1)[1].strip().strip('"').encode("ascii")
        raise ClientError(f"{path} holds no public-key line")
    raise ClientError("the server key must be 40 Z85 characters or the path of a .key file")


def load_client_key(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a NAME.key_secret certificate (`dreampolish keys`)."""
    import zmq.auth

    file = Path(path).expanduser()
    if not file.is_file():
        raise ClientError(f"client key file {file} does not exist")
    try:
        public, secret = zmq.auth.load_certificate(str(file))
    except (OSError, ValueError) as exc:
        raise ClientError(f"{file} is not a ZeroMQ certificate: {exc}") from exc
    if not secret:
        raise ClientError(f"{file} holds no secret key; pass the .key_secret file, not the .key file")
    return public, secret


T = TypeVar("T")
Flow = Generator[m.Message, m.Message, T]
"""A request: yields each message to send, receives its reply, returns the request's result."""


def checked_reply(reply: m.Message) -> m.Message:
    """The reply itself, or the exception an Error reply stands for."""
    if isinstance(reply, m.Error):
        if reply.code == VersionMismatch.code:
            raise VersionMismatch(reply.message)
        if reply.code == "unknown_job":
            raise UnknownJobError(reply.code, reply.message)
        raise RequestRejected(reply.code, reply.message)
    return reply


class BackendClient:
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
        self.address = address
        self.server_public_key = load_server_public_key(server_public_key) if server_public_key else None
        if client_key is None or isinstance(client_key, tuple):
            self.client_key = client_key
        else:
            self.client_key = load_client_key(client_key)
        self._monitor: zmq.Socket | None = None
        self._own_pair: tuple[bytes, bytes] | None = None
        self.timeout_s = timeout_s
        """Longest wait for the reply to a request."""
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.client_name = client_name
        self.welcome: m.Welcome | None = None
        self.last_seq: dict[str, int] = {}
        """Seq of the last event delivered to the caller, per job."""
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._events: collections.deque[m.Message] = collections.deque()
        self._repairing: set[str] = set()
        self.following: set[str] = set()
        """Jobs this client submitted, resumed or attached to, until their final event arrives."""
        self._last_heard = 0.0
        self._last_ping = 0.0
        self._silent_since: float | None = None
        """Monotonic time of the first message sent since the backend was last heard; None when not waiting."""
        self._session_up = False
        """The socket's connection to the backend completed its handshake."""
        self._lost: str = ""
        """Why this socket's connection was lost ("" while it is not): said by every receive until
        reconnect(), since the backend on the other side has forgotten this client."""

    # connection ----------------------------------------------------------------------------------

    def connect(self) -> m.Welcome:
        """Open the socket and do the handshake. Raises BackendUnreachable, VersionMismatch."""
        self.open()
        return self.run_flow(self.hello_flow())

    def open(self) -> None:
        """Open the DEALER socket (no waiting: ZeroMQ connects in the background and keeps what is
        sent until then). connect() is open() and the hello_flow()."""
        if self._socket is None:
            sock = self._context.socket(zmq.DEALER)
            sock.linger = 0
            if self.server_public_key is not None:
                if self.client_key is None:
                    # A pair for this client object only (kept across reconnects).
                    self._own_pair = self._own_pair or zmq.curve_keypair()
                public, secret = self.client_key or self._own_pair
                sock.curve_serverkey = self.server_public_key
                sock.curve_publickey = public
                sock.curve_secretkey = secret
            # Handshake events tell a refused key from a dead backend, which both look like silence.
            self._monitor = sock.get_monitor_socket(
                _HANDSHAKE_EVENTS, f"inproc://dreampolish-client-monitor-{id(self)}-{time.monotonic_ns()}"
            )
            sock.connect(self.address)
            self._socket = sock
            self._session_up, self._lost = False, ""
        self._last_heard = time.monotonic()
        self._silent_since = None

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
        if self._socket is not None:
            if self._monitor is not None:
                self._socket.disable_monitor()
                self._monitor.close(linger=0)
                self._monitor = None
            self._socket.close(linger=0)
            self._socket = None

    @property
    def public_key(self) -> str:
        """This client's CURVE public key (Z85), or "" when it has no key pair of its own."""
        return self.client_key[0].decode("ascii") if self.client_key else ""

    def _check_handshake(self) -> None:
        """Raise AccessRefused when the backend refused the handshake (ZAP 400 or mechanism mismatch),
        BackendUnreachable once an established connection has dropped."""
        from zmq.utils.monitor import recv_monitor_message

        mon = self._monitor
        while not self._lost and mon is not None and mon.poll(0):
            event = recv_monitor_message(mon)
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._session_up = True
            elif event["event"] == zmq.EVENT_DISCONNECTED and self._session_up:
                # ZeroMQ reconnects by itself, and a restarted backend even answers pings, but the
                # backend now sees a new peer: its replies to what was sent and every job this client
                # follows are gone. Only a new handshake and attach bring them back (reconnect()).
                self._lost = (f"the connection to the backend at {self.address} was lost "
                              "(the backend stopped, restarted or dropped it)")
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                raise AccessRefused(self._refusal_line())
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and event["value"] == _MECHANISM_MISMATCH:
                if self.server_public_key is None:
                    raise AccessRefused(
                        f"the backend at {self.address} uses CURVE encryption: set its server key"
                    )
                raise AccessRefused(
                    f"the backend at {self.address} does not use CURVE encryption: clear the server key"
                )
        if self._lost:
            raise BackendUnreachable(self._lost)

    def _refusal_line(self) -> str:
        if self.client_key is None:
            return (
                "this backend does not know your client key (this client has none of its own: "
                "create one with `dreampolish keys` and pass --client-key)"
            )
        return f"this backend does not know your client key {self.public_key[:8]}"

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

    def list_jobs(self) -> list[m.JobInfo]:
        """Every job this client may see (its own; an admin: all), oldest first, page by page."""
        return self.run_flow(self.list_jobs_flow())

    def list_jobs_flow(self) -> Flow[list[m.JobInfo]]:
        jobs: list[m.JobInfo] = []
        page = ""
        while True:
            part, page = yield from self.list_jobs_page_flow(page)
            jobs.extend(part)
            if not page:
                return jobs

    def list_jobs_page(self, page: str = "", limit: int = 0) -> tuple[list[m.JobInfo], str]:
        """One page of jobs and the token of the next ("" after the last page)."""
        return self.run_flow(self.list_jobs_page_flow(page, limit))

    def list_jobs_page_flow(self, page: str = "", limit: int = 0) -> Flow[tuple[list[m.JobInfo], str]]:
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

    def _require_socket(self) -> zmq.Socket:
        if self._socket is None:
            raise ClientError("not connected: call connect() first")
        return self._socket

    def _send(self, msg: m.Message) -> None:
        sock = self._require_socket()
        try:
            frames = codec.encode(msg)
        except Exception as exc:  # noqa: BLE001 - msgpack raises several types (TypeError, OverflowError)
            # A value that cannot go on the wire (an integer over 64 bits, an object) is this
            # request's fault, not the connection's: a ClientError, not BackendUnreachable.
            raise ClientError(f"cannot send {msg.TYPE}: {exc}") from exc
        now = time.monotonic()
        if self._silent_since is None:
            self._silent_since = now
        try:
            sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again as exc:
            raise BackendUnreachable(
                f"cannot send to {self.address}: the connection is not taking messages"
            ) from exc

    def send_request(self, msg: m.Message) -> str:
        """Send a request without waiting; returns the msg_id its reply will carry in `re`."""
        if not isinstance(msg, m.Message):
            raise ClientError(f"a request is a protocol message, not {type(msg).__name__}")
        msg.msg_id = codec.new_message_id()
        self._send(msg)
        return msg.msg_id

    def no_reply(self, msg: m.Message) -> BackendUnreachable:
        return BackendUnreachable(f"no reply to {msg.TYPE} from {self.address} within {self.timeout_s:.0f} s")

    def buffer_event(self, msg: m.Message) -> None:
        """Keep an event for the next poll() (it arrived while a reply was awaited)."""
        self._events.append(msg)

    def take_buffered_events(self) -> list[m.Message]:
        events, self._events = list(self._events), collections.deque()
        return events

    def _request(self, msg: m.Message) -> m.Message:
        msg_id = self.send_request(msg)
        deadline = time.monotonic() + self.timeout_s
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
        the deadline; a deadline already past checks the socket once without waiting. Drives the
        heartbeat and raises BackendUnreachable or AccessRefused."""
        sock = self._require_socket()
        while True:
            self._check_handshake()
            # What has arrived is read before silence is judged: the caller may have been away for
            # longer than dead_after_s (a Blender busy rendering calls no timer).
            if not self._wait_readable(sock, 0):
                now = time.monotonic()
                self._check_alive(now)
                wait_ms = max(0, int(min(deadline - now, self.heartbeat_s / 2) * 1000))
                if wait_ms == 0 and now >= deadline:
                    return None
                if not self._wait_readable(sock, wait_ms):
                    continue
            msg = self._read(sock)
            if msg is None:
                continue
            if not msg.IS_EVENT or self._accept_event(msg):
                return msg

    def _check_alive(self, now: float) -> None:
        """Raise when the backend has been silent too long; ping it after heartbeat_s of silence."""
        if self._silent_since is not None and now - self._silent_since > self.dead_after_s:
            raise BackendUnreachable(
                f"the backend at {self.address} has not answered for {self.dead_after_s:.0f} s "
                f"(is it running{', and is the server key right' if self.server_public_key else ''}?)"
            )
        if now - self._last_heard >= self.heartbeat_s and now - self._last_ping >= self.heartbeat_s:
            self._last_ping = now
            self._send(m.Ping())

    def _read(self, sock: zmq.Socket) -> m.Message | None:
        frames = sock.recv_multipart(copy=False)
        self._last_heard = time.monotonic()
        self._silent_since = None
        try:
            return codec.decode(frames)
        except VersionMismatch:
            raise
        except ProtocolError as exc:
            log.warning("dropped a malformed message from the backend: %s", exc)
            return None

    def _wait_readable(self, sock: zmq.Socket, wait_ms: int) -> bool:
        """Wait for a message, waking early for a handshake event (checked by the caller's loop)."""
        if self._monitor is None:
            return bool(sock.poll(wait_ms, zmq.POLLIN))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        return sock in dict(poller.poll(wait_ms))

    def _accept_event(self, msg: m.Message) -> bool:
        """Exactly-once, in-order delivery per job: drop duplicates, repair gaps by re-attaching."""
        last = self.last_seq.get(msg.job_id, 0)
        if msg.seq <= last:
            return False
        if msg.seq > last + 1:
            if msg.job_id not in self._repairing:
                self._repairing.add(msg.job_id)
                log.info("job %s: missed events %d..%d, re-attaching", msg.job_id, last + 1, msg.seq - 1)
                self._send(m.Attach(job_id=msg.job_id, last_seq=last, msg_id=codec.new_message_id()))
            return False
        self._repairing.discard(msg.job_id)
        self.last_seq[msg.job_id] = msg.seq
        if msg.TYPE in m.FINAL_EVENTS:
            self.following.discard(msg.job_id)
        return True
