"""Requests with a picture or a mesh are checked off the socket's thread, one at a time per client: a
client whose PNG takes long to check delays nobody else's ping or submit, and what waits is bounded.

Checking is held with an event (the PNG's inflation is patched to wait), so nothing here depends on
how fast the machine is."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq
from dreampolish.backend.intake import IntakeLimits
from dreampolish.protocol import codec, image
from dreampolish.protocol import messages as m
from dreampolish.protocol.client import BackendClient
from dreampolish.protocol.image import ReferenceImage
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import MeshPayload

from tests.support.images import png_bytes, rgba
from tests.support.pipelines import running_backend

pytestmark = pytest.mark.timeout(120)


class HeldChecks:
    """Patches the PNG check to wait until released; records each check's expected size and thread."""

    def __init__(self, monkeypatch) -> None:
        self.release = threading.Event()
        self.started: list[tuple[int, str]] = []
        self._changed = threading.Condition()
        real = image._check_inflates_to

        def held(idat, expected):
            with self._changed:
                self.started.append((expected, threading.current_thread().name))
                self._changed.notify_all()
            assert self.release.wait(60)
            return real(idat, expected)

        monkeypatch.setattr(image, "_check_inflates_to", held)

    def wait_started(self, n: int) -> list[tuple[int, str]]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.started) >= n, 30), self.started
            return list(self.started)


def _submit_frames(side: int, msg_id: str) -> list[bytes | memoryview]:
    spec = JobSpec("", preset="tiny", image=ReferenceImage(png=png_bytes(rgba(side, side))), pause_after=["reference"])
    return codec.encode(m.Submit(spec=spec, msg_id=msg_id))


def _dealer(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    return sock


def _reply(sock: zmq.Socket) -> m.Message:
    """The next reply on sock (events of accepted jobs skipped)."""
    while True:
        assert sock.poll(30_000), "no reply"
        msg = codec.decode(sock.recv_multipart())
        if not msg.IS_EVENT:
            return msg


def _png_bytes_to_inflate(side: int) -> int:
    return side * (1 + side * 4)


def test_pings_are_answered_while_a_reference_png_is_checked(tmp_path, monkeypatch):
    checks = HeldChecks(monkeypatch)
    with running_backend(tmp_path) as server:
        sender = _dealer(server.endpoint)
        try:
            sender.send_multipart(_submit_frames(20, "png-1"))
            [(_, thread)] = checks.wait_started(1)
            assert thread.startswith("backend-intake")  # not the thread that serves the socket
            with BackendClient(server.endpoint, timeout_s=10) as other:
                other.connect()
                assert other.ping() >= 0  # answered while the PNG is still being checked
                assert other.list_jobs() == []
            checks.release.set()
            reply = _reply(sender)
            assert isinstance(reply, m.Accepted) and reply.re == "png-1"
        finally:
            checks.release.set()
            sender.close()


def test_one_check_at_a_time_per_client_and_other_clients_go_first(tmp_path, monkeypatch):
    checks = HeldChecks(monkeypatch)
    with running_backend(tmp_path) as server:
        a, b = _dealer(server.endpoint), _dealer(server.endpoint)
        try:
            for i in range(3):
                a.send_multipart(_submit_frames(20, f"a-{i}"))
            checks.wait_started(1)
            b.send_multipart(_submit_frames(24, "b-0"))
            # The second check to start is the other client's, though three of a's came first.
            started = checks.wait_started(2)
            assert [size for size, _ in started] == [_png_bytes_to_inflate(20), _png_bytes_to_inflate(24)]
            checks.release.set()
            assert sorted(_reply(a).re for _ in range(3)) == ["a-0", "a-1", "a-2"]
            assert _reply(b).re == "b-0"
        finally:
            checks.release.set()
            a.close()
            b.close()


def test_requests_past_the_waiting_limits_are_refused_naming_the_limit(tmp_path, monkeypatch):
    checks = HeldChecks(monkeypatch)
    limits = IntakeLimits(requests_per_client=2, bytes_per_client=200_000)
    with running_backend(tmp_path, intake_limits=limits) as server:
        with BackendClient(server.endpoint, timeout_s=10) as client:
            welcome = client.connect()
        assert welcome.limits["max_pending_requests_per_client"] == 2
        assert welcome.limits["max_pending_bytes_per_client"] == 200_000
        sock, other = _dealer(server.endpoint), _dealer(server.endpoint)
        try:
            sock.send_multipart(_submit_frames(20, "first"))
            checks.wait_started(1)
            sock.send_multipart(_submit_frames(20, "second"))
            sock.send_multipart(_submit_frames(20, "third"))
            refused = _reply(sock)
            assert isinstance(refused, m.Error) and refused.re == "third" and refused.code == "limit_exceeded"
            assert "max_pending_requests_per_client is 2" in refused.message
            # Another client's one request of 240 kB: past the bytes one client may have waiting.
            mesh = MeshPayload(np.zeros((20_000, 3), np.float32), np.zeros((1, 3), np.uint32))
            other.send_multipart(codec.encode(m.Submit(spec=JobSpec("big", input_mesh=mesh), msg_id="big")))
            big = _reply(other)
            assert isinstance(big, m.Error) and big.re == "big" and big.code == "limit_exceeded"
            assert "max_pending_bytes_per_client is 200000" in big.message
            checks.release.set()
            assert sorted(_reply(sock).re for _ in range(2)) == ["first", "second"]
        finally:
            checks.release.set()
            sock.close()
            other.close()
