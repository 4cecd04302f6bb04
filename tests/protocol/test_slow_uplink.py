"""A large request over a slow link (an artist at home, the backend on a remote GPU machine): ZeroMQ says
nothing while the message goes out and the backend can answer only once all of it has arrived, so the
client must not take the wait for silence, nor for a request left unanswered. The blocking client (the
CLI) and the RequestQueue (the add-on) with their own short timeouts, through a throttled relay."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from dreampolish.protocol import messages as m
from dreampolish.protocol.client import BackendClient, BackendUnreachable
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.nonblocking import RequestQueue
from dreampolish.protocol.scene import MeshPayload

from tests.support.pipelines import running_backend

pytestmark = pytest.mark.timeout(120)

UPLINK_BYTES_PER_S = 2_000_000


@contextlib.contextmanager
def slow_uplink(endpoint: str) -> Iterator[str]:
    """A relay to endpoint that passes what the client sends at UPLINK_BYTES_PER_S (the backend's
    answers at full speed); yields the relay's endpoint."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    listener = socket.create_server(("127.0.0.1", 0))
    links: list[socket.socket] = []

    def pipe(src: socket.socket, dst: socket.socket, throttled: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(16 << 10):
                dst.sendall(data)
                if throttled:
                    time.sleep(len(data) / UPLINK_BYTES_PER_S)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                near, _ = listener.accept()
                far = socket.create_connection((host, int(port)))
                links.extend((near, far))
                threading.Thread(target=pipe, args=(near, far, True), daemon=True).start()
                threading.Thread(target=pipe, args=(far, near, False), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for s in links:
            s.close()


def eight_megabyte_refine() -> JobSpec:
    """A refine whose mesh takes about 4 s to go up at UPLINK_BYTES_PER_S, over twice the timeouts below."""
    n = 250_000
    vertices = np.random.default_rng(0).random((n, 3), dtype=np.float32)
    faces = (np.arange(2 * n * 3, dtype=np.uint32) % n).reshape(2 * n, 3)
    return JobSpec("refine", mode="geometry", input_mesh=MeshPayload(vertices=vertices, faces=faces),
                   pause_after=["dmtet"])


def test_the_blocking_client_waits_while_its_request_is_still_going_up(tmp_path):
    with running_backend(tmp_path) as server, slow_uplink(server.endpoint) as relay:
        with BackendClient(relay, timeout_s=1.5, heartbeat_s=0.3, dead_after_s=1.5) as c:
            c.connect()
            started = time.monotonic()
            job = c.submit(eight_megabyte_refine())
            assert time.monotonic() - started > 3  # it did take longer than both timeouts
            assert c.ping() < 5
            assert server.manager.get(job) is not None


def test_the_request_queue_waits_while_its_request_is_still_going_up(tmp_path):
    with running_backend(tmp_path) as server, slow_uplink(server.endpoint) as relay:
        with BackendClient(relay, timeout_s=1.5, heartbeat_s=0.3, dead_after_s=1.5) as c:
            c.connect()
            queue = RequestQueue(c)
            queue.add("submit", lambda client: client.submit_flow(eight_megabyte_refine()))
            deadline = time.monotonic() + 60
            items = []
            while not any(i.kind != "event" for i in items):
                assert time.monotonic() < deadline
                items.extend(queue.step())
                time.sleep(0.01)
            outcome = next(i for i in items if i.kind != "event")
            assert outcome.kind == "reply", outcome.payload
            assert server.manager.get(outcome.payload) is not None
            queue.add("ping", lambda client: client.ping_flow())
            items = []
            while not items:
                items.extend(i for i in queue.step() if i.kind != "event")
            assert items[0].kind == "reply"


def test_a_backend_that_does_not_answer_small_requests_is_still_found_silent():
    """The allowance is for bytes still going up: after a small request, silence is judged as before."""
    import zmq

    mute = zmq.Context.instance().socket(zmq.ROUTER)  # takes the connection, never answers
    mute.linger = 0
    port = mute.bind_to_random_port("tcp://127.0.0.1")
    try:
        with BackendClient(f"tcp://127.0.0.1:{port}", timeout_s=30, heartbeat_s=0.3, dead_after_s=1.0) as c:
            c.open()
            started = time.monotonic()
            c.send_request(m.Ping())
            with pytest.raises(BackendUnreachable, match="has not answered"):
                c.receive(time.monotonic() + 30)
            assert time.monotonic() - started < 3
    finally:
        mute.close()
