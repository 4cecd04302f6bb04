"""The link between Blender and the backend, all of it on Blender's main thread.

The add-on runs no thread of its own. Blender runs its C code (every undo push, renders) with the
GIL released and may then act on Python's thread state as if no other thread ran Python: a thread
of ours that took the GIL at that moment crashed Blender (it did, in tests, within a hundred undo
pushes). So the socket is read on the main thread, never waiting: a `bpy.app.timers` function calls
`drain()` while Blender is idle, and drain() reads what has arrived (protocol.nonblocking), turns it
into BridgeEvents and hands each to the handler installed by job_events.py. Headless scripts (and
tests), where timers do not fire while the script runs, call `drain()` themselves.

Every connection gets a new generation number; events of an older connection still waiting in
the queue are dropped, so a reconnect never applies a stale result.

Connecting never blocks: the handshake is the first request of the connection and its outcome
arrives as an event. Once a connection has been made, losing it (the backend restarted, the
network dropped) starts another try every RECONNECT_INTERVAL_S until one succeeds or disconnect()
is called.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import bpy

from .protocol.client import AccessRefused, BackendClient, BackendUnreachable, ClientError
from .protocol.messages import Welcome
from .protocol.nonblocking import RequestQueue, StartFlow

log = logging.getLogger(__name__)

TIMER_INTERVAL_S = 0.1
"""How often the timer reads the socket and applies events while Blender is idle."""
RECONNECT_INTERVAL_S = 2.0
"""Pause between reconnection tries after a connection was lost."""
MAX_MESSAGES_PER_DRAIN = 64
"""Messages read by one drain(), so that a busy backend cannot hold Blender's main thread."""

EventKind = Literal["welcome", "message", "reply", "error", "closed"]
Request = StartFlow
"""A request: fn(client) returning one of the client's flows (client.attach_flow(...), or a
generator function that `yield from`s them)."""


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


@dataclass
class BridgeEvent:
    """Something the connection learnt, for the handler."""

    generation: int
    """The connection it belongs to."""
    kind: EventKind
    """welcome: the handshake answer; message: a backend event; reply/error: the outcome of a
    queued request; closed: the connection ended."""
    request: str
    """Name of the request a reply or error answers (\"connect\" for the handshake)."""
    payload: Any
    """The decoded message, the request's return value, or the exception."""


class RequestLost(ClientError):
    """A request that the connection took with it when it was lost (unsent, or without an answer)."""


def _spoken(request: str) -> str:
    return request.replace("_", " ").capitalize()


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
        self.requests = RequestQueue(self.client, MAX_MESSAGES_PER_DRAIN)
        self.welcomed = False
        self._before_welcome: list[tuple[str, Request]] = []
        """Requests made while the handshake runs: sent once it has succeeded, in their order."""
        self.closed = False
        self.client.open()
        self.requests.add("connect", lambda c: c.hello_flow())

    def request(self, name: str, fn: Request) -> None:
        if self.welcomed:
            self.requests.add(name, fn)
        else:
            self._before_welcome.append((name, fn))

    def step(self) -> list[BridgeEvent]:
        """What has arrived since the last step, as events; a lost connection ends with closed."""
        try:
            items = self.requests.step()
        except Exception as exc:  # noqa: BLE001 - the connection is gone; say why
            return self._close("connection" if self.welcomed else "connect", exc)
        events: list[BridgeEvent] = []
        for item in items:
            if item.request == "connect":
                if item.kind == "error":
                    return events + self._close("connect", item.payload)
                self.welcomed = True
                for name, fn in self._before_welcome:
                    self.requests.add(name, fn)
                self._before_welcome.clear()
                events.append(self._event("welcome", "connect", item.payload))
            else:
                events.append(self._event("message" if item.kind == "event" else item.kind,
                                          item.request, item.payload))
        return events

    def _close(self, request: str, exc: BaseException) -> list[BridgeEvent]:
        if request == "connect" and isinstance(exc, BackendUnreachable) and not isinstance(exc, AccessRefused):
            exc = BackendUnreachable(f"no answer from {self.settings.address} within {self.settings.timeout_s:g} s")
        elif request == "connection":
            log.warning("connection lost: %s", exc)
        self.close()
        return [*self._abandoned(), self._event("error", request, exc), self._event("closed", "", None)]

    def _abandoned(self) -> list[BridgeEvent]:
        """A RequestLost error for each request the lost connection takes with it, so that none
        vanishes unsaid (a Cancel queued behind a reconnection's handshake, a submit unanswered)."""
        sent, unsent = self.requests.abandon()
        unsent += [name for name, _ in self._before_welcome]
        self._before_welcome.clear()
        lost = [] if sent in (None, "connect") else [(sent, RequestLost(
            f"{_spoken(sent)}: no answer before the connection was lost (the backend may have received it)"))]
        lost += [(name, RequestLost(f"{_spoken(name)} was not sent: the connection was lost")) for name in unsent]
        return [self._event("error", name, exc) for name, exc in lost]

    def _event(self, kind: EventKind, request: str, payload: Any) -> BridgeEvent:
        return BridgeEvent(self.generation, kind, request, payload)

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
_handler: Callable[[BridgeEvent], None] | None = None
_failure_handler: Callable[[BridgeEvent, BaseException], None] | None = None


def set_handler(handler: Callable[[BridgeEvent], None] | None,
                on_failure: Callable[[BridgeEvent, BaseException], None] | None = None) -> None:
    """Install the function that applies events (job_events.handle_event), and the one that tells
    the artist when applying an event raised."""
    global _handler, _failure_handler
    _handler, _failure_handler = handler, on_failure


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


def pending_requests() -> list[str]:
    """The names of the current connection's requests that have no answer yet."""
    return _conn.requests.pending() if _conn is not None else []


def connect(settings: ConnectionSettings, wait: bool = False) -> None:
    """Open a connection for `settings`, replacing any earlier one; requests queued from now on
    are sent once the handshake has succeeded.

    wait=True reads and applies events until the handshake ends (at most the timeout): for
    scripts only, never from the UI.
    """
    disconnect()
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
        _events.put(BridgeEvent(_generation, "error", "connect", exc))
        _events.put(BridgeEvent(_generation, "closed", "", None))
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


def request(name: str, fn: Request) -> bool:
    """Queue fn(client)'s flow on the connection; False when there is none. Its messages are sent
    from here on, in turn; the reply (or error) arrives as an event."""
    if _conn is None:
        return False
    _conn.request(name, fn)
    return True


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
    return applied


def _drop(conn: Connection) -> None:
    """The connection ended by itself: its last events (error, closed) still apply."""
    global _conn
    if conn is _conn:
        _conn = None


def _apply(event: BridgeEvent) -> None:
    global _welcome, _keep_connected, _retry_at
    if event.kind == "welcome":
        _welcome = event.payload
        _keep_connected = True
    elif event.kind == "closed" and _keep_connected:
        _retry_at = time.monotonic() + RECONNECT_INTERVAL_S
    if _handler is not None:
        try:
            _handler(event)
        except Exception as exc:  # noqa: BLE001 - an exception here would unregister the timer for good
            log.exception("applying a %s event failed", event.kind)
            _report_failure(event, exc)


def _report_failure(event: BridgeEvent, exc: BaseException) -> None:
    if _failure_handler is None:
        return
    try:
        _failure_handler(event, exc)
    except Exception:  # noqa: BLE001 - reporting must not break the drain loop either
        log.exception("reporting a failed %s event failed", event.kind)


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
    set_handler(None)
