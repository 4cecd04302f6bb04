"""BackendClient against a hand-driven ROUTER: version mismatch and a backend that dies mid-session."""

from __future__ import annotations

import re
import threading
import time

import msgpack
import pytest
import zmq
from dreampolish.protocol import PROTOCOL_VERSION, codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.client import BackendClient, BackendUnreachable, VersionMismatch

pytestmark = pytest.mark.timeout(60)


class FakeBackend(threading.Thread):
    """Answers hello with a welcome whose version is `version`, then, if told to, stops answering."""

    def __init__(self, version: str, answer_pings: bool):
        super().__init__(daemon=True)
        self.version, self.answer_pings = version, answer_pings
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.sock.poll(50):
                continue
            peer, *frames = self.sock.recv_multipart()
            msg = codec.decode(frames)
            if isinstance(msg, m.Hello):
                reply = codec.encode(m.Welcome(presets=["tiny"], re=msg.msg_id))
                header = msgpack.unpackb(reply[0])
                header["v"] = self.version
                self.sock.send_multipart([peer, msgpack.packb(header), *reply[1:]])
            elif isinstance(msg, m.Ping) and self.answer_pings:
                self.sock.send_multipart([peer, *codec.encode(m.Pong(re=msg.msg_id))])
        self.sock.close()


@pytest.fixture
def fake():
    backends = []

    def make(version: str = "1.0", answer_pings: bool = True) -> FakeBackend:
        b = FakeBackend(version, answer_pings)
        b.start()
        backends.append(b)
        return b

    yield make
    for b in backends:
        b.stop.set()
        b.join()


def test_other_major_version_is_refused_with_both_versions_named(fake):
    backend = fake(version="2.3")
    with BackendClient(backend.endpoint, timeout_s=5) as client:
        with pytest.raises(VersionMismatch, match=r"2\.3.*" + re.escape(PROTOCOL_VERSION)):
            client.connect()


def test_a_backend_that_stops_answering_is_detected_within_seconds(fake):
    backend = fake(answer_pings=False)
    with BackendClient(backend.endpoint, heartbeat_s=0.5, dead_after_s=2.0) as client:
        assert client.connect().presets == ["tiny"]
        t0 = time.monotonic()
        with pytest.raises(BackendUnreachable, match="has not answered"):
            while time.monotonic() - t0 < 20:
                client.poll(0.2)
        # dead_after_s, plus the polls and the client's check around it (slow on a loaded machine).
        assert time.monotonic() - t0 < 3 * 2.0


def test_an_idle_client_is_not_declared_dead(fake):
    backend = fake()
    with BackendClient(backend.endpoint, heartbeat_s=0.2, dead_after_s=0.8) as client:
        client.connect()
        time.sleep(1.5)  # idle, not polling: nothing was sent, so nothing is overdue
        assert client.poll(1.0) is None
        assert client.ping() < 5.0  # answered (a round trip's time is the machine's business)
