"""Who may connect, and how many at once: the backend's ZAP handler, asked in every handshake.

ZeroMQ keeps every frame of a message until its last frame has arrived; it bounds each frame
(ZMQ_MAXMSGSIZE: `max_frame_bytes`) and counts only whole messages against its high-water marks, and
the application sees nothing of a message before it is complete. So what peers that stop in the
middle of a message make the backend hold grows with the number of peers (bench/unfinished_messages.py
measures it). This module bounds that number: the live connections per peer address and overall
(`max_connections_per_address`, `max_connections_total`, announced in `welcome.limits`).

One thread, ConnectionGate, answers ZeroMQ's ZAP requests (RFC 27, inproc://zeromq.zap.01) and reads
the ROUTER's socket monitor. The monitor's ACCEPTED and DISCONNECTED events carry the connection's file
descriptor, so they count the live TCP connections exactly (LiveConnections), each under its peer's
address (getpeername on the accepted descriptor). ZeroMQ reports ACCEPTED before the handshake asks
ZAP, and the gate reads every monitor event before it answers, so the connection asking is already
counted: it is refused when it is one too many. Connections still in their handshake count as well
(ZeroMQ drops those that do not finish it within ZMQ_HANDSHAKE_IVL, 30 s).

ZAP answers with a status code; ZeroMQ sends the client only the code, never its text (the ZMTP ERROR
command), and the client's socket monitor reports it as HANDSHAKE_FAILED_AUTH with that code as value.
So the codes say which refusal it was: 400, a CURVE client key that is not in the allow-list; 500 (the
one other code ZeroMQ passes on: 300 closes the connection silently), as many connections as the
backend serves. protocol/connection.py turns each into words.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

import zmq
from dreampolish.protocol.limits import LIMITS
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from .security import ClientAccess

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"dreampolish"
"""Set on the ROUTER: with a domain, ZeroMQ asks ZAP in NULL handshakes too, not only in CURVE ones."""
TOO_MANY_CONNECTIONS = b"500"
UNKNOWN_KEY = b"400"
LOG_EVERY_S = 10.0
"""A refused peer's ZeroMQ tries again every 100 ms: one log line per address this often."""


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections the backend serves at once (each field a published limit)."""

    per_address: int = LIMITS.max_connections_per_address
    total: int = LIMITS.max_connections_total

    def __post_init__(self) -> None:
        if self.per_address < 1 or self.total < 1:
            raise ValueError("the connection limits must be at least 1")

    def published(self) -> dict[str, int]:
        """These limits under their names in `welcome.limits`."""
        return {"max_connections_per_address": self.per_address, "max_connections_total": self.total}


class LiveConnections:
    """The live connections, by file descriptor and peer address, and whether one more may be served.

    A connection refused in its handshake stays live until ZeroMQ has closed it; `refused` counts those
    per address so that the peers asking right after it are not refused for it. The count of refused
    ones drops with each connection of that address that closes, whichever it was, so it is never
    more than the refused connections still open, and the connections served never exceed a limit."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._address_of: dict[int, str] = {}
        self._live: collections.Counter[str] = collections.Counter()
        self._refused: collections.Counter[str] = collections.Counter()

    def opened(self, fd: int, address: str) -> None:
        if fd in self._address_of:  # a descriptor reused before its close was read
            self.closed(fd)
        self._address_of[fd] = address
        self._live[address] += 1

    def closed(self, fd: int) -> None:
        address = self._address_of.pop(fd, None)
        if address is None:
            return
        self._live[address] -= 1
        if self._live[address] <= 0:
            del self._live[address]
        if self._refused[address] > 0:
            self._refused[address] -= 1
        if self._refused[address] <= 0:
            del self._refused[address]

    def count(self, address: str | None = None) -> int:
        """Live connections not refused: from address, or from every address."""
        if address is None:
            return self._live.total() - self._refused.total()
        return self._live[address] - self._refused[address]

    def refusal(self, address: str) -> str:
        """Why the connection from address now asking must be refused ("" when it may be served); it
        is one of the live connections counted."""
        here, total = self.count(address), self.count()
        if here > self.limits.per_address:
            return (f"max_connections_per_address is {self.limits.per_address}: {address} has "
                    f"{here - 1} connections open")
        if total > self.limits.total:
            return f"max_connections_total is {self.limits.total}: {total - 1} connections are open"
        return ""

    def refused(self, address: str) -> None:
        self._refused[address] += 1


def peer_address(fd: int) -> str:
    """The peer's address of an accepted connection, as ZAP's Address names it ("?" when it is gone)."""
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            if s.family == socket.AF_UNIX:
                return "ipc"
            return str(s.getpeername()[0])
    except OSError:
        return "?"


def zap_address(address: bytes) -> str:
    """ZAP's Address frame as peer_address writes it (ZeroMQ writes an IPC peer as ":uid:gid:pid")."""
    text = address.decode("ascii", "replace")
    return "ipc" if not text or text.startswith(":") else text


class ConnectionGate:
    """The ZAP handler of one ROUTER socket: refuses client keys not served (CURVE) and connections
    past the limits. start() it before the ROUTER binds, stop() it after the ROUTER is closed."""

    def __init__(self, context: zmq.Context, router: zmq.Socket, limits: ConnectionLimits,
                 access: ClientAccess | None = None) -> None:
        """access: the client keys served, for a CURVE ROUTER; None for NULL (every client is served)."""
        self.live = LiveConnections(limits)
        self._access = access
        self._context = context
        self._monitor_endpoint = f"inproc://dreampolish-connections-{id(self)}"
        router.zap_domain = ZAP_DOMAIN
        # Without a handler (this thread gone) ZeroMQ refuses every handshake instead of serving all.
        router.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        router.monitor(self._monitor_endpoint, zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_logged: dict[str, float] = {}
        self._unlogged: collections.Counter[str] = collections.Counter()

    def start(self) -> None:
        zap = self._context.socket(zmq.ROUTER)
        zap.linger = 0
        zap.bind(ZAP_ENDPOINT)
        monitor = self._context.socket(zmq.PAIR)
        monitor.linger = 0
        monitor.connect(self._monitor_endpoint)
        self._thread = threading.Thread(target=self._run, args=(zap, monitor), name="backend-connections",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self, zap: zmq.Socket, monitor: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(zap, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(100))
                self._read_monitor(monitor)
                if zap in ready:
                    for _ in range(100):
                        try:
                            request = zap.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._read_monitor(monitor)  # the asking connection's ACCEPTED came before it
                        self._answer(zap, request)
        except zmq.ContextTerminated:
            pass
        finally:
            zap.close(linger=0)
            monitor.close(linger=0)

    def _read_monitor(self, monitor: zmq.Socket) -> None:
        while True:
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_ACCEPTED:
                self.live.opened(event["value"], peer_address(event["value"]))
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.live.closed(event["value"])

    def _answer(self, zap: zmq.Socket, request: list[bytes]) -> None:
        """One ZAP request: [routing id, b"", version, request id, domain, address, identity,
        mechanism, credentials...]; answered [routing id, b"", version, request id, status, text,
        user id, metadata]. Never raises: a handshake left unanswered would wait until it times out."""
        if len(request) < 8 or request[1] != b"":
            log.warning("a ZAP request that is not one (%d frames) was not answered", len(request))
            return
        route, _, version, request_id, _, address_frame, _, mechanism, *credentials = request

        def reply(status: bytes, text: bytes, user: bytes = b"") -> None:
            zap.send_multipart([route, b"", version, request_id, status, text, user, b""])

        address = zap_address(address_frame)
        try:
            user = b""
            if self._access is not None:  # a CURVE socket: the client's key must be served
                key = z85.encode(credentials[0]) if mechanism == b"CURVE" and len(credentials) == 1 else b""
                if not key or not self._access.callback("", key):
                    self.live.refused(address)
                    reply(UNKNOWN_KEY, b"unknown client key")
                    return
                user = key  # ZAP's User-Id: the server reads each message's owner from it
            elif mechanism != b"NULL":
                self.live.refused(address)
                reply(UNKNOWN_KEY, b"mechanism not served")
                return
            why = self.live.refusal(address)
            if why:
                self.live.refused(address)
                self._log_refusal(address, why)
                reply(TOO_MANY_CONNECTIONS, b"too many connections")
                return
            reply(b"200", b"OK", user)
        except Exception:  # this thread outlives any bug in one request; the handshake is refused
            log.exception("answering a ZAP request failed")
            try:
                reply(TOO_MANY_CONNECTIONS, b"internal error")
            except zmq.ZMQError:
                pass

    def _log_refusal(self, address: str, why: str) -> None:
        now = time.monotonic()
        if now - self._last_logged.get(address, -LOG_EVERY_S) < LOG_EVERY_S:
            self._unlogged[address] += 1
            return
        more = self._unlogged.pop(address, 0)
        self._last_logged[address] = now
        log.warning("refused a connection from %s: %s%s", address, why,
                    f" ({more} more refused since the last line)" if more else "")
