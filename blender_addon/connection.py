"""The connection as the artist sees it: starting one from the preferences, and what its own
events do to the panel (a welcome, a failed handshake, a lost connection, the end). These are the
bridge's Listener; a request's outcome goes to the handlers it was queued with instead."""

from __future__ import annotations

import logging

from . import backend_address, bridge, client_key, job_events, job_request
from .job_follow import follow_again, shown_job_state
from .preferences import prefs
from .protocol.client import AccessRefused
from .protocol.errors import ValidationError
from .protocol.messages import Welcome
from .reporting import connection_restored, describe_error, redraw, report_failure, runtime

log = logging.getLogger(__name__)


def settings(context) -> bridge.ConnectionSettings:
    """How to reach the backend, from the add-on's preferences."""
    p = prefs(context)
    key = ""
    if p.server_key:
        # The add-on's own key pair goes with every CURVE connection (made here on first use).
        try:
            key = str(client_key.ensure().secret_file)
        except OSError as exc:
            # Still connect: a backend without an allow-list serves a key made for this connection.
            report_failure(f"Could not make this Blender's client key: {exc}")
    return bridge.ConnectionSettings(address=p.backend_address.strip(), server_key=p.server_key, timeout_s=p.timeout_s,
                                     client_key=key)


def start_connecting(context) -> None:
    rt = context.window_manager.dreampolish
    address = prefs(context).backend_address.strip()
    trouble = backend_address.problem(address)
    if trouble:  # said in words before ZeroMQ answers "Invalid argument", or waits on port 99999
        on_connection_error(ValidationError(trouble), lost=False)
        return
    rt.connection = "connecting"
    rt.message = f"Connecting to {address}…"
    bridge.connect(settings(context))


def ensure_connected(context) -> None:
    """Start connecting unless connected or connecting, without waiting: requests queued now run
    once the handshake succeeds (a failed one is reported by on_connection_error)."""
    if not (bridge.is_connected() or bridge.is_connecting()):
        start_connecting(context)


def on_welcome(welcome: Welcome) -> None:
    rt = runtime()
    rt.connection = "connected"
    rt.device = ", ".join(welcome.devices) or "unknown"
    rt.message = f"Connected (backend {welcome.backend_version})"
    connection_restored(rt)  # a refusal or a lost request is over; a job's failure stays until the next job
    if rt.job_state == "submitting" and not job_request.submit_pending():
        # The submit went with an earlier connection, closed (Disconnect, Connect again) before the
        # backend answered; waiting for its answer would keep Generate greyed out for good.
        rt.job_state = ""
    follow_again(rt)


def on_connection_error(exc: BaseException, lost: bool) -> None:
    """The handshake failed (lost=False), or a welcomed connection was lost."""
    rt = runtime()
    rt.message = describe_error(exc)
    rt.connection = "error"
    if rt.job_state == "submitting":
        rt.job_state = shown_job_state(rt)  # the submit queued behind the handshake was never sent
    if lost:
        rt.message = f"Connection lost: {rt.message} Reconnecting…"
    elif bridge.keeps_connected():
        rt.message += f" Trying again every {bridge.RECONNECT_INTERVAL_S:g} s."
    if isinstance(exc, AccessRefused):
        report_failure(rt.message)  # a refusal needs the artist (or the administrator): say it loudly
    log.warning("%s failed: %s", "connection" if lost else "connect", rt.message)


def on_closed() -> None:
    rt = runtime()
    if rt.connection == "connected":
        rt.connection = "connecting" if bridge.reconnecting() else "disconnected"


def on_apply_failed(what: str, exc: BaseException) -> None:
    """Applying something the backend sent raised: the artist hears of it."""
    report_failure(f"Could not apply the backend's {what}: {exc}")


def listener() -> bridge.Listener:
    return bridge.Listener(on_welcome=on_welcome, on_message=job_events.on_message,
                           on_connection_error=on_connection_error, on_closed=on_closed,
                           on_apply_failed=on_apply_failed, after_events=redraw)
