"""The link between Blender's main thread and the backend.

A client thread owns the ZeroMQ socket: it runs the requests the main thread queues, reads the
backend's events, and puts what it decodes on an event queue. It never touches bpy. On the main
thread, `drain()` empties that queue and hands each event to the handler installed by
job_events.py; a `bpy.app.timers` function calls `drain()` while Blender is idle. Headless
scripts (and tests), where timers do not fire while the script runs, call `drain()` themselves.

Every connection gets a new generation number; events from an older connection still waiting in
the queue are dropped, so a reconnect never applies a stale result.

Connecting never blocks the main thread: the handshake runs on the client thread and its outcome
arrives as an event. Once a connection has been made, losing it (the backend restarted, the
network dropped) starts another try every RECONNECT_INTERVAL_S until one succeeds or disconnect()
is called.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import bpy

from .protocol.client import AccessRefused, BackendClient, BackendUnreachable
from .protocol.messages import Welcome

log = logging.getLogger(__name__)

TIMER_INTERVAL_S = 0.1
"""How often the timer drains the queue while Blender is idle."""
POLL_INTERVAL_S = 0.05
"""How long the client thread waits for a backend event before looking at its requests again."""
HANDSHAKE_TRY_S = 0.25
"""Length of one handshake try; the thread checks for stop() between tries."""
RECONNECT_INTERVAL_S = 2.0
"""Pause between reconnection tries after a connection was lost."""
MAX_EVENTS_PER_POLL = 64
"""Events read in one go before the queued requests get their turn (a cancel must not wait)."""

EventKind = Literal["welcome", "message", "reply", "error", "closed"]
Request = Callable[[BackendClient], Any]


@dataclass
class ConnectionSettings:
    """How to reach the backend (read from the preferences on the main thread)."""

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
    """Something the client thread learnt, for the main thread."""

    generation: int
    """The connection it belongs to."""
    kind: EventKind
    """welcome: the handshake answer; message: a backend event; reply/error: the outcome of a
    queued request; closed: the thread ended."""
    request: str
    """Name of the request a reply or error answers (\"connect\" for the handshake)."""
    payload: Any
    """The decoded message, the request's return value, or the exception."""


class ClientThread(threading.Thread):
    """Owns one BackendClient for the whole life of one connection."""

    def __init__(self, settings: ConnectionSettings, generation: int, events: queue.Queue[BridgeEvent]):
        super().__init__(name=f"dreampolish-client-{generation}", daemon=True)
        self.settings = settings
        self.generation = generation
        self.events = events
        self.requests: queue.Queue[tuple[str, Request]] = queue.Queue()
        self.handshake_done = threading.Event()
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def request(self, name: str, fn: Request) -> None:
        """Run fn(client) on this thread; its result (or exception) comes back as a reply (or error)."""
        self.requests.put((name, fn))

    def _emit(self, kind: EventKind, request: str, payload: Any) -> None:
        self.events.put(BridgeEvent(self.generation, kind, request, payload))

    def run(self) -> None:
        client = None
        try:
            client = BackendClient(
                self.settings.address,
                server_public_key=self.settings.server_key or None,
                timeout_s=self.settings.timeout_s,
                # Silence is judged by our own timeout, so that a slow remote backend is not dropped early.
                dead_after_s=max(4.0, self.settings.timeout_s),
                client_name="dreampolish-blender",
                client_key=(self.settings.client_key or None) if self.settings.server_key else None,
            )
            welcome = self._handshake(client)
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the artist
            self._emit("error", "connect", exc)
            self.handshake_done.set()
            if client is not None:
                client.close()
            self._emit("closed", "", None)
            return
        self._emit("welcome", "connect", welcome)
        self.handshake_done.set()
        try:
            while not self._stop_event.is_set():
                self._run_requests(client)
                message = client.poll(POLL_INTERVAL_S)
                for _ in range(MAX_EVENTS_PER_POLL):
                    if message is None:
                        break
                    self._emit("message", "", message)
                    message = client.poll(0.0)
        except Exception as exc:  # noqa: BLE001 - the connection is gone; say why
            log.exception("client thread stopped")
            self._emit("error", "connection", exc)
        finally:
            client.close()
            self._emit("closed", "", None)

    def _handshake(self, client: BackendClient) -> Welcome:
        """Hello/welcome in short tries, so that stop() (add-on disabled, file closed) is honoured
        within one try rather than after the whole timeout."""
        deadline = time.monotonic() + self.settings.timeout_s
        client.timeout_s = HANDSHAKE_TRY_S
        try:
            while True:
                try:
                    return client.connect()
                except AccessRefused:
                    raise  # the backend said why: its one line reaches the artist as it is
                except BackendUnreachable:
                    if self._stop_event.is_set() or time.monotonic() >= deadline:
                        raise BackendUnreachable(
                            f"no answer from {self.settings.address} within {self.settings.timeout_s:g} s"
                        ) from None
        finally:
            client.timeout_s = self.settings.timeout_s

    def _run_requests(self, client: BackendClient) -> None:
        while True:
            try:
                name, fn = self.requests.get_nowait()
            except queue.Empty:
                return
            try:
                self._emit("reply", name, fn(client))
            except Exception as exc:  # noqa: BLE001 - a failed request is reported, the thread goes on
                self._emit("error", name, exc)


# --- main-thread side ---------------------------------------------------------------------------

_events: queue.Queue[BridgeEvent] = queue.Queue()
_thread: ClientThread | None = None
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
    """Install the function that applies events on the main thread (job_events.handle_event), and
    the one that tells the artist when applying an event raised."""
    global _handler, _failure_handler
    _handler, _failure_handler = handler, on_failure


def current_welcome() -> Welcome | None:
    return _welcome


def is_connected() -> bool:
    return _thread is not None and _thread.is_alive() and _welcome is not None


def is_connecting() -> bool:
    """A handshake is under way (its outcome has not been applied yet)."""
    return _thread is not None and _thread.is_alive() and _welcome is None


def keeps_connected() -> bool:
    """A connection was made and not closed by disconnect(): losing it starts reconnection tries."""
    return _keep_connected


def reconnecting() -> bool:
    """A lost connection will be tried again."""
    return _retry_at is not None


def generation() -> int:
    return _generation


def connect(settings: ConnectionSettings, wait: bool = False) -> None:
    """Start a client thread for `settings`, replacing any earlier one; requests queued from now on
    run once the handshake has succeeded.

    wait=True blocks until the handshake ends (at most the timeout) and applies its outcome: for
    scripts only, never from the UI.
    """
    disconnect()
    _start(settings)
    if wait:
        _thread.handshake_done.wait(settings.timeout_s + 2.0)
        drain()


def _start(settings: ConnectionSettings) -> None:
    global _thread, _generation, _welcome, _settings, _retry_at
    _stop_thread()
    _settings, _retry_at = settings, None
    _generation += 1
    _welcome = None
    _thread = ClientThread(settings, _generation, _events)
    _thread.start()
    _ensure_timer()


def disconnect(join_timeout_s: float = 5.0) -> None:
    """Stop the client thread and wait for it, and stop trying to reconnect; pending events of this
    connection become stale."""
    global _keep_connected, _retry_at
    _keep_connected, _retry_at = False, None
    _stop_thread(join_timeout_s)


def _stop_thread(join_timeout_s: float = 5.0) -> None:
    global _thread, _generation, _welcome
    thread, _thread = _thread, None
    _welcome = None
    _generation += 1
    if thread is not None:
        thread.stop()
        thread.join(join_timeout_s)
        if thread.is_alive():
            log.warning("client thread did not stop within %.1f s", join_timeout_s)
    _clear_queue()


def request(name: str, fn: Request) -> bool:
    """Queue fn(client) on the client thread; False when there is no connection."""
    if _thread is None or not _thread.is_alive():
        return False
    _thread.request(name, fn)
    return True


def drain(max_events: int = 1000) -> int:
    """Apply queued events on the main thread, and start a due reconnection try. Returns how many
    events were applied (stale ones are not)."""
    global _welcome, _keep_connected, _retry_at
    if _retry_at is not None and time.monotonic() >= _retry_at and _settings is not None:
        _start(_settings)
    applied = 0
    for _ in range(max_events):
        try:
            event = _events.get_nowait()
        except queue.Empty:
            break
        if event.generation != _generation:
            continue
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
        applied += 1
    return applied


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
    if (_thread is None or not _thread.is_alive()) and _events.empty() and _retry_at is None:
        return None  # nothing left to follow; connect() registers the timer again
    return TIMER_INTERVAL_S


def _ensure_timer() -> None:
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=TIMER_INTERVAL_S)


def shutdown() -> None:
    """Stop the thread and the timer (add-on disabled, file closed)."""
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
