"""The link between Blender and the backend, all of it on Blender's main thread.

The add-on runs no thread of its own. Blender runs its C code (every undo push, renders) with the
GIL released and may then act on Python's thread state as if no other thread ran Python: a thread
of ours that took the GIL at that moment crashed Blender (it did, in tests, within a hundred undo
pushes). So the socket is read on the main thread, never waiting: a `bpy.app.timers` function calls
`drain()` while Blender is idle, and drain() reads what has arrived (protocol.nonblocking), turns it
into BridgeEvents and applies each. Headless scripts (and tests), where timers do not fire while the
script runs, call `drain()` themselves.

A request carries its own handlers: `request("Cancel", start, on_reply=..., on_error=...)` runs
on_reply with the flow's return value, or on_error with the exception it ended with (RequestLost
when the connection took it along). What concerns the connection itself (the welcome, a backend
event, a failed handshake, a lost connection, the end) goes to the one Listener the add-on
installs (connection.py). Each kind of BridgeEvent is a class that knows whom it goes to.

Every connection gets a new generation number; events of an older connection still waiting in
the queue are dropped, so a reconnect never applies a stale result.

Connecting never blocks: the handshake is the first request of the connection and its outcome
arrives as an event. Once a connection has been made, losing it (the backend restarted, the
network dropped) starts another try every RECONNECT_INTERVAL_S until one succeeds or disconnect()
is called; connect() to the same backend meanwhile (a button pressed while it is down) is one
more try, not the end of them.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bpy

from .protocol.client import AccessRefused, BackendClient, BackendUnreachable, ClientError
from .protocol.messages import Message, Welcome
from .protocol.nonblocking import RequestQueue, StartFlow

log = logging.getLogger(__name__)

TIMER_INTERVAL_S = 0.1
"""How often the timer reads the socket and applies events while Blender is idle."""
RECONNECT_INTERVAL_S = 2.0
"""Pause between reconnection tries after a connection was lost."""
MAX_MESSAGES_PER_DRAIN = 64
"""Messages read by one drain(), so that a busy backend cannot hold Blender's main thread."""


@dataclass
class ConnectionSettings:
    """How to reach the backend (read from the preferences)."""

    address: str
    """ZeroMQ endpoint, e.g. tcp://127.0.0.1:5555."""
    server_key: str = ""
    """The backend's CURVE public key (Z85); empty for an unauthenticated loopback backend."""
    timeout_s: float = 5.0
    """Handshake and request timeout."""
    client_key: str = ""
    """This add-on's own CURVE pair (a NAME.key_secret file), used with a server key: a backend with
    an allow-list serves only the keys it knows."""


@dataclass(eq=False)
class Request:
    """A request to the backend and what to do with its outcome (both handlers run on the main thread)."""

    what: str
    """What it asks for, as the artist reads it ("Cancel"): names it when it is lost or its reply cannot be applied."""
    start: StartFlow
    """fn(client) returning the flow to run: one of the client's flows (client.cancel_flow(job_id)), or a
    generator function that `yield from`s several."""
    on_reply: Callable[[Any], None]
    """Called with the flow's return value."""
    on_error: Callable[[BaseException], None]
    """Called with the exception the flow ended with (RequestLost when the connection took it along)."""


@dataclass
class Listener:
    """What the add-on does with what concerns the connection rather than one request (connection.py)."""

    on_welcome: Callable[[Welcome], None]
    on_message: Callable[[Message], None]
    """A backend event (progress, a stage result, the end of a job...)."""
    on_connection_error: Callable[[BaseException, bool], None]
    """(exception, lost): the handshake failed (lost=False) or a welcomed connection was lost."""
    on_closed: Callable[[], None]
    on_apply_failed: Callable[[str, BaseException], None]
    """(what was applied, exception): applying an event raised."""
    after_events: Callable[[], None]
    """Called once a drain() has applied events (the panel redraws)."""


@dataclass
class BridgeEvent:
    """Something the connection learnt, applied on the main thread by drain()."""

    generation: int
    """The connection it belongs to: events of an older one are dropped."""

    def apply(self, listener: Listener) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        """What it is, for the log and for the artist when applying it fails."""
        raise NotImplementedError


@dataclass
class Welcomed(BridgeEvent):
    welcome: Welcome

    def apply(self, listener: Listener) -> None:
        listener.on_welcome(self.welcome)

    def describe(self) -> str:
        return "welcome"


@dataclass
class Received(BridgeEvent):
    message: Message

    def apply(self, listener: Listener) -> None:
        listener.on_message(self.message)

    def describe(self) -> str:
        return f"{self.message.TYPE} event"


@dataclass
class Answered(BridgeEvent):
    request: Request
    value: Any

    def apply(self, listener: Listener) -> None:
        self.request.on_reply(self.value)

    def describe(self) -> str:
        return f"answer to {self.request.what}"


@dataclass
class RequestFailed(BridgeEvent):
    request: Request
    error: BaseException

    def apply(self, listener: Listener) -> None:
        self.request.on_error(self.error)

    def describe(self) -> str:
        return f"refusal of {self.request.what}"


@dataclass
class ConnectionFailed(BridgeEvent):
    error: BaseException
    lost: bool
    """False: the handshake failed; True: a welcomed connection was lost."""

    def apply(self, listener: Listener) -> None:
        listener.on_connection_error(self.error, self.lost)

    def describe(self) -> str:
        return "lost connection" if self.lost else "failed handshake"


@dataclass
class Closed(BridgeEvent):
    def apply(self, listener: Listener) -> None:
        listener.on_closed()

    def describe(self) -> str:
        return "closed connection"


class RequestLost(ClientError):
    """A request that the connection took with it when it was lost (unsent, or without an answer)."""


def _unused(_: object) -> None:
    """The handshake's handlers: its outcome becomes the connection's own event instead."""


class Connection:
    """One BackendClient and its requests, for the whole life of one connection."""

    def __init__(self, settings: ConnectionSettings, generation: int):
        self.settings = settings
        self.generation = generation
        self.client = BackendClient(
            settings.address,
            server_public_key=settings.server_key or None,
            timeout_s=settings.timeout_s,
            # Silence is judged by our own timeout, so that a slow remote backend is not dropped early.
            dead_after_s=max(4.0, settings.timeout_s),
            client_name="dreampolish-blender",
            client_key=(settings.client_key or None) if settings.server_key else None,
        )
        self.requests: RequestQueue = RequestQueue(self.client, MAX_MESSAGES_PER_DRAIN)
        """Runs the Request objects in turn (RequestQueue hands each back with its outcome)."""
        self.welcomed = False
        self._before_welcome: list[Request] = []
        """Requests made while the handshake runs: sent once it has succeeded, in their order."""
        self.closed = False
        self.client.open()
        # Its outcome is the connection's own (a Welcomed or ConnectionFailed event), not a handler's.
        self._handshake = Request("Connect", lambda c: c.hello_flow(), on_reply=_unused, on_error=_unused)
        self.requests.add(self._handshake, self._handshake.start)

    def request(self, request: Request) -> None:
        if self.welcomed:
            self.requests.add(request, request.start)
        else:
            self._before_welcome.append(request)

    def pending(self) -> list[Request]:
        """The requests not answered yet, in their order."""
        return [r for r in self.requests.pending() if r is not self._handshake] + self._before_welcome

    def step(self) -> list[BridgeEvent]:
        """What has arrived since the last step, as events; a lost connection ends with Closed."""
        try:
            items = self.requests.step()
        except Exception as exc:  # noqa: BLE001 - the connection is gone; say why
            return self._close(exc, lost=self.welcomed)
        events: list[BridgeEvent] = []
        for item in items:
            if item.kind == "event":
                events.append(Received(self.generation, item.payload))
            elif item.request is self._handshake:
                if item.kind == "error":
                    return events + self._close(item.payload, lost=False)
                self.welcomed = True
                for request in self._before_welcome:
                    self.requests.add(request, request.start)
                self._before_welcome.clear()
                events.append(Welcomed(self.generation, item.payload))
            elif item.kind == "reply":
                events.append(Answered(self.generation, item.request, item.payload))
            else:
                events.append(RequestFailed(self.generation, item.request, item.payload))
        return events

    def _close(self, exc: BaseException, lost: bool) -> list[BridgeEvent]:
        if not lost and isinstance(exc, BackendUnreachable) and not isinstance(exc, AccessRefused):
            exc = BackendUnreachable(f"no answer from {self.settings.address} within {self.settings.timeout_s:g} s")
        elif lost:
            log.warning("connection lost: %s", exc)
        self.close()
        return [*self._abandoned(), ConnectionFailed(self.generation, exc, lost), Closed(self.generation)]

    def _abandoned(self) -> list[BridgeEvent]:
        """A RequestLost error for each request the lost connection takes with it, so that none
        vanishes unsaid (a Cancel queued behind a reconnection's handshake, a submit unanswered)."""
        sent, unsent = self.requests.abandon()
        unsent += self._before_welcome
        self._before_welcome.clear()
        lost = [] if sent is None or sent is self._handshake else [(sent, RequestLost(
            f"{sent.what}: no answer before the connection was lost (the backend may have received it)"))]
        lost += [(r, RequestLost(f"{r.what} was not sent: the connection was lost")) for r in unsent]
        return [RequestFailed(self.generation, request, exc) for request, exc in lost]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.client.close()


# --- the add-on's side --------------------------------------------------------------------------

_events: queue.SimpleQueue[BridgeEvent] = queue.SimpleQueue()
"""Events read but not yet applied (a handler may connect again while others wait)."""
_conn: Connection | None = None
_generation = 0
_welcome: Welcome | None = None
_settings: ConnectionSettings | None = None
_keep_connected = False
"""A connection was made and not closed by disconnect(): a lost one is tried again."""
_retry_at: float | None = None
"""time.monotonic() of the next reconnection try, or None."""
_listener: Listener | None = None


def set_listener(listener: Listener | None) -> None:
    """Install what the add-on does with the connection's own events (connection.listener())."""
    global _listener
    _listener = listener


def current_welcome() -> Welcome | None:
    return _welcome


def is_connected() -> bool:
    return _conn is not None and _welcome is not None


def is_connecting() -> bool:
    """A handshake is under way (its outcome has not been applied yet)."""
    return _conn is not None and _welcome is None


def keeps_connected() -> bool:
    """A connection was made and not closed by disconnect(): losing it starts reconnection tries."""
    return _keep_connected


def reconnecting() -> bool:
    """A lost connection will be tried again."""
    return _retry_at is not None


def generation() -> int:
    return _generation


def is_pending(request: Request | None) -> bool:
    """The request is queued on the current connection and has no answer yet."""
    return _conn is not None and request is not None and any(r is request for r in _conn.pending())


def connect(settings: ConnectionSettings, wait: bool = False) -> None:
    """Open a connection for `settings`, replacing any earlier one; requests queued from now on
    are sent once the handshake has succeeded.

    Connecting again to the same backend keeps reconnection going: a request made while it is
    down connects on its way, and that try failing must not end the tries (it did, for good). A
    different backend is only tried again once it has welcomed us.

    wait=True reads and applies events until the handshake ends (at most the timeout): for
    scripts only, never from the UI.
    """
    global _keep_connected
    if settings != _settings:
        _keep_connected = False
    _start(settings)
    if wait:
        deadline = time.monotonic() + settings.timeout_s + 2.0
        while is_connecting() and time.monotonic() < deadline:
            drain()
            time.sleep(0.01)


def _start(settings: ConnectionSettings) -> None:
    global _conn, _generation, _welcome, _settings, _retry_at
    _close_connection()
    _settings, _retry_at = settings, None
    _generation += 1
    _welcome = None
    try:
        _conn = Connection(settings, _generation)
    except Exception as exc:  # noqa: BLE001 - e.g. a malformed address or key: the artist hears why
        _events.put(ConnectionFailed(_generation, exc, lost=False))
        _events.put(Closed(_generation))
    _ensure_timer()


def disconnect() -> None:
    """Close the connection and stop trying to reconnect; its pending events become stale."""
    global _keep_connected, _retry_at
    _keep_connected, _retry_at = False, None
    _close_connection()


def _close_connection() -> None:
    global _conn, _generation, _welcome
    conn, _conn = _conn, None
    _welcome = None
    _generation += 1
    if conn is not None:
        conn.close()
    _clear_queue()


def request(what: str, start: StartFlow, *, on_reply: Callable[[Any], None],
            on_error: Callable[[BaseException], None]) -> Request | None:
    """Queue start(client)'s flow on the connection; None when there is none. Its messages are sent
    from here on, in turn; on_reply (or on_error) is called from drain() with its outcome.
    `what` names it for the artist ("Cancel")."""
    if _conn is None:
        return None
    queued = Request(what, start, on_reply, on_error)
    _conn.request(queued)
    return queued


def drain(max_events: int = 1000) -> int:
    """Read what the backend sent and apply the events, and start a due reconnection try. Returns
    how many events were applied (stale ones are not)."""
    if _retry_at is not None and time.monotonic() >= _retry_at and _settings is not None:
        _start(_settings)
    conn = _conn
    if conn is not None:
        for event in conn.step():
            _events.put(event)
        if conn.closed:
            _drop(conn)
    applied = 0
    for _ in range(max_events):
        try:
            event = _events.get_nowait()
        except queue.Empty:
            break
        if event.generation == _generation:
            _apply(event)
            applied += 1
    if applied and _listener is not None:
        _listener.after_events()
    return applied


def _drop(conn: Connection) -> None:
    """The connection ended by itself: its last events (error, closed) still apply."""
    global _conn
    if conn is _conn:
        _conn = None


def _apply(event: BridgeEvent) -> None:
    global _welcome, _keep_connected, _retry_at
    if isinstance(event, Welcomed):
        _welcome = event.welcome
        _keep_connected = True
    elif isinstance(event, Closed) and _keep_connected:
        _retry_at = time.monotonic() + RECONNECT_INTERVAL_S
    if _listener is None:
        return
    try:
        event.apply(_listener)
    except Exception as exc:  # noqa: BLE001 - an exception here would unregister the timer for good
        log.exception("applying the %s failed", event.describe())
        _report_failure(_listener, event, exc)


def _report_failure(listener: Listener, event: BridgeEvent, exc: BaseException) -> None:
    try:
        listener.on_apply_failed(event.describe(), exc)
    except Exception:  # noqa: BLE001 - reporting must not break the drain loop either
        log.exception("reporting the failed %s failed", event.describe())


def _clear_queue() -> None:
    while True:
        try:
            _events.get_nowait()
        except queue.Empty:
            return


def _timer() -> float | None:
    drain()
    if _conn is None and _events.empty() and _retry_at is None:
        return None  # nothing left to follow; connect() registers the timer again
    return TIMER_INTERVAL_S


def _ensure_timer() -> None:
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=TIMER_INTERVAL_S)


def shutdown() -> None:
    """Close the connection and stop the timer (add-on disabled, file closed)."""
    disconnect()
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)


@bpy.app.handlers.persistent
def _on_load_pre(*_args) -> None:
    # Jobs belong to the file they were started from: closing it ends the connection.
    shutdown()


def register() -> None:
    if _on_load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_on_load_pre)


def unregister() -> None:
    if _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
    shutdown()
    set_listener(None)
