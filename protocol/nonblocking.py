"""Run a BackendClient's requests without ever waiting: for a caller that must not block, such as
Blender's main thread, which calls `step()` from a timer.

Blender runs its own C code (an undo push, a render) with the GIL released, and at such moments
it may act on Python's thread state as if no other thread ran Python; a Python thread of an
add-on that takes the GIL then can crash Blender. So the add-on keeps no thread: the socket is
read here, on the main thread, with zero-length waits.

Requests run one after another, in the order they were added, exactly as the blocking client runs
them: each is a flow (BackendClient.*_flow), its messages sent one by one, each reply handed back
to it. While a request waits for its reply, events that arrive are held and come out after the
reply, so a job's first events never come before the submit's answer that names the job.

    queue = RequestQueue(client)
    queue.add("submit", lambda c: c.submit_flow(spec))
    for item in queue.step():          # from a timer, again and again
        ...                             # Item("reply", "submit", job_id), Item("event", "", Progress)
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from . import messages as m
from .client import BackendClient, Flow
from .client_errors import BackendUnreachable, ClientError, checked_reply

__all__ = ["Item", "RequestQueue", "StartFlow"]

StartFlow = Callable[[BackendClient], Flow[Any]]
"""What a request is: a function of the client that returns the flow to run (a generator function
taking the client works, so does `lambda c: c.attach_flow(job_id)`)."""
RequestKey = Any
"""What a request is added with and handed back with its outcome: a name, or the caller's own
request object (the add-on's bridge.Request, which carries its handlers)."""


@dataclass
class Item:
    """Something step() learnt, in the order it happened."""

    kind: Literal["event", "reply", "error"]
    """event: a backend event; reply/error: a request's result or the exception it ended with."""
    request: RequestKey
    """The key the request was added with ("" for an event)."""
    payload: Any
    """The event, the request's result, or the exception."""


@dataclass
class _InFlight:
    name: RequestKey
    flow: Flow[Any]
    msg: m.Message
    msg_id: str
    deadline: float


class RequestQueue:
    """The requests of one BackendClient (opened with client.open()), run from step()."""

    def __init__(self, client: BackendClient, max_messages_per_step: int = 64):
        self.client = client
        self.max_messages_per_step = max_messages_per_step
        """Messages read by one step(), so that a busy backend cannot hold the caller for long."""
        self._waiting: collections.deque[tuple[RequestKey, StartFlow]] = collections.deque()
        self._current: _InFlight | None = None

    def add(self, name: RequestKey, start: StartFlow) -> None:
        """Queue a request; it is sent by the next step() once those before it have their answers."""
        self._waiting.append((name, start))

    def busy(self) -> bool:
        """A request is waiting for its reply or for its turn."""
        return self._current is not None or bool(self._waiting)

    def abandon(self) -> tuple[RequestKey | None, list[RequestKey]]:
        """Drop every request (the connection is gone): (the one sent and unanswered, or None; the
        keys of those never sent), so that the caller can say what became of each."""
        sent = self._current.name if self._current is not None else None
        if self._current is not None:
            self._current.flow.close()
        unsent = [name for name, _ in self._waiting]
        self._current, self._waiting = None, collections.deque()
        return sent, unsent

    def pending(self) -> list[RequestKey]:
        """The keys of the requests not answered yet, in their order."""
        return ([self._current.name] if self._current is not None else []) + [name for name, _ in self._waiting]

    def step(self) -> list[Item]:
        """Send what is due, read what has arrived (never waiting), and say what came of it.
        Raises BackendUnreachable, AccessRefused or VersionMismatch when the connection is lost."""
        out: list[Item] = []
        self._start_next(out)
        for _ in range(self.max_messages_per_step):
            msg = self.client.receive(deadline=0.0)
            if msg is None:
                # A request's time is judged only once what has arrived is read: the caller may
                # have been away for longer than the timeout while the reply waited in the socket.
                self._check_deadline(out)
                break
            if msg.IS_EVENT:
                if self._current is None:
                    out.append(Item("event", "", msg))
                else:
                    self.client.buffer_event(msg)  # after the reply: see the module's docstring
            elif self._current is not None and msg.re == self._current.msg_id:
                self._advance(out, msg)
        return out

    def _start_next(self, out: list[Item]) -> None:
        while self._current is None:
            out.extend(Item("event", "", e) for e in self.client.take_buffered_events())
            if not self._waiting:
                return
            name, start = self._waiting.popleft()
            try:
                flow = start(self.client)
                msg = next(flow)
            except StopIteration as done:
                out.append(Item("reply", name, done.value))
                continue
            except Exception as exc:  # noqa: BLE001 - a request that cannot start fails alone
                out.append(Item("error", name, exc))
                continue
            self._send(out, name, flow, msg)

    def _send(self, out: list[Item], name: RequestKey, flow: Flow[Any], msg: m.Message) -> bool:
        """Send the flow's message; False when this message cannot be sent (the request fails alone)."""
        try:
            msg_id = self.client.send_request(msg)
        except BackendUnreachable:
            raise  # the connection is gone: step() says so
        except ClientError as exc:  # e.g. a value that cannot be encoded: the connection goes on
            flow.close()
            out.append(Item("error", name, exc))
            return False
        self._current = _InFlight(name, flow, msg, msg_id, self.client.reply_deadline())
        return True

    def _advance(self, out: list[Item], reply: m.Message) -> None:
        """Hand the flow its reply (or the error it stands for); send its next message or finish it."""
        current, self._current = self._current, None
        try:
            try:
                reply = checked_reply(reply)
            except ClientError as exc:
                msg = current.flow.throw(exc)
            else:
                msg = current.flow.send(reply)
        except StopIteration as done:
            out.append(Item("reply", current.name, done.value))
        except Exception as exc:  # noqa: BLE001 - the request failed; the connection goes on
            out.append(Item("error", current.name, exc))
        else:
            if self._send(out, current.name, current.flow, msg):
                return
        self._start_next(out)

    def _check_deadline(self, out: list[Item]) -> None:
        current = self._current
        if current is None or time.monotonic() < current.deadline:
            return
        self._current = None
        current.flow.close()
        out.append(Item("error", current.name, self.client.no_reply(current.msg)))
        self._start_next(out)
