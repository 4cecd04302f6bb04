"""RequestQueue runs the client's requests against a real backend without ever waiting (what the
add-on does on Blender's main thread): requests in turn, each reply before the events that came
while it was awaited, rejected and unanswered requests as errors, and the connection going on."""

from __future__ import annotations

import time

import pytest
from dreampolish.protocol.client import BackendClient, BackendUnreachable, RequestRejected, UnknownJobError
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.nonblocking import Item, RequestQueue

from tests.pipelines import free_tcp_endpoint, running_backend

pytestmark = pytest.mark.timeout(120)


def _run_until(queue: RequestQueue, done, timeout_s: float = 30.0) -> list[Item]:
    items: list[Item] = []
    deadline = time.monotonic() + timeout_s
    while not done(items):
        assert time.monotonic() < deadline, f"timed out; got {items}"
        items.extend(queue.step())
        time.sleep(0.005)
    return items


def _opened(endpoint: str, timeout_s: float = 10.0) -> tuple[BackendClient, RequestQueue]:
    client = BackendClient(endpoint, timeout_s=timeout_s, heartbeat_s=0.5)
    client.open()
    return client, RequestQueue(client)


def test_requests_run_in_turn_and_a_reply_comes_before_its_jobs_events(tmp_path):
    with running_backend(tmp_path / "store") as server:
        client, queue = _opened(server.endpoint)
        try:
            queue.add("connect", lambda c: c.hello_flow())
            queue.add("submit", lambda c: c.submit_flow(JobSpec("a queued octahedron", stages=["nerf", "neus"])))
            queue.add("list", lambda c: c.list_jobs_flow())
            items = _run_until(queue, lambda got: any(i.kind == "event" and i.payload.TYPE == "done" for i in got))
        finally:
            client.close()
    replies = [i for i in items if i.kind == "reply"]
    assert [r.request for r in replies] == ["connect", "submit", "list"]
    job_id = replies[1].payload
    assert [j.job_id for j in replies[2].payload] == [job_id]
    first_event = next(n for n, i in enumerate(items) if i.kind == "event")
    assert first_event > items.index(replies[1]), "an event of the job came before the job's id"
    seqs = [i.payload.seq for i in items if i.kind == "event"]
    assert seqs == list(range(1, len(seqs) + 1)), "events lost, repeated or out of order"
    assert not queue.busy()


def test_a_rejected_request_is_an_error_and_the_next_one_still_runs(tmp_path):
    with running_backend(tmp_path / "store") as server:
        client, queue = _opened(server.endpoint)
        try:
            queue.add("connect", lambda c: c.hello_flow())
            queue.add("cancel", lambda c: c.cancel_flow("20260101-000000-000000"))
            queue.add("bad preset", lambda c: c.submit_flow(JobSpec("x", preset="no-such-preset")))
            queue.add("ping", lambda c: c.ping_flow())
            items = _run_until(queue, lambda got: len(got) >= 4)
        finally:
            client.close()
    assert [(i.kind, i.request) for i in items] == [
        ("reply", "connect"), ("error", "cancel"), ("error", "bad preset"), ("reply", "ping")]
    assert isinstance(items[1].payload, UnknownJobError)
    assert isinstance(items[2].payload, RequestRejected) and "no-such-preset" in str(items[2].payload)


def test_step_never_waits_and_an_unanswered_request_times_out_alone():
    # Nothing listens: the hello stays unanswered. Each step returns at once; after the client's
    # timeout the request fails with the same words as the blocking client, and the queue goes on.
    client, queue = _opened(free_tcp_endpoint(), timeout_s=0.3)
    client.dead_after_s = 60.0  # judge the request's own timeout here, not the silence of the link
    try:
        queue.add("connect", lambda c: c.hello_flow())
        queue.add("after", lambda c: iter(()))  # a flow with nothing to send finishes at once
        slowest = 0.0
        items: list[Item] = []
        deadline = time.monotonic() + 5.0
        while len(items) < 2 and time.monotonic() < deadline:
            started = time.monotonic()
            items.extend(queue.step())
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.01)
    finally:
        client.close()
    assert slowest < 0.1, f"a step waited {slowest:.3f} s"
    assert [(i.kind, i.request) for i in items] == [("error", "connect"), ("reply", "after")]
    assert isinstance(items[0].payload, BackendUnreachable)
    assert "no reply to hello" in str(items[0].payload)


def test_a_silent_backend_ends_the_connection(tmp_path):
    client, queue = _opened(free_tcp_endpoint(), timeout_s=30.0)
    client.dead_after_s = 0.5
    try:
        queue.add("connect", lambda c: c.hello_flow())
        with pytest.raises(BackendUnreachable, match="has not answered"):
            _run_until(queue, lambda got: False, timeout_s=10.0)
    finally:
        client.close()


# --- attacks: what the add-on meets on Blender's main thread -------------------------------------


def _events_of(items: list[Item], job_id: str) -> list:
    return [i.payload for i in items if i.kind == "event" and i.payload.job_id == job_id]


def test_a_reply_that_came_while_the_caller_was_away_is_taken_and_the_link_survives(tmp_path):
    # Blender rendering calls no timer: the caller is away for longer than both the request's
    # timeout and dead_after_s, while the backend answered long ago. The reply is in the socket.
    with running_backend(tmp_path / "store") as server:
        client, queue = _opened(server.endpoint, timeout_s=0.4)
        client.dead_after_s = 0.4
        try:
            queue.add("connect", lambda c: c.hello_flow())
            queue.add("ping", lambda c: c.ping_flow())
            items = queue.step()  # sends the hello
            time.sleep(1.2)
            items += queue.step()  # the welcome, and sends the ping
            time.sleep(1.2)
            items += _run_until(queue, lambda got: len(items) + len(got) >= 2, timeout_s=5)
            # Idle for longer than dead_after_s, with heartbeats sent before: still alive.
            started = time.monotonic()
            while time.monotonic() - started < 1.0:  # heartbeats go out (heartbeat_s=0.5)
                items += queue.step()
                time.sleep(0.02)
            time.sleep(1.2)
            queue.add("after", lambda c: c.ping_flow())
            items += _run_until(queue, lambda got: any(i.request == "after" for i in got), timeout_s=5)
        finally:
            client.close()
    assert [(i.kind, i.request) for i in items] == [("reply", "connect"), ("reply", "ping"), ("reply", "after")]
