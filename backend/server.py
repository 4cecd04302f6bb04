"""The backend's front door: a ZeroMQ ROUTER socket, request dispatch and live event delivery.

One thread owns both sockets: the ROUTER that clients (DEALER sockets) talk to,
and an inproc PULL socket on which job workers publish events, which the loop
forwards to the job's followers (event_delivery.py). Workers never touch a client
socket and never wait for one: every event is already in the job store when it is
published, sends to clients never block (per-peer high-water marks), and a client
that falls behind or misses events is caught up from the store, so memory stays
bounded however slow or absent the clients are.

Every request gets a reply or an Error; a malformed message is answered (or
dropped when it cannot even be answered) and never stops the loop.
"""

from __future__ import annotations

import importlib
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import zmq
from dreampolish.protocol import PROTOCOL_VERSION, codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.errors import INTERNAL_ERROR, DecodeError, ProtocolError, VersionMismatch
from dreampolish.protocol.limits import LIMITS

from .connections import ConnectionGate, ConnectionLimits
from .event_delivery import Followers, send_to_peer
from .executor import Executor, LocalExecutor
from .intake import IntakeLimits, RequestIntake
from .jobs import JobManager, JobStore, QueueLimits
from .pipeline_api import Pipeline
from .security import ClientAccess, CurveKeys, KeyFolder, check_bind_allowed
from .wire_guard import WireGuard

log = logging.getLogger(__name__)

PipelineFactory = Callable[[], Pipeline]
EXPIRY_CHECK_S = 60.0
"""How often the loop looks for expired jobs (serve --expire-after)."""


class CannotBind(OSError):
    """The server socket could not be bound (address in use, bad endpoint, no permission)."""


def backend_version() -> str:
    try:
        return version("dreampolish")
    except PackageNotFoundError:
        return "unknown"


def load_pipeline_factory(spec: str) -> PipelineFactory:
    """Resolve "package.module:Callable" (a Pipeline class or a function returning one)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--pipeline must look like MODULE:CALLABLE, got {spec!r}")
    module = importlib.import_module(module_name)
    try:
        factory = getattr(module, attr)
    except AttributeError as exc:
        raise ImportError(f"{module_name} has no {attr!r}") from exc
    if not callable(factory):
        raise ValueError(f"{spec} is not callable")
    return factory


def resolve_devices(devices: Sequence[str] | None) -> tuple[str, ...]:
    """The requested devices, or cuda:0 when torch sees a GPU, else cpu."""
    if devices:
        return tuple(devices)
    try:
        import torch

        return ("cuda:0",) if torch.cuda.is_available() else ("cpu",)
    except ImportError:
        return ("cpu",)


def results_that_fit(results: Sequence[m.StageResult]) -> list[m.StageResult]:
    """The longest prefix of results (at least one) whose meshes fit one message under the limits."""
    frames, nbytes, part = 1, 0, []
    for r in results:
        mesh = r.mesh
        arrays = [mesh.vertices, mesh.faces, mesh.transform, mesh.uvs, mesh.normals, mesh.colors]
        arrays += [t.array for t in mesh.textures]
        need_frames = sum(a is not None for a in arrays) + sum(t.png is not None for t in mesh.textures)
        need_bytes = sum(a.nbytes for a in arrays if a is not None)
        need_bytes += sum(len(t.png) for t in mesh.textures if t.png is not None)
        # A margin of one header's worth keeps the whole message under max_message_bytes.
        too_big = nbytes + need_bytes > LIMITS.max_message_bytes - LIMITS.max_header_bytes
        if part and (frames + need_frames > LIMITS.max_frames or too_big):
            break
        frames, nbytes = frames + need_frames, nbytes + need_bytes
        part.append(r)
    return part


def log_refusal(peer: bytes, request_id: str, exc: ProtocolError) -> None:
    """One line for each refused request: who sent it, its id, the code and the reason."""
    log.info("refused request %r from %s: %s: %s", request_id, peer.hex(), exc.code, str(exc)[:300])


@dataclass
class ServerConfig:
    bind: str = "tcp://127.0.0.1:5557"
    """ZeroMQ endpoint; "tcp://127.0.0.1:*" picks a free port (see BackendServer.endpoint)."""
    store_dir: Path = Path("jobs")
    """Job store root (one folder per job)."""
    devices: tuple[str, ...] = ("cpu",)
    """One job worker per device."""
    default_preset: str | None = None
    """Preset announced as the default; None = the pipeline's first preset."""
    curve_keys: CurveKeys | None = None
    """Server CURVE key pair; required for a non-loopback bind."""
    curve_clients: Path | None = None
    """Folder of the client public keys served (NAME.key files, re-read when it changes); None with
    CURVE serves any client key (allowed off loopback only with allow_any_client)."""
    curve_admins: Path | None = None
    """Folder of admin public keys: served, and they see and cancel every client's jobs."""
    allow_any_client: bool = False
    """Serve any client key off loopback (said in so many words: serve --allow-any-client)."""
    max_queued_per_client: int = QueueLimits.per_client
    """Queued (not yet running) jobs one client key may have; a submit past it gets queue_full."""
    max_queued_total: int = QueueLimits.total
    """Queued jobs of all clients together."""
    expire_after_s: float | None = None
    """Finished jobs submitted longer ago than this are deleted (checked every EXPIRY_CHECK_S); None keeps them."""
    peer_send_hwm: int = 1000
    """Messages queued per client before further sends to it are deferred (then caught up from the store)."""
    publish_hwm: int = 100_000
    """Events queued between workers and the server thread."""
    poll_interval_s: float = 0.1
    """Longest wait of the loop; bounds the delay of stop and of catching up slow clients."""
    intake_limits: IntakeLimits = IntakeLimits()
    """Requests with binary frames (meshes, images) waiting to be checked, per client and overall
    (intake.py; announced in welcome.limits)."""
    connection_limits: ConnectionLimits = ConnectionLimits()
    """Connections served at once, per peer address and overall (connections.py; announced in
    welcome.limits); one more is refused in its handshake."""
    frame_relay: bool = True
    """Without CURVE, serve through the relay that bounds the frames of a message (wire_guard.py); False
    binds the ROUTER itself, where the bytes gate alone bounds what an unfinished message holds (up to 32
    times its bytes on the wire, in empty frames)."""


@dataclass(frozen=True)
class Caller:
    """The client a request came from: its key (ZAP User-Id) and whether it is an admin."""

    user: str = ""
    """The client's Z85 public key; "" without an allow-list (one user, as before client keys)."""
    admin: bool = False


class BackendServer:
    """Serves one endpoint. serve_forever() in the calling thread, or start()/stop() for a background thread."""

    def __init__(
        self,
        config: ServerConfig,
        pipeline_factory: PipelineFactory,
        executor: Executor | None = None,
        store: JobStore | None = None,
    ):
        """store: the job store (default: a JobStore on config.store_dir)."""
        check_bind_allowed(
            config.bind, config.curve_keys, config.curve_clients or config.curve_admins, config.allow_any_client
        )
        if (config.curve_clients or config.curve_admins) and config.curve_keys is None:
            raise ValueError("--curve-clients and --curve-admins need CURVE (--curve-secret-key)")
        self.access = ClientAccess(
            clients=KeyFolder(config.curve_clients) if config.curve_clients else None,
            admins=KeyFolder(config.curve_admins) if config.curve_admins else None,
            allow_any=config.curve_clients is None and config.curve_admins is None,
        )
        self._gate: ConnectionGate | None = None
        self._guard: WireGuard | None = None
        if config.max_queued_per_client < 1 or config.max_queued_total < 1:
            raise ValueError("the queue limits must be at least 1")
        if config.expire_after_s is not None and config.expire_after_s <= 0:
            raise ValueError("--expire-after must be a positive number of days")
        self.config = config
        self.executor = executor or LocalExecutor(config.devices)
        pipelines = {device: pipeline_factory() for device in self.executor.devices}
        first = next(iter(pipelines.values()))
        self.presets = list(first.presets())
        if config.default_preset is not None and config.default_preset not in self.presets:
            raise ValueError(f"preset {config.default_preset!r} is not one of {self.presets}")
        self.default_preset = config.default_preset or (self.presets[0] if self.presets else "")
        # Optional: a pipeline may name its models (`models() -> list[str]`) for the welcome message.
        models = getattr(first, "models", None)
        self.models = [str(x) for x in models()] if callable(models) else []
        # And the stage chain of each job mode (`stage_chains() -> dict[str, list[str]]`): what clients
        # offer as stages (the add-on's Run Up To); {} when it does not say.
        chains = getattr(first, "stage_chains", None)
        self.stage_chains = {mode: list(names) for mode, names in chains().items()} if callable(chains) else {}
        # And what each preset needs of the card (`preset_memory_gb(device) -> {preset: GB}`), for the
        # welcome: the largest of the devices' figures.
        memory = getattr(first, "preset_memory_gb", None)
        figures = [memory(d) for d in self.executor.devices] if callable(memory) else []
        self.preset_memory_gb = {p: max(f[p] for f in figures if p in f) for p in {k for f in figures for k in f}}
        self.zmq = zmq.Context()
        self._events_endpoint = f"inproc://dreampolish-events-{id(self)}"
        self._local = threading.local()
        self._push_sockets: list[zmq.Socket] = []
        self._push_lock = threading.Lock()
        limits = QueueLimits(per_client=config.max_queued_per_client, total=config.max_queued_total)
        self.manager = JobManager(
            store or JobStore(config.store_dir), self.executor, pipelines, self._publish, limits
        )
        self._next_expiry = 0.0
        self._intake = RequestIntake(config.intake_limits)
        self._completions: queue.SimpleQueue[Callable[[zmq.Socket], None]] = queue.SimpleQueue()
        """Work the intake threads hand back to the loop (replies: only the loop touches the ROUTER)."""
        self.endpoint: str = ""
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._subs = Followers(self.manager)
        self._startup_error: BaseException | None = None

    # running -------------------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> str:
        """Serve on a background thread; returns the bound endpoint once it accepts connections."""
        self._thread = threading.Thread(target=self.serve_forever, name="backend-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("the backend server did not start")
        if self._startup_error is not None:
            raise self._startup_error
        return self.endpoint

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())

    def serve_forever(self) -> None:
        try:
            router, pull = self._open_sockets()
        except (OSError, zmq.ZMQError) as exc:
            self._startup_error = CannotBind(f"cannot serve on {self.config.bind}: {exc}")
            self._ready.set()
            raise self._startup_error from exc
        except Exception as exc:
            self._startup_error = exc
            self._ready.set()
            raise
        try:
            self.manager.start()
            log.info(
                "DreamPolish backend %s (protocol %s) on %s, devices %s, presets %s",
                backend_version(),
                PROTOCOL_VERSION,
                self.endpoint,
                ", ".join(self.executor.devices),
                ", ".join(self.presets),
            )
            self._ready.set()
            self._loop(router, pull)
        finally:
            self._intake.close()
            self.manager.stop()
            router.close(linger=0)
            pull.close(linger=0)
            if self._guard is not None:
                self._guard.stop()
            if self._gate is not None:
                self._gate.stop()
            with self._push_lock:
                for s in self._push_sockets:
                    s.close(linger=0)
                self._push_sockets.clear()
            self.zmq.destroy(linger=0)
            log.info("backend stopped")

    def _open_sockets(self) -> tuple[zmq.Socket, zmq.Socket]:
        router = self.zmq.socket(zmq.ROUTER)
        router.linger = 0
        router.sndhwm = self.config.peer_send_hwm
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # The transport drops a peer that announces a frame larger than this, before any of it is
        # buffered (libzmq checks MAXMSGSIZE against each frame's declared size, not the message's).
        router.setsockopt(zmq.MAXMSGSIZE, LIMITS.max_frame_bytes)
        if self.config.curve_keys is not None:
            router.curve_server = True
            router.curve_publickey = self.config.curve_keys.public
            router.curve_secretkey = self.config.curve_keys.secret
        # Every handshake asks the gate (ZAP): client keys with CURVE, and the connection limits (those the
        # relay counts where there is one: every connection the ROUTER sees then comes from it).
        guarded = (self.config.frame_relay and self.config.curve_keys is None
                   and self.config.bind.startswith(("tcp://", "ipc://")))
        limits = self.config.connection_limits
        self._gate = ConnectionGate(
            # The gate learns of a closed connection a moment after the relay: it gets room to lag.
            self.zmq, router, replace(limits, per_address=2 * limits.total, total=2 * limits.total) if guarded else limits,
            self.access if self.config.curve_keys is not None else None,
        )
        self._gate.start()
        # Without CURVE (local clients only) the ROUTER is reached through the relay that bounds the frames
        # of a message before ZeroMQ holds them (wire_guard.py); with CURVE each frame costs its sender
        # enough that the gate's byte count bounds it.
        try:
            if guarded:
                self._guard = WireGuard(self.config.bind, self.config.connection_limits)
                router.bind(self._guard.router_endpoint)
                self.endpoint = self._guard.start()
            else:
                router.bind(self.config.bind)
                self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        except (zmq.ZMQError, OSError):
            router.close(linger=0)
            self._gate.stop()
            if self._guard is not None:
                self._guard.stop()
                self._guard = None
            raise
        pull = self.zmq.socket(zmq.PULL)
        pull.linger = 0
        pull.rcvhwm = self.config.publish_hwm
        pull.bind(self._events_endpoint)
        return router, pull

    def _loop(self, router: zmq.Socket, pull: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(pull, zmq.POLLIN)
        timeout_ms = int(self.config.poll_interval_s * 1000)
        while not self._stop.is_set():
            # A client that is behind is retried soon: its queue drains as it reads.
            retry = self._subs.next_retry()
            wait_ms = (
                timeout_ms
                if retry is None
                else max(0, min(timeout_ms, int((retry - time.monotonic()) * 1000)))
            )
            ready = dict(poller.poll(wait_ms))
            if router in ready:
                for _ in range(100):  # bounded batches keep event delivery flowing under a request flood
                    try:
                        frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._handle(router, frames)
            if pull in ready:
                for _ in range(1000):
                    try:
                        job_id, seq, *frames = pull.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    if job_id.bytes:  # an empty job id only wakes the loop for _completions
                        self._subs.forward(router, job_id.bytes.decode(), int(seq.bytes), frames)
            self._run_completions(router)
            self._subs.catch_up(router)
            self._expire()

    def _expire(self) -> None:
        if self.config.expire_after_s is None or time.monotonic() < self._next_expiry:
            return
        self._next_expiry = time.monotonic() + EXPIRY_CHECK_S
        try:
            n = self.manager.expire(self.config.expire_after_s)
        except Exception:  # the loop outlives a store that cannot delete; tried again later
            log.exception("expiring old jobs failed")
            return
        if n:
            log.info("deleted %d finished jobs older than %.1f days", n, self.config.expire_after_s / 86400)

    # events from the workers, work from the submit thread -----------------------------------------

    def _publish(self, job_id: str, seq: int, frames: list[bytes | memoryview]) -> None:
        """Called on worker threads (JobManager.emit). Never blocks; a dropped event is caught up from the store."""
        try:
            sock = self._push_socket()
            sock.send_multipart([job_id.encode(), str(seq).encode(), *frames], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.warning("event queue full; job %s event %d will reach clients from the store", job_id, seq)
        except zmq.ZMQError as exc:
            log.debug("event %s:%d not published (%s)", job_id, seq, exc)

    def _push_socket(self) -> zmq.Socket:
        """This thread's PUSH socket to the loop's PULL (sockets are not shared between threads)."""
        sock = getattr(self._local, "push", None)
        if sock is None:
            sock = self.zmq.socket(zmq.PUSH)
            sock.linger = 0
            sock.sndhwm = self.config.publish_hwm
            sock.connect(self._events_endpoint)
            self._local.push = sock
            with self._push_lock:
                self._push_sockets.append(sock)
        return sock

    def _complete(self, work: Callable[[zmq.Socket], None]) -> None:
        """Hand work to the loop (from the submit thread) and wake it; a lost wake-up only delays the
        work to the loop's next turn (at most poll_interval_s)."""
        self._completions.put(work)
        try:
            self._push_socket().send_multipart([b"", b"0"], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _run_completions(self, router: zmq.Socket) -> None:
        while True:
            try:
                work = self._completions.get_nowait()
            except queue.Empty:
                return
            work(router)

    # requests ------------------------------------------------------------------------------------

    def _handle(self, router: zmq.Socket, frames: list[zmq.Frame]) -> None:
        peer, body = frames[0].bytes, frames[1:]
        if body and self._gate is not None:  # what the connection sent is no longer unfinished
            self._gate.unfinished.delivered(body[0].get(zmq.SRCFD), [f.buffer.nbytes for f in body])
        if len(body) > 1:  # binary frames (a mesh, an image): checked on an intake thread (intake.py)
            self._take_in(router, peer, body)
            return

        def serve() -> None:
            if not body:
                raise DecodeError("empty message")
            self._dispatch(router, peer, self._caller(body[0]), codec.decode(body), body)

        self._answer(router, peer, codec.peek_message_id(body) if body else "", serve)

    def _answer(self, router: zmq.Socket, peer: bytes, request_id: str, serve: Callable[[], None]) -> None:
        """Run serve(); any error it raises is the client's answer (the loop outlives every request)."""
        try:
            serve()
        except VersionMismatch as exc:
            log.warning("refused a client: %s", exc)
            self._reply(router, peer, m.Error(code=exc.code, message=str(exc), re=request_id))
        except ProtocolError as exc:
            log_refusal(peer, request_id, exc)
            self._reply(router, peer, m.Error(code=exc.code, message=str(exc), re=request_id))
        except Exception as exc:  # the loop outlives any bug in one request
            log.exception("error serving a request")
            self._reply(
                router,
                peer,
                m.Error(code=INTERNAL_ERROR, message=f"{type(exc).__name__}: {exc}", re=request_id),
            )

    def _take_in(self, router: zmq.Socket, peer: bytes, body: list[zmq.Frame]) -> None:
        """Queue a request with binary frames for an intake thread, or refuse it (limit_exceeded) when
        its client, or all clients, have as much waiting as they may."""
        caller = self._caller(body[0])
        request_id = codec.peek_message_id(body)
        nbytes = sum(f.buffer.nbytes for f in body)
        try:
            self._intake.offer(caller.user or peer, nbytes, "request", lambda: self._check_request(peer, caller, body))
        except ProtocolError as exc:
            log_refusal(peer, request_id, exc)
            self._reply(router, peer, m.Error(code=exc.code, message=str(exc), re=request_id))

    def _check_request(self, peer: bytes, caller: Caller, body: list[zmq.Frame]) -> None:
        """On an intake thread: decode, check and store a submit or resume that carries frames; the
        reply (and the subscription to the new job) go back to the loop."""
        request_id = codec.peek_message_id(body)
        try:
            msg = codec.decode(body)
            if isinstance(msg, m.Submit):
                job, ahead = self.manager.submit(msg.spec, [f.buffer for f in body], caller.user)
                reply: m.Message = m.Accepted(job_id=job.job_id, queue_position=ahead, re=request_id)
                follow = job.job_id
            elif isinstance(msg, m.Resume):
                self.manager.owned(msg.job_id, caller.user, caller.admin)
                ahead = self.manager.resume(msg.job_id, msg.mesh)
                reply, follow = m.Accepted(job_id=msg.job_id, queue_position=ahead, re=request_id), ""
            else:  # nothing else carries large frames; the loop answers it as any request
                self._complete(
                    lambda router: self._answer(
                        router, peer, request_id, lambda: self._dispatch(router, peer, caller, msg, body)
                    )
                )
                return
        except ProtocolError as exc:
            log_refusal(peer, request_id, exc)
            reply, follow = m.Error(code=exc.code, message=str(exc), re=request_id), ""
        except Exception as exc:  # this thread too outlives any bug in one request
            log.exception("error serving a large request")
            reply = m.Error(code=INTERNAL_ERROR, message=f"{type(exc).__name__}: {exc}", re=request_id)
            follow = ""

        def finish(router: zmq.Socket) -> None:
            if follow:
                self._subs.add(follow, peer, 0)  # behind: events already published come from the store
            self._reply(router, peer, reply)

        self._complete(finish)

    def _caller(self, frame: zmq.Frame) -> Caller:
        """Who sent frame: with an allow-list, ZAP's User-Id (the client's Z85 public key); else the one
        user (no CURVE, or CURVE serving any key: such a client may hold a new key per connection,
        so its key cannot name an owner)."""
        if self.config.curve_keys is None or self.access.allow_any:
            return Caller()
        try:
            user = frame.get("User-Id")
        except (zmq.ZMQError, AttributeError):
            user = ""
        user = user.decode() if isinstance(user, bytes) else str(user or "")
        return Caller(user=user, admin=self.access.is_admin(user))

    def _reply(self, router: zmq.Socket, peer: bytes, msg: m.Message) -> None:
        if send_to_peer(router, peer, codec.encode(msg)) is False:
            log.warning("reply %s to %s dropped: the client is not reading", msg.TYPE, peer.hex())

    def _dispatch(
        self, router: zmq.Socket, peer: bytes, caller: Caller, msg: m.Message, frames: list[zmq.Frame]
    ) -> None:
        re = msg.msg_id
        if isinstance(msg, m.Hello):
            log.info("hello from %s (%s)", peer.hex(), msg.client or "unnamed client")
            self._reply(router, peer, self._welcome(re))
        elif isinstance(msg, m.Ping):
            self._reply(router, peer, m.Pong(re=re))
        elif isinstance(msg, m.Submit):
            job, ahead = self.manager.submit(msg.spec, [f.buffer for f in frames], caller.user)
            self._subs.add(job.job_id, peer, 0)
            self._reply(router, peer, m.Accepted(job_id=job.job_id, queue_position=ahead, re=re))
        elif isinstance(msg, m.ListJobs):
            jobs, next_page = self.manager.list_page(caller.user, caller.admin, msg.page, msg.limit)
            self._reply(router, peer, m.JobList(jobs=jobs, next_page=next_page, re=re))
        elif isinstance(msg, (m.Cancel, m.Resume, m.Attach, m.FetchResult, m.DeleteJob)):
            # Every request naming a job: only its owner, or an admin, may use it.
            self.manager.owned(msg.job_id, caller.user, caller.admin)
            self._job_request(router, peer, msg)
        else:
            raise DecodeError(f"{msg.TYPE} is a backend message; clients cannot send it")

    def _welcome(self, re: str) -> m.Welcome:
        return m.Welcome(
            backend_version=backend_version(),
            devices=list(self.executor.devices),
            presets=self.presets,
            default_preset=self.default_preset,
            models=self.models,
            stage_chains=self.stage_chains,
            preset_memory_gb=self.preset_memory_gb,
            limits={
                **LIMITS.to_dict(), **self._intake.limits.published(), **self.config.connection_limits.published()
            },
            max_queued_per_client=self.manager.limits.per_client,
            max_queued_total=self.manager.limits.total,
            re=re,
        )

    def _job_request(self, router: zmq.Socket, peer: bytes, msg: m.Message) -> None:
        re = msg.msg_id
        if isinstance(msg, m.Cancel):
            self.manager.cancel(msg.job_id)
            self._reply(router, peer, m.Accepted(job_id=msg.job_id, re=re))
        elif isinstance(msg, m.Resume):
            ahead = self.manager.resume(msg.job_id, msg.mesh)
            self._reply(router, peer, m.Accepted(job_id=msg.job_id, queue_position=ahead, re=re))
        elif isinstance(msg, m.Attach):
            follow = self.manager.attach(msg.job_id, msg.last_seq)
            self._reply(router, peer, m.Accepted(job_id=msg.job_id, re=re))
            if follow:
                self._subs.add(msg.job_id, peer, msg.last_seq)
        elif isinstance(msg, m.DeleteJob):
            self.manager.delete(msg.job_id)
            self._subs.forget_job(msg.job_id)
            self._reply(router, peer, m.Accepted(job_id=msg.job_id, re=re))
        elif isinstance(msg, m.FetchResult):
            state, results = self.manager.stage_results(msg.job_id)
            part = results_that_fit(results[msg.first :])
            more_from = msg.first + len(part) if msg.first + len(part) < len(results) else 0
            reply = m.Result(state=state, stage_results=part, more_from=more_from, job_id=msg.job_id, re=re)
            self._reply(router, peer, reply)
