"""The client's connection to a backend: one DEALER socket, its CURVE keys, and its liveness.

The connection tells the three ways a backend can be lost apart: a refused handshake (a key the
backend does not serve, CURVE on one side only, or as many connections as the backend serves:
AccessRefused, from the socket monitor's handshake events), silence (no message for dead_after_s after something was sent
and had time to go up, with a ping after every heartbeat_s of silence: BackendUnreachable), and a dropped connection once the
handshake succeeded (BackendUnreachable on every receive until a new connection). It knows
nothing of requests or jobs (client.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import zmq

from . import codec
from . import messages as m
from .client_errors import AccessRefused, BackendUnreachable, ClientError
from .errors import ProtocolError, VersionMismatch

log = logging.getLogger(__name__)

# ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH (zmq.h): one side speaks CURVE, the other does not.
_MECHANISM_MISMATCH = 0x11000002
# The ZAP status the backend refuses a connection past its connection limits with (backend/connections.py);
# ZeroMQ passes a client the status code only (400: a client key it does not serve).
_TOO_MANY_CONNECTIONS = 500
SLOWEST_UPLINK_BYTES_PER_S = 250_000
"""The slowest link (2 Mbit/s) a request is given the time to go up on: ZeroMQ says nothing while a
message goes out, and the backend can answer only once all of it has arrived, so a request of N bytes
may be silent N / this many seconds longer (a 36 MB mesh: 2.4 minutes). A backend that stops or drops
the connection meanwhile is still seen at once (the connection ends)."""
_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
)


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


class BackendConnection:
    """One backend address; open() makes a fresh socket (after close(), a new peer for the backend)."""

    def __init__(
        self,
        address: str,
        server_public_key: str | bytes | None = None,
        client_key: str | Path | tuple[bytes, bytes] | None = None,
        heartbeat_s: float = 1.0,
        dead_after_s: float = 4.0,
        context: zmq.Context | None = None,
    ):
        self.address = address
        self.server_public_key = load_server_public_key(server_public_key) if server_public_key else None
        if client_key is None or isinstance(client_key, tuple):
            self.client_key = client_key
        else:
            self.client_key = load_client_key(client_key)
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._own_pair: tuple[bytes, bytes] | None = None
        self._last_heard = 0.0
        self._last_ping = 0.0
        self._silent_since: float | None = None
        """Monotonic time by which the first message sent since the backend was last heard has gone up
        (sending_until then); None when not waiting."""
        self.sending_until = 0.0
        """Monotonic time by which what was sent has gone up, at SLOWEST_UPLINK_BYTES_PER_S: until then
        silence is not the backend's (it cannot answer a message it has not got all of)."""
        self._session_up = False
        """The socket's connection to the backend completed its handshake."""
        self._lost: str = ""
        """Why this socket's connection was lost ("" while it is not): said by every receive until
        a new connection, since the backend on the other side has forgotten this client."""

    def open(self) -> None:
        """Open the DEALER socket (no waiting: ZeroMQ connects in the background and keeps what is
        sent until then)."""
        if self._socket is None:
            sock = self._context.socket(zmq.DEALER)
            sock.linger = 0
            if self.server_public_key is not None:
                if self.client_key is None:
                    # A pair for this connection object only (kept across reconnects).
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

    def receive(self, deadline: float) -> m.Message | None:
        """The next message, or None at the deadline; a deadline already past checks the socket once
        without waiting. Drives the heartbeat and raises BackendUnreachable or AccessRefused."""
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
            if msg is not None:
                return msg

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
                # follows are gone. Only a new handshake and attach bring them back (BackendClient.reconnect()).
                self._lost = (f"the connection to the backend at {self.address} was lost "
                              "(the backend stopped, restarted or dropped it)")
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH and event["value"] == _TOO_MANY_CONNECTIONS:
                raise AccessRefused(
                    f"the backend at {self.address} refused the connection: too many connections (it serves "
                    "max_connections_per_address from one address and max_connections_total in all; its log "
                    "names the limit reached): close another client's connection or try again later"
                )
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

    def _require_socket(self) -> zmq.Socket:
        if self._socket is None:
            raise ClientError("not connected: call connect() first")
        return self._socket

    def send(self, msg: m.Message) -> None:
        """Encode and send without waiting; starts the silence clock when nothing was pending."""
        sock = self._require_socket()
        try:
            frames = codec.encode(msg)
        except Exception as exc:  # noqa: BLE001 - msgpack raises several types (TypeError, OverflowError)
            # A value that cannot go on the wire (an integer over 64 bits, an object) is this
            # request's fault, not the connection's: a ClientError, not BackendUnreachable.
            raise ClientError(f"cannot send {msg.TYPE}: {exc}") from exc
        now = time.monotonic()
        nbytes = sum(memoryview(f).nbytes for f in frames)
        self.sending_until = max(self.sending_until, now) + nbytes / SLOWEST_UPLINK_BYTES_PER_S
        if self._silent_since is None:
            # The backend can answer once this message (and what was sent before it) has gone up.
            self._silent_since = self.sending_until
        try:
            sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again as exc:
            # A refused handshake ends the socket's only pipe, so a send right after it finds no peer:
            # the monitor says why (ZeroMQ reports the refusal before it ends the pipe). No waiting here:
            # the add-on sends from Blender's main thread.
            self._check_handshake()
            raise BackendUnreachable(
                f"cannot send to {self.address}: the connection is not taking messages"
            ) from exc

    def _check_alive(self, now: float) -> None:
        """Raise when the backend has been silent too long; ping it after heartbeat_s of silence."""
        if self._silent_since is not None and now - self._silent_since > self.dead_after_s:
            raise BackendUnreachable(
                f"the backend at {self.address} has not answered for {self.dead_after_s:.0f} s "
                f"(is it running{', and is the server key right' if self.server_public_key else ''}?)"
            )
        if now - self._last_heard >= self.heartbeat_s and now - self._last_ping >= self.heartbeat_s:
            self._last_ping = now
            self.send(m.Ping())

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
