"""Frames per message, bounded before ZeroMQ holds them: the relay in front of a backend without CURVE.

ZeroMQ keeps every frame of a message until its last frame arrives and shows the application nothing
of it before then (connections.py). Its 64-byte message per frame makes an empty frame, 2 bytes on the
wire without CURVE, cost the backend 32 times what the peer sent; ConnectionGate bounds the bytes on
the wire (TCP_INFO), which then bounds memory only to 32 times that (with CURVE each frame is a
MESSAGE command of at least 35 bytes: about 2 times). libzmq has no option that bounds the frames of one
message (ZMQ_MAXMSGSIZE bounds each frame).

So a backend serving without CURVE (loopback TCP or ipc://, local processes only: security.py) listens
through this relay. The ROUTER binds an ipc:// endpoint in a folder only the backend's user can open;
the relay accepts on the public endpoint and, for each client, opens one connection to the ROUTER and
copies bytes both ways, reading the ZMTP 3 framing of what the client sends (RFC 23/ZMTP: a 64-byte
greeting, then frames: flags MORE 0x01, LONG 0x02, COMMAND 0x04, and a 1- or 8-byte size). A connection is
closed (both ends; ZeroMQ frees what it held) when what it sends breaks a bound before ZeroMQ has kept
it:

- a message of more than `WIRE_FRAMES` frames (four times LIMITS.max_frames: a message of 65 frames still
  reaches the codec and gets its clear "message has 65 frames" error);
- an unfinished message over ConnectionLimits.unfinished_bytes (the gate's rule, on exact counts here);
- a frame over LIMITS.max_frame_bytes (ZeroMQ drops those too), reserved flag bits, a greeting that is not
  ZMTP 3 with the NULL mechanism;
- a command other than the handshake's READY (once, first) and heartbeats (PING, PONG; at most
  COMMANDS_PER_S a second): libzmq queues SUBSCRIBE and CANCEL as messages of their own, outside any
  bound on frames, and reads any other command at once, so a flood of them would cost the relay's thread
  far more than the peer;
- while all connections' unfinished messages together hold more than ConnectionLimits.unfinished_total,
  the one in a message's middle that has sent nothing for longest (the gate's rule).

The ROUTER's connections are Unix sockets, where TCP_INFO says nothing and every peer is one address:
the relay's counts replace the gate's for them. It counts the connections per client address with the
gate's LiveConnections and refuses one too many as the gate would (the NULL handshake's ERROR with ZAP's
status 500, so the client says "too many connections"); the gate still answers the ROUTER's handshakes.
Each direction holds at most one chunk (CHUNK) per connection: a side that does not read stops the
relay reading the other, so ZeroMQ's own high-water marks and the client's pace apply as before.
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import socket
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field

from dreampolish.protocol.limits import LIMITS

from . import connections
from .connections import (
    IN_MESSAGE_BYTES,
    REFUSED_CLOSE_AFTER_S,
    TOO_MANY_CONNECTIONS,
    ConnectionLimits,
    LiveConnections,
)

log = logging.getLogger(__name__)

WIRE_FRAMES = 4 * LIMITS.max_frames
"""Most frames in one message on the wire: what the backend holds of an unfinished message is at most
this many 64-byte frames beside its bytes."""
GREETING_BYTES = 64
CHUNK = 256 * 1024
MORE, LONG, COMMAND = 0x01, 0x02, 0x04
LOG_EVERY_S = 10.0
MAX_COMMAND_BYTES = 4096
"""Largest command a client may send: READY with a routing id (at most 255 bytes) and its socket type."""
COMMANDS_PER_S = 50
"""Heartbeats a client may send in one second (the add-on sends one every few seconds, a test client
every 0.3 s); a flood of them would keep the relay's thread busy for every client."""
NULL_GREETING = b"\xff" + bytes(8) + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + bytes(32)
"""A ZMTP 3.0 server's greeting with the NULL mechanism (as-server 0, as ZeroMQ sends it for NULL)."""
REFUSAL = NULL_GREETING + bytes([COMMAND, 10]) + b"\x05ERROR\x03" + TOO_MANY_CONNECTIONS
"""What a refused client reads: the greeting, then the ERROR command with ZAP's status, which the
client's ZeroMQ reports as HANDSHAKE_FAILED_AUTH 500 (as when the gate refuses a handshake)."""


class Violation(Exception):
    """What a client sent that breaks a bound: the relay closes its connection."""


@dataclass
class ZmtpReader:
    """The framing of one client's byte stream, followed as it arrives (feed), and its bounds."""

    limits: ConnectionLimits
    greeting: bytearray = field(default_factory=bytearray)
    header: bytearray = field(default_factory=bytearray)
    body_left: int = 0
    command: bool = False
    command_body: bytearray = field(default_factory=bytearray)
    more: bool = False
    ready: bool = False
    """The handshake's READY has come: from now on only messages, PING and PONG."""
    frames: int = 0
    """Frames of the message now arriving."""
    unfinished: int = 0
    """Bytes sent since the last whole message (frames of the message now arriving, with their headers)."""
    commands_in_second: int = 0
    second_start: float = 0.0

    def feed(self, data: memoryview) -> None:
        """Follow `data`; raises Violation before the bytes that break a bound are taken."""
        i, n = 0, len(data)
        while i < n:
            if len(self.greeting) < GREETING_BYTES:
                take = min(GREETING_BYTES - len(self.greeting), n - i)
                self.greeting += data[i:i + take]
                i += take
                self._check_greeting()
            elif self.body_left:
                take = min(self.body_left, n - i)
                if self.command:
                    self.command_body += data[i:i + take]
                i += take
                self.body_left -= take
                self.unfinished += take
                if not self.body_left:
                    self._frame_done()
            else:
                self.header.append(data[i])
                i += 1
                flags = self.header[0]
                if flags & ~(MORE | LONG | COMMAND) or flags & COMMAND and flags & MORE:
                    raise Violation(f"a frame with flags 0x{flags:02x} (reserved bits, or a command with MORE)")
                need = 9 if flags & LONG else 2
                if len(self.header) == need:
                    self._frame_start(flags, int.from_bytes(self.header[1:], "big"))

    def _check_greeting(self) -> None:
        g = self.greeting
        if g[:1] != b"\xff" or (len(g) >= 10 and not g[9] & 0x01):
            raise Violation("a greeting that is not ZMTP's")
        if len(g) >= 11 and g[10] < 3:
            raise Violation(f"ZMTP version {g[10]} (the backend speaks ZMTP 3)")
        if len(g) >= 32 and bytes(g[12:32]).rstrip(b"\0") != b"NULL":
            raise Violation(f"the {bytes(g[12:32]).rstrip(bytes(1)).decode('ascii', 'replace')!r} mechanism "
                            f"(this backend serves NULL; CURVE needs a backend started with keys)")

    def _frame_start(self, flags: int, size: int) -> None:
        self.header.clear()
        self.unfinished += 2 if not flags & LONG else 9
        if size > LIMITS.max_frame_bytes:
            raise Violation(f"a frame of {size} bytes (max_frame_bytes is {LIMITS.max_frame_bytes})")
        self.command = bool(flags & COMMAND)
        if self.command:
            if size > MAX_COMMAND_BYTES:
                raise Violation(f"a command of {size} bytes (the relay takes commands of up to {MAX_COMMAND_BYTES})")
            self.command_body.clear()
        else:
            if not self.ready:
                raise Violation("a message before the handshake's READY")
            self.more = bool(flags & MORE)
            self.frames += 1
            if self.frames > WIRE_FRAMES:
                raise Violation(f"a message of more than {WIRE_FRAMES} frames (max_frames is {LIMITS.max_frames})")
        if self.unfinished + size > self.limits.unfinished_bytes:
            raise Violation(f"a message of more than {self.limits.unfinished_bytes} bytes "
                            f"(max_message_bytes is {LIMITS.max_message_bytes})")
        self.body_left = size
        if not size:
            self._frame_done()

    def _frame_done(self) -> None:
        if self.command:
            self._check_command(bytes(self.command_body))
            if self.frames:
                return  # a command inside a message: the message goes on
        if self.command or not self.more:
            self.frames = 0
            self.unfinished = 0

    def _check_command(self, body: bytes) -> None:
        """A client's command (RFC 37, ZMTP 3.1): READY once, first (the NULL handshake), then PING or
        PONG (heartbeats) only, at most COMMANDS_PER_S a second. libzmq keeps SUBSCRIBE and CANCEL in the
        ROUTER's queue as 64-byte messages (they count as no frame of a message), and reads any other
        command at once: a flood of them costs the relay's Python far more than the peer."""
        name = body[1:1 + body[0]] if body else b""
        if not self.ready:
            if name != b"READY":
                raise Violation(f"the command {name[:32]!r} in the handshake (NULL's is READY)")
            self.ready = True
            return
        context = len(body) - 1 - len(name)
        if name == b"PING" and 2 <= context <= 18 or name == b"PONG" and context <= 16:
            now = time.monotonic()
            if now - self.second_start >= 1.0:
                self.second_start, self.commands_in_second = now, 0
            self.commands_in_second += 1
            if self.commands_in_second > COMMANDS_PER_S:
                raise Violation(f"more than {COMMANDS_PER_S} heartbeats in a second")
            return
        raise Violation(f"the command {name[:32]!r} ({len(body)} bytes) after the handshake (a client sends "
                        f"PING and PONG only)")


class _Link:
    """One client's connection and the relay's connection to the ROUTER for it."""

    def __init__(self, client: socket.socket, backend: socket.socket, address: str, limits: ConnectionLimits) -> None:
        self.client, self.backend, self.address = client, backend, address
        self.reader = ZmtpReader(limits)
        self.up: memoryview | None = None
        """Client bytes not yet written to the ROUTER."""
        self.down: memoryview | None = None
        """ROUTER bytes not yet written to the client."""
        self.last_sent = time.monotonic()
        self.ending = False
        self.key = -1
        """The client's descriptor, its key in WireGuard.live."""
        self.events: dict[str, int] = {}
        """What the selector waits for on each side (absent or 0: not registered)."""
        """One side has closed: what the other is owed is written, then both close."""


def endpoint_address(endpoint: str) -> tuple[int, str | tuple[str, int]]:
    """(family, address) of a tcp:// or ipc:// endpoint as ZeroMQ reads it, for socket.bind: a port "*"
    is any free one, an ipc:// path starting with "@" is in Linux's abstract namespace."""
    scheme, _, rest = endpoint.partition("://")
    if scheme == "ipc":
        return socket.AF_UNIX, "\0" + rest[1:] if rest.startswith("@") else rest
    if scheme == "tcp":
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        if not host or not (port == "*" or port.isdigit()):
            raise ValueError(f"cannot read host and port in {endpoint}")
        return (socket.AF_INET6 if ":" in host else socket.AF_INET), (host, 0 if port == "*" else int(port))
    raise ValueError(f"the relay serves tcp:// and ipc:// endpoints, not {endpoint}")


class WireGuard:
    """The relay: start() binds the public endpoint (its real one is `endpoint`), stop() closes it and
    every connection. `router_endpoint` is where the ROUTER must bind first (a private ipc:// path)."""

    def __init__(self, public: str, limits: ConnectionLimits) -> None:
        self.public = public
        self.limits = limits
        self._folder = tempfile.mkdtemp(prefix="dreampolish-router-")
        os.chmod(self._folder, stat.S_IRWXU)
        self._router_path = os.path.join(self._folder, "router")
        self.router_endpoint = f"ipc://{self._router_path}"
        self.endpoint = public
        self._selector = selectors.DefaultSelector()
        self._links: set[_Link] = set()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._last_logged: dict[str, float] = {}
        self.live = LiveConnections(limits)
        self._refused: dict[socket.socket, float] = {}
        """Refused clients (not counted in `live`), and when to close each."""
        self.cut = 0
        """Connections closed for breaking a bound (for tests and logs)."""

    # lifecycle ----------------------------------------------------------------------------------

    def start(self) -> str:
        family, address = endpoint_address(self.public)
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_UNIX and not str(address).startswith("\0"):
                _remove_stale_socket(str(address))
            else:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self._listener = listener
        if family == socket.AF_UNIX:
            self.endpoint = self.public
        else:
            host, port = listener.getsockname()[:2]
            self.endpoint = f"tcp://{'[' + host + ']' if ':' in host else host}:{port}"
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name="backend-wire-guard", daemon=True)
        self._thread.start()
        return self.endpoint

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        for link in list(self._links):
            self._close(link)
        self._drop_refused(float("inf"))
        if self._listener is not None:
            family = self._listener.family
            self._listener.close()
            if family == socket.AF_UNIX and not self.public.startswith("ipc://@"):
                _remove_stale_socket(self.public[len("ipc://"):])
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for key, events in self._selector.select(REFUSED_CLOSE_AFTER_S if self._refused else 1.0):
                    if key.data is None:
                        self._accept()
                    elif key.data == "wake":
                        self._wake_r.recv(64)
                    elif key.data == "refused":
                        self._drop_refused(time.monotonic(), key.fileobj)
                    else:
                        link, side = key.data
                        if link in self._links:
                            self._serve(link, side, events)
                if self._refused:
                    self._drop_refused(time.monotonic())
            except Exception:  # the relay outlives a bug: without it no local client reaches the backend
                log.exception("the wire guard failed a turn")
                time.sleep(0.1)

    # connections --------------------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(64):
            try:
                client, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: the client waits in the backlog
                self._log("accept", f"cannot accept a connection: {exc}")
                return
            address = peer[0] if isinstance(peer, tuple) else "ipc"
            if client.family != socket.AF_UNIX:
                _keepalive(client)
            self.live.opened(client.fileno(), address)
            why = self.live.refusal(address)
            if why:  # those counted may have gone (a burst of connections that closed at once): look first
                self._reap()
                why = self.live.refusal(address)
            if why:  # counted no more: the relay knows which connections it refused (the gate cannot)
                self.live.closed(client.fileno())
                self._refuse(client, address, why)
                continue
            backend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                backend.connect(self._router_path)
            except OSError as exc:
                self._log(address, f"cannot reach the ROUTER for a connection from {address}: {exc}")
                backend.close()
                self.live.closed(client.fileno())
                client.close()
                continue
            client.setblocking(False)
            backend.setblocking(False)
            link = _Link(client, backend, address, self.limits)
            link.key = client.fileno()
            self._links.add(link)
            self._listen(link, client, selectors.EVENT_READ, "client")
            self._listen(link, backend, selectors.EVENT_READ, "backend")

    def _serve(self, link: _Link, side: str, events: int) -> None:
        if side == "client":
            if events & selectors.EVENT_WRITE and not self._flush(link, "down"):
                return
            if events & selectors.EVENT_READ and link.up is None and not link.ending:
                self._read_client(link)
        else:
            if events & selectors.EVENT_WRITE and not self._flush(link, "up"):
                return
            if events & selectors.EVENT_READ and link.down is None and not link.ending:
                self._read_backend(link)
        if link in self._links:
            self._settle(link)

    def _receive(self, link: _Link, sock: socket.socket) -> memoryview | None:
        """One chunk from one side; None when there is none now, or when that side has ended (then
        `link.ending`)."""
        try:
            data = sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            link.ending = True
            return None
        return memoryview(data)

    def _read_client(self, link: _Link) -> None:
        view = self._receive(link, link.client)
        if view is None:
            return
        try:
            link.reader.feed(view)
        except Violation as why:
            self.cut += 1
            self._log(link.address, f"closed a connection from {link.address}: it sent {why}")
            self._close(link)
            return
        link.last_sent = time.monotonic()
        link.up = view
        self._flush(link, "up")
        if link in self._links:
            self._over_total()

    def _read_backend(self, link: _Link) -> None:
        link.down = self._receive(link, link.backend)
        self._flush(link, "down")

    def _flush(self, link: _Link, direction: str) -> bool:
        """Write what is pending in one direction; False when the link was closed."""
        pending = link.up if direction == "up" else link.down
        if pending is None:
            return True
        target = link.backend if direction == "up" else link.client
        try:
            sent = target.send(pending)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(link)
            return False
        rest = pending[sent:] if sent < len(pending) else None
        if direction == "up":
            link.up = rest
        else:
            link.down = rest
        return True

    def _settle(self, link: _Link) -> None:
        """Close a link that has ended and owes nothing; else listen for what each side can do next."""
        if link.ending and link.up is None and link.down is None:
            self._close(link)
            return
        client_events = (selectors.EVENT_WRITE if link.down is not None else 0) | \
            (selectors.EVENT_READ if link.up is None and not link.ending else 0)
        backend_events = (selectors.EVENT_WRITE if link.up is not None else 0) | \
            (selectors.EVENT_READ if link.down is None and not link.ending else 0)
        self._listen(link, link.client, client_events, "client")
        self._listen(link, link.backend, backend_events, "backend")

    def _listen(self, link: _Link, sock: socket.socket, events: int, side: str) -> None:
        """Wait for `events` on one side's socket (none: not registered, so that a side the relay may not
        read now does not wake it again and again)."""
        current = link.events.get(side, 0)
        if events == current:
            return
        if not events:
            self._selector.unregister(sock)
        elif not current:
            self._selector.register(sock, events, (link, side))
        else:
            self._selector.modify(sock, events, (link, side))
        link.events[side] = events

    def _over_total(self) -> None:
        """While all unfinished messages together hold more than the total, close the connection in a
        message's middle that has sent nothing for longest (the gate's rule, connections.py)."""
        total = sum(link.reader.unfinished for link in self._links)
        if total <= self.limits.unfinished_total:
            return
        waiting = sorted((link for link in self._links if link.reader.unfinished > IN_MESSAGE_BYTES),
                         key=lambda link: link.last_sent)
        for link in waiting:
            if total <= self.limits.unfinished_total:
                return
            total -= link.reader.unfinished
            self.cut += 1
            self._log(link.address, f"closed a connection from {link.address}: {link.reader.unfinished} bytes of "
                                    f"an unfinished message, over max_unfinished_bytes_total")
            self._close(link)

    def _reap(self) -> None:
        """Read what each counted client has sent, so that those already gone are closed and counted off
        (their end is otherwise read on the next turn, after the connection asking now was refused)."""
        for link in list(self._links):
            for _ in range(4):
                if link not in self._links or link.up is not None or link.ending:
                    break
                self._read_client(link)
            if link in self._links:
                self._settle(link)

    def _refuse(self, client: socket.socket, address: str, why: str) -> None:
        """Answer the client's handshake with the refusal, read (and drop) what it sends a moment, close."""
        self._log(address, f"refused a connection from {address}: {why}")
        client.setblocking(False)
        try:
            client.send(REFUSAL)
        except OSError:
            pass
        self._refused[client] = time.monotonic() + REFUSED_CLOSE_AFTER_S
        self._selector.register(client, selectors.EVENT_READ, "refused")

    def _drop_refused(self, now: float, client: socket.socket | None = None) -> None:
        """Read what refused clients sent; close those whose time has come (or that closed)."""
        for sock, when in list(self._refused.items()):
            if sock is client:
                try:
                    if sock.recv(CHUNK):
                        continue
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    pass
            elif now < when:
                continue
            del self._refused[sock]
            self._selector.unregister(sock)
            sock.close()

    def _close(self, link: _Link) -> None:
        if link in self._links:
            self.live.closed(link.key)
        self._links.discard(link)
        for side, sock in (("client", link.client), ("backend", link.backend)):
            if link.events.get(side):
                self._selector.unregister(sock)
            link.events[side] = 0
            sock.close()

    def _log(self, key: str, text: str) -> None:
        """One line per key this often (a peer may repeat what gets it closed)."""
        now = time.monotonic()
        if now - self._last_logged.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._last_logged[key] = now
            log.warning("%s", text)


def _keepalive(client: socket.socket) -> None:
    """TCP keepalive on a client's connection, as the gate sets it on the ROUTER's (connections.py
    KEEPALIVE_IDLE_S: a peer that vanished gives its place back)."""
    client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", connections.KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", connections.KEEPALIVE_INTERVAL_S),
                          ("TCP_KEEPCNT", connections.KEEPALIVE_PROBES)):
        if hasattr(socket, option):
            client.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left at path (ZeroMQ's ipc:// bind does the same); never another kind of file."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
