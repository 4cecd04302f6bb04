"""RequestQueue runs the client's requests against a real backend without ever waiting (what the
add-on does on Blender's main thread): requests in turn, each reply before the events that came
while it was awaited, rejected and unanswered requests as errors, and the connection going on."""

from __future__ import annotations

import signal
import threading
import time

import msgpack
import pytest
import zmq
from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.client import (
    BackendClient,
    BackendUnreachable,
    RequestRejected,
    UnknownJobError,
    VersionMismatch,
)
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.nonblocking import Item, RequestQueue

from tests.support.pipelines import free_tcp_endpoint, running_backend, start_backend_process

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
    client.connection.dead_after_s = 60.0  # judge the request's own timeout here, not the silence of the link
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
    client.connection.dead_after_s = 0.5
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
        client.connection.dead_after_s = 0.4
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


def test_a_backend_restarted_mid_job_ends_the_connection_and_the_job_goes_on_from_its_last_seq(tmp_path):
    # Restarted at once (a supervisor does that): ZeroMQ reconnects by itself and the new backend
    # answers pings, but it knows nothing of this client's subscriptions; without a word the job's
    # events would never come again. The lost connection must be said, so that the caller attaches.
    endpoint = free_tcp_endpoint()
    proc = start_backend_process(tmp_path / "store", endpoint)
    try:
        client, queue = _opened(endpoint)
        client.connection.dead_after_s = 60.0  # the loss is told by the connection itself, not by silence
        queue.add("connect", lambda c: c.hello_flow())
        queue.add("submit", lambda c: c.submit_flow(
            JobSpec("across a restart", options={"test.steps": 10, "test.step_s": 0.05})))
        items = _run_until(queue, lambda got: any(i.kind == "event" and i.payload.TYPE == "stage_result"
                                                  for i in got))
        job_id = next(i.payload for i in items if i.request == "submit")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = start_backend_process(tmp_path / "store", endpoint)
        deadline = time.monotonic() + 15
        with pytest.raises(BackendUnreachable, match="connection to the backend .* was lost"):
            while time.monotonic() < deadline:
                items.extend(queue.step())
                time.sleep(0.005)
        client.close()
        seen = [e.seq for e in _events_of(items, job_id)]
        client, queue = _opened(endpoint)
        queue.add("connect", lambda c: c.hello_flow())
        queue.add("attach", lambda c: c.attach_flow(job_id, seen[-1]))
        after = _run_until(queue, lambda got: any(i.kind == "event" and i.payload.TYPE in ("done", "failed")
                                                  for i in got), timeout_s=60)
        client.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    events = _events_of(items, job_id) + _events_of(after, job_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "events lost or repeated"
    assert events[-1].TYPE == "done"
    assert [e.stage for e in events if e.TYPE == "stage_result"] == ["nerf", "neus", "dmtet", "polish", "texture"]


def test_a_flow_that_raises_fails_alone_and_one_that_catches_an_error_reply_goes_on(tmp_path):
    def broken(c):
        yield m.Ping()
        raise ValueError("the flow's own bug")

    def cannot_start(c):
        raise KeyError("before anything was sent")

    def recovers(c):
        try:
            yield m.Cancel(job_id="20260101-000000-000000")
        except UnknownJobError:
            pass
        yield m.Ping()
        return "recovered"

    with running_backend(tmp_path / "store") as server:
        client, queue = _opened(server.endpoint)
        try:
            for name, start in [("connect", lambda c: c.hello_flow()), ("broken", broken),
                                ("cannot start", cannot_start), ("recovers", recovers),
                                ("ping", lambda c: c.ping_flow())]:
                queue.add(name, start)
            items = _run_until(queue, lambda got: len(got) >= 5)
        finally:
            client.close()
    assert [(i.kind, i.request) for i in items] == [
        ("reply", "connect"), ("error", "broken"), ("error", "cannot start"), ("reply", "recovers"), ("reply", "ping")]
    assert isinstance(items[1].payload, ValueError) and isinstance(items[2].payload, KeyError)
    assert items[3].payload == "recovered"


def test_many_requests_queued_at_once_are_answered_in_order_and_no_step_waits(tmp_path):
    with running_backend(tmp_path / "store") as server:
        client, queue = _opened(server.endpoint)
        try:
            queue.add("connect", lambda c: c.hello_flow())
            for n in range(200):
                if n % 3 == 0:
                    queue.add(f"r{n}", lambda c: c.cancel_flow("20260101-000000-000000"))
                else:
                    queue.add(f"r{n}", lambda c: c.ping_flow())
            items: list[Item] = []
            slowest = 0.0
            deadline = time.monotonic() + 60
            while len(items) < 201:
                assert time.monotonic() < deadline, f"timed out after {len(items)} answers"
                started = time.monotonic()
                items += queue.step()
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.001)
        finally:
            client.close()
    assert [i.request for i in items] == ["connect"] + [f"r{n}" for n in range(200)]
    assert [i.kind for i in items[1:]] == ["error" if n % 3 == 0 else "reply" for n in range(200)]
    assert slowest < 0.1, f"a step waited {slowest:.3f} s"
    assert not queue.busy()


def test_flows_of_several_messages_keep_the_events_that_arrive_meanwhile(tmp_path, monkeypatch):
    # fetch_result in one part per stage and the job list in pages of one, while another job
    # streams: each flow's messages go out in turn, and the job's events arrive exactly once, in
    # order, none of them before the submit's reply.
    import dreampolish.backend.server as server_module

    monkeypatch.setattr(server_module, "results_that_fit", lambda results: list(results[:1]))

    def listed_one_by_one(c):
        jobs, page = [], ""
        while True:
            part, page = yield from c.list_jobs_page_flow(page, limit=1)
            jobs += part
            if not page:
                return jobs

    with running_backend(tmp_path / "store") as server:
        client, queue = _opened(server.endpoint)
        try:
            queue.add("connect", lambda c: c.hello_flow())
            queue.add("first", lambda c: c.submit_flow(JobSpec("done first")))
            items = _run_until(queue, lambda got: any(i.kind == "event" and i.payload.TYPE == "done" for i in got))
            first = next(i.payload for i in items if i.request == "first")
            queue.add("second", lambda c: c.submit_flow(
                JobSpec("streams meanwhile", options={"test.steps": 20, "test.step_s": 0.01})))
            queue.add("fetch", lambda c: c.fetch_result_flow(first))
            queue.add("list", listed_one_by_one)
            queue.add("list all", lambda c: c.list_jobs_flow())
            more = _run_until(queue, lambda got: any(i.kind == "event" and i.payload.TYPE == "done"
                                                     and i.payload.job_id != first for i in got)
                              and not queue.busy())
        finally:
            client.close()
    replies = {i.request: i.payload for i in more if i.kind == "reply"}
    assert set(replies) == {"second", "fetch", "list", "list all"}, [(i.kind, i.request) for i in more]
    second = replies["second"]
    assert [r.stage for r in replies["fetch"].stage_results] == ["nerf", "neus", "dmtet", "polish", "texture"]
    assert replies["fetch"].state == "done" and replies["fetch"].more_from == 0
    assert [j.job_id for j in replies["list"]] == [first, second] == [j.job_id for j in replies["list all"]]
    seqs = [e.seq for e in _events_of(more, second)]
    assert seqs == list(range(1, len(seqs) + 1)) and _events_of(more, second)[-1].TYPE == "done"
    first_event = next(n for n, i in enumerate(more) if i.kind == "event")
    assert first_event > next(n for n, i in enumerate(more) if i.request == "second")


class _ScriptedBackend(threading.Thread):
    """A ROUTER that answers each request with the frames answer(request) returns: a backend that
    sends what a real one never would."""

    def __init__(self, answer):
        super().__init__(daemon=True)
        self.answer = answer
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.endpoint = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            if self.sock.poll(20):
                peer, *frames = self.sock.recv_multipart()
                replies = self.answer(codec.decode(frames))
                if replies is None:
                    break  # the backend dies with the request unanswered
                for reply in replies:
                    self.sock.send_multipart([peer, *reply])
        self.sock.close()
        self.ctx.term()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.join(5)


def _header(**fields) -> bytes:
    return msgpack.packb({"v": "1.0", "id": "b-1", "re": "", "job": "", "seq": 0, "body": {}} | fields)


def test_malformed_messages_from_the_backend_are_dropped_and_the_reply_still_taken():
    def answer(request):
        if not isinstance(request, m.Hello):
            return [codec.encode(m.Pong(re=request.msg_id))]
        re = request.msg_id
        return [
            [b"\xc1"],                                           # not msgpack
            [msgpack.packb([1, 2, 3])],                          # not a map
            [_header(type="no_such_type", re=re)],
            [_header(type="welcome", re=re, body={"devices": 5})],  # a field of the wrong type
            [_header(type="progress", job="../../etc", seq=1)],  # a job id that is a path
            [_header(type="welcome", re=re), b"an extra frame nobody asked for"] * 40,  # over max_frames
            codec.encode(m.Welcome(backend_version="wrong request", re="another-id")),
            codec.encode(m.Welcome(backend_version="fake", re=re)),
        ]

    with _ScriptedBackend(answer) as backend:
        client, queue = _opened(backend.endpoint, timeout_s=5)
        try:
            queue.add("connect", lambda c: c.hello_flow())
            queue.add("ping", lambda c: c.ping_flow())
            items = _run_until(queue, lambda got: len(got) >= 2, timeout_s=10)
        finally:
            client.close()
    assert [(i.kind, i.request) for i in items] == [("reply", "connect"), ("reply", "ping")]
    assert items[0].payload.backend_version == "fake"


def test_a_version_mismatch_reply_fails_the_request_and_a_newer_protocol_ends_the_connection():
    def answer(request):
        if isinstance(request, m.Hello):
            return [codec.encode(m.Error(code=VersionMismatch.code, message="protocol 1.0 is too old", re=request.msg_id))]
        return [[_header(v="2.0", type="pong", re=request.msg_id)]]

    with _ScriptedBackend(answer) as backend:
        client, queue = _opened(backend.endpoint, timeout_s=5)
        try:
            queue.add("connect", lambda c: c.hello_flow())
            items = _run_until(queue, lambda got: len(got) >= 1, timeout_s=10)
            queue.add("ping", lambda c: c.ping_flow())
            with pytest.raises(VersionMismatch, match="protocol 2.0"):
                _run_until(queue, lambda got: False, timeout_s=10)
        finally:
            client.close()
    assert [(i.kind, i.request) for i in items] == [("error", "connect")]
    assert isinstance(items[0].payload, VersionMismatch) and "too old" in str(items[0].payload)


def test_a_message_that_cannot_be_encoded_fails_its_request_alone(tmp_path):
    # An override typed as 10^30 parses as an int that msgpack cannot encode; it used to end the
    # whole connection (and every job it followed) from inside step().
    def second_message_bad(c):
        yield m.Ping()
        yield m.Ping(msg_id="")  # fine
        yield None  # a flow's bug: not a message

    with running_backend(tmp_path / "store") as server:
        client, queue = _opened(server.endpoint)
        try:
            queue.add("connect", lambda c: c.hello_flow())
            queue.add("huge", lambda c: c.submit_flow(JobSpec("x", options={"nerf.steps": 10**30})))
            queue.add("not a message", second_message_bad)
            queue.add("after", lambda c: c.ping_flow())
            items = _run_until(queue, lambda got: len(got) >= 4)
        finally:
            client.close()
    assert [(i.kind, i.request) for i in items] == [
        ("reply", "connect"), ("error", "huge"), ("error", "not a message"), ("reply", "after")]
    assert "cannot send submit" in str(items[1].payload)
    assert "not NoneType" in str(items[2].payload)


def test_a_backend_that_dies_with_a_request_in_flight_ends_the_connection_at_once():
    # Not after the request's timeout, nor after dead_after_s of silence: the dropped connection
    # itself tells, so the add-on reconnects (and says so) within a step or two.
    def answer(request):
        if isinstance(request, m.Hello):
            return [codec.encode(m.Welcome(backend_version="fake", re=request.msg_id))]
        return None

    with _ScriptedBackend(answer) as backend:
        client, queue = _opened(backend.endpoint, timeout_s=30)
        client.connection.dead_after_s = 60.0
        try:
            queue.add("connect", lambda c: c.hello_flow())
            _run_until(queue, lambda got: len(got) >= 1, timeout_s=10)
            queue.add("list", lambda c: c.list_jobs_flow())
            started = time.monotonic()
            with pytest.raises(BackendUnreachable, match="was lost"):
                _run_until(queue, lambda got: False, timeout_s=10)
            assert time.monotonic() - started < 5
            with pytest.raises(BackendUnreachable, match="was lost"):
                queue.step()  # and it stays said until the caller reconnects
        finally:
            client.close()
