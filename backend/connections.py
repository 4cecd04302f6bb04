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
(ZeroMQ drops those that do not finish it within ZMQ_HANDSHAKE_IVL, here HANDSHAKE_S). A refused
connection is shut down by the gate soon after (ZeroMQ would go on reading it until then).

ZAP answers with a status code; ZeroMQ sends the client only the code, never its text (the ZMTP ERROR
command), and the client's socket monitor reports it as HANDSHAKE_FAILED_AUTH with that code as value.
So the codes say which refusal it was: 400, a CURVE client key that is not in the allow-list; 500 (the
one other code ZeroMQ passes on: 300 closes the connection silently), as many connections as the
backend serves. protocol/connection.py turns each into words.

One connection alone could still grow without bound: ZeroMQ takes any number of frames into a message
that never ends (each under `max_frame_bytes`). UnfinishedMessages bounds that from outside ZeroMQ: the
kernel counts the bytes each TCP connection has received (TCP_INFO, Linux), the server counts the bytes
of the whole messages ZeroMQ has handed it from that connection (each message's file descriptor,
ZMQ_SRCFD), and the difference is what the connection holds unfinished, give or take the handshake and
the kernel's receive buffer. A connection over `max_message_bytes` (no message may be larger) that has
handed over nothing since the last look is shut down (shutdown(2) on a duplicate of its descriptor;
ZeroMQ sees the connection end and frees what it held), and while all connections together hold more
than `max_unfinished_bytes_total`, so is the one in a message's middle that has received nothing for
longest (a connection between messages, holding only its handshake, frees nothing and is left alone).
What this bounds is bytes on the wire: ZeroMQ keeps a 64-byte message per frame, so a peer sending
empty frames (2 bytes each without CURVE, 35 with it) could make the backend hold 32 times as much
without CURVE and about 2 times with it. Without CURVE the ROUTER is therefore reached through the
relay of wire_guard.py, which bounds the frames of each message and counts its bytes exactly (the
ROUTER's connections are then Unix sockets, where TCP_INFO says nothing); this gate's byte count serves
CURVE connections, and NULL ones where the relay is turned off (ServerConfig.frame_relay).
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
UNFINISHED_ALLOWANCE = 16 * 1024 * 1024
"""Bytes received beyond the largest message before a connection is shut down: its handshake, its
heartbeats and the kernel's receive buffer (a few MiB) are counted as received but are no message."""
IN_MESSAGE_BYTES = 1024 * 1024
"""Unfinished bytes below which a connection is taken to be between messages (its handshake, 107 bytes
with NULL and 567 with CURVE, and ZMTP commands): past max_unfinished_bytes_total only connections
holding more are shut down, since shutting down one that holds less frees nothing and drops an idle
client (a Blender busy rendering sends nothing for minutes). What those hold is at most this much per
connection."""
CHECK_EVERY_S = 0.1
"""How often the connections' unfinished bytes are looked at."""
CURVE_FRAME_BYTES = 33
"""CurveZMQ's MESSAGE command around each frame: its name (8 bytes), nonce (8), flags (1) and MAC (16)."""
REFUSED_CLOSE_AFTER_S = 0.2
"""A refused connection is shut down this long after its refusal: ZeroMQ has sent the client its ERROR
by then, and keeps reading the peer until its handshake times out (it buffers a frame sent early)."""
HANDSHAKE_S = 10.0
"""ZMQ_HANDSHAKE_IVL of the ROUTER (ZeroMQ's default: 30 s): a connection that has not finished its
handshake by then is dropped, a refused one among them where the gate could not tell which it was."""
KEEPALIVE_IDLE_S = 60
"""TCP keepalive of the ROUTER's connections: after this long without a packet the kernel asks the peer,
KEEPALIVE_PROBES times every KEEPALIVE_INTERVAL_S, and ends the connection if it never answers. A peer
that vanished without a word (its machine lost its network or power, a NAT forgot the mapping) otherwise
holds its place for ever: the backend sends an idle client nothing, so nothing tells it, and the client
connecting again from the same address would lock itself out at max_connections_per_address. A live
client's kernel answers whatever the client does (a Blender rendering for an hour), and the probes
carry no data, so they count as nothing unfinished."""
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_PROBES = 6
LOG_EVERY_S = 10.0
"""A refused peer may try again and again at once: one log line per address this often."""


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections the backend serves at once, and what their unfinished messages may hold
    (published in welcome.limits but unfinished_bytes, which is max_message_bytes and an allowance)."""

    per_address: int = LIMITS.max_connections_per_address
    total: int = LIMITS.max_connections_total
    unfinished_bytes: int = LIMITS.max_message_bytes + UNFINISHED_ALLOWANCE
    """Bytes a connection may have sent that make no whole message yet."""
    unfinished_total: int = LIMITS.max_unfinished_bytes_total

    def __post_init__(self) -> None:
        if self.per_address < 1 or self.total < 1:
            raise ValueError("the connection limits must be at least 1")

    def published(self) -> dict[str, int]:
        """These limits under their names in `welcome.limits`."""
        return {"max_connections_per_address": self.per_address, "max_connections_total": self.total,
                "max_unfinished_bytes_total": self.unfinished_total}


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
        self._unanswered: dict[str, set[int]] = collections.defaultdict(set)
        """Per address, the connections whose handshake ZAP has not answered (as far as is known)."""

    def opened(self, fd: int, address: str) -> None:
        if fd in self._address_of:  # a descriptor reused before its close was read
            self.closed(fd)
        self._address_of[fd] = address
        self._live[address] += 1
        self._unanswered[address].add(fd)

    def asking(self, address: str) -> int | None:
        """The connection from address whose handshake asks ZAP now, where that is known: the one of that
        address still unanswered. None when there are several (a ZAP request names the address, not the
        connection); they stay unanswered, as far as is known, until they close."""
        waiting = self._unanswered.get(address)
        if not waiting or len(waiting) != 1:
            return None
        fd = waiting.pop()
        if not waiting:
            del self._unanswered[address]
        return fd

    def closed(self, fd: int) -> None:
        address = self._address_of.pop(fd, None)
        if address is None:
            return
        self._unanswered.get(address, set()).discard(fd)
        if address in self._unanswered and not self._unanswered[address]:
            del self._unanswered[address]
        self._live[address] -= 1
        if self._live[address] <= 0:
            del self._live[address]
        if self._refused[address] > 0:
            self._refused[address] -= 1
        if self._refused[address] <= 0:
            del self._refused[address]

    def address_of(self, fd: int) -> str:
        return self._address_of.get(fd, "?")

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


def wire_bytes(frame_sizes: list[int], curve: bool) -> int:
    """Bytes a message of these frames took on a ZMTP 3 connection: each frame with its header (flags
    and a 1- or 8-byte size), inside CurveZMQ's MESSAGE command with CURVE."""
    total = 0
    for size in frame_sizes:
        size += CURVE_FRAME_BYTES if curve else 0
        total += size + (2 if size < 256 else 9)
    return total


def tcp_received(fd: int) -> tuple[int, int] | None:
    """(bytes the kernel has received on this TCP connection, milliseconds since the last of them): TCP_INFO's
    tcpi_bytes_received (Linux 4.1 and later) and tcpi_last_data_recv; None where it cannot say (another
    system, not a TCP socket, closed)."""
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None:
        return None
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            info = s.getsockopt(socket.IPPROTO_TCP, tcp_info, 256)
    except OSError:
        return None
    if len(info) < 136:
        return None
    return int.from_bytes(info[128:136], "little"), int.from_bytes(info[52:56], "little")


def shut_down(fd: int, peer: object) -> None:
    """End a connection that ZeroMQ owns, if fd is still the connection peer_name() identified: it reads
    the end, closes its side and frees what it held. The check and the shutdown act on one duplicate of
    the descriptor, so a descriptor closed and reused in between is never shut down."""
    if peer is None:
        return
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            if _identity(s) == peer:
                s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class UnfinishedMessages:
    """Per connection (its file descriptor), the bytes it has sent that make no whole message yet.

    The server thread calls delivered() for every message it reads; the gate's thread calls check().
    A descriptor is reset when it is accepted again (ZeroMQ reuses them)."""

    def __init__(self, limit: int, total_limit: int, curve: bool) -> None:
        self.limit = limit
        self.total_limit = total_limit
        self.curve = curve
        self._lock = threading.Lock()
        self._delivered: dict[int, int] = {}
        self._peer: dict[int, object] = {}
        """Each connection's peer_name(), to shut down only that connection."""
        self._seen: dict[int, int] = {}
        """What was delivered at the last check: a connection that handed over a message since is moving."""

    def opened(self, fd: int, peer: object) -> None:
        with self._lock:
            self._delivered[fd] = 0
            self._peer[fd] = peer
            self._seen.pop(fd, None)

    def closed(self, fd: int) -> None:
        with self._lock:
            self._delivered.pop(fd, None)
            self._peer.pop(fd, None)
            self._seen.pop(fd, None)

    def delivered(self, fd: int, frame_sizes: list[int]) -> None:
        with self._lock:
            if fd in self._delivered:
                self._delivered[fd] += wire_bytes(frame_sizes, self.curve)

    def peer(self, fd: int) -> object:
        with self._lock:
            return self._peer.get(fd)

    def unfinished(self, fd: int) -> int | None:
        received = tcp_received(fd)
        with self._lock:
            delivered = self._delivered.get(fd)
        return None if received is None or delivered is None else received[0] - delivered

    def check(self) -> list[tuple[int, int, str]]:
        """Shut down each connection over the limit, and while all together are over the total, the one
        idle longest among those holding more than IN_MESSAGE_BYTES; only connections that delivered
        nothing since the last check. Returns (descriptor,
        unfinished bytes, the limit) of each."""
        with self._lock:
            fds = list(self._delivered)
        rows = []
        for fd in fds:
            received = tcp_received(fd)
            with self._lock:
                delivered = self._delivered.get(fd)
                still = self._seen.get(fd) == delivered
                self._seen[fd] = delivered if delivered is not None else 0
            if received is not None and delivered is not None:
                rows.append((fd, received[0] - delivered, received[1], still))
        over = [(fd, held, "max_message_bytes") for fd, held, _, still in rows if held > self.limit and still]
        cut = {fd for fd, _, _ in over}
        total = sum(max(0, held) for fd, held, _, _ in rows if fd not in cut)
        idle_first = sorted((r for r in rows if r[0] not in cut and r[3] and r[1] > IN_MESSAGE_BYTES),
                            key=lambda r: (-r[2], -r[1]))
        for fd, held, _, _ in idle_first:
            if total <= self.total_limit:
                break
            over.append((fd, held, "max_unfinished_bytes_total"))
            total -= held
        for fd, _, _ in over:
            with self._lock:
                peer = self._peer.get(fd)
            shut_down(fd, peer)
        return over


def _identity(s: socket.socket) -> tuple[int, object]:
    return os.fstat(s.fileno()).st_ino, s.getpeername()


def peer_name(fd: int) -> object:
    """What identifies an accepted connection (None when it is gone): its socket's inode and its
    getpeername(). The inode tells it from a connection that gets its descriptor later, also where the
    peer's name does not: every Unix (IPC) socket's peer is ""."""
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            return _identity(s)
    except OSError:
        return None


def address_key(peer: object) -> str:
    """The address a connection (peer_name) counts under, as zap_address names it: the IP ("ipc" for
    every local socket, "?" when it is gone)."""
    if not isinstance(peer, tuple):
        return "?"
    name = peer[1]
    return str(name[0]) if isinstance(name, tuple) and name else "ipc"


def zap_address(address: bytes) -> str:
    """ZAP's Address frame as address_key writes it (ZeroMQ 4.3 writes an IPC peer as
    "localhost:uid:gid:pid"; every IPC peer is one address)."""
    text = address.decode("ascii", "replace")
    return "ipc" if not text or text.startswith((":", "localhost")) else text


class ConnectionGate:
    """The ZAP handler of one ROUTER socket: refuses client keys not served (CURVE) and connections
    past the limits. start() it before the ROUTER binds, stop() it after the ROUTER is closed."""

    def __init__(self, context: zmq.Context, router: zmq.Socket, limits: ConnectionLimits,
                 access: ClientAccess | None = None) -> None:
        """access: the client keys served, for a CURVE ROUTER; None for NULL (every client is served)."""
        self.live = LiveConnections(limits)
        self.unfinished = UnfinishedMessages(limits.unfinished_bytes, limits.unfinished_total,
                                             curve=access is not None)
        self._access = access
        self._context = context
        self._monitor_endpoint = f"inproc://dreampolish-connections-{id(self)}"
        router.zap_domain = ZAP_DOMAIN
        # Without a handler (this thread gone) ZeroMQ refuses every handshake instead of serving all.
        router.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        router.handshake_ivl = int(HANDSHAKE_S * 1000)
        router.tcp_keepalive = 1
        router.tcp_keepalive_idle = KEEPALIVE_IDLE_S
        router.tcp_keepalive_intvl = KEEPALIVE_INTERVAL_S
        router.tcp_keepalive_cnt = KEEPALIVE_PROBES
        router.monitor(self._monitor_endpoint, zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._close_at: dict[int, tuple[float, object]] = {}
        """Refused connections to shut down: when, and their peer."""
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
        # No high-water mark: ZeroMQ drops monitor events past one, and a lost DISCONNECTED would hold
        # its connection's place for ever.
        monitor.rcvhwm = 0
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
        next_check = time.monotonic() + CHECK_EVERY_S
        try:
            while not self._stop.is_set():
                try:
                    ready = dict(poller.poll(100))
                    self._read_monitor(monitor)
                    self._close_refused()
                    if time.monotonic() >= next_check:
                        next_check = time.monotonic() + CHECK_EVERY_S
                        for fd, held, limit in self.unfinished.check():
                            log.warning("shut down connection %d (%s): %d bytes received that make no whole "
                                        "message, over %s", fd, self.live.address_of(fd), held, limit)
                    if zap in ready:
                        for _ in range(100):
                            try:
                                request = zap.recv_multipart(zmq.NOBLOCK)
                            except zmq.Again:
                                break
                            self._read_monitor(monitor)  # the asking connection's ACCEPTED came before it
                            self._answer(zap, request)
                except zmq.ContextTerminated:
                    raise
                except Exception:  # without this thread every handshake fails: it outlives a bug
                    log.exception("the connection gate failed a turn")
                    time.sleep(0.1)
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
            fd = int(event["value"])  # the connection's file descriptor, for these two events
            if event["event"] == zmq.EVENT_ACCEPTED:
                peer = peer_name(fd)
                self.live.opened(fd, address_key(peer))
                self.unfinished.opened(fd, peer)
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.live.closed(fd)
                self.unfinished.closed(fd)
                self._close_at.pop(fd, None)  # closed: its descriptor may be another's soon

    def _close_refused(self) -> None:
        """Shut down the refused connections whose time has come (the monitor was read just before, so
        a descriptor still listed is still that connection's)."""
        now = time.monotonic()
        for fd, (when, peer) in list(self._close_at.items()):
            if now >= when:
                del self._close_at[fd]
                shut_down(fd, peer)

    def _refuse(self, address: str, fd: int | None) -> None:
        self.live.refused(address)
        if fd is not None:
            self._close_at[fd] = (time.monotonic() + REFUSED_CLOSE_AFTER_S, self.unfinished.peer(fd))

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
        fd = self.live.asking(address)
        try:
            user = b""
            if self._access is not None:  # a CURVE socket: the client's key must be served
                key = z85.encode(credentials[0]) if mechanism == b"CURVE" and len(credentials) == 1 else b""
                if not key or not self._access.callback("", key):
                    self._refuse(address, fd)
                    reply(UNKNOWN_KEY, b"unknown client key")
                    return
                user = key  # ZAP's User-Id: the server reads each message's owner from it
            elif mechanism != b"NULL":
                self._refuse(address, fd)
                reply(UNKNOWN_KEY, b"mechanism not served")
                return
            why = self.live.refusal(address)
            if why:
                self._refuse(address, fd)
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
