"""The relay in front of a backend without CURVE (backend/wire_guard.py): what it lets through reaches the
ROUTER unchanged, and a client whose framing breaks a bound is closed before ZeroMQ holds what it sent."""

from __future__ import annotations

import os
import socket
import stat
import struct
import time

import pytest
from dreampolish.backend.connections import ConnectionLimits
from dreampolish.backend.wire_guard import NULL_GREETING, WIRE_FRAMES, Violation, ZmtpReader
from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.limits import LIMITS

from tests.backend.test_connection_limits import client, handshake_answer, raw_null_peer
from tests.support.pipelines import running_backend

pytestmark = pytest.mark.timeout(60)

READY = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
HANDSHAKE = NULL_GREETING + bytes([0x04, len(READY)]) + READY


def frame(payload: bytes, more: bool = False) -> bytes:
    if len(payload) < 256:
        return bytes([0x01 if more else 0x00, len(payload)]) + payload
    return bytes([0x03 if more else 0x02]) + struct.pack(">Q", len(payload)) + payload


def fed(data: bytes, limits: ConnectionLimits = ConnectionLimits(), step: int | None = None) -> ZmtpReader:
    reader = ZmtpReader(limits)
    step = step or len(data)
    for i in range(0, len(data), step):
        reader.feed(memoryview(data[i:i + step]))
    return reader


def test_the_reader_follows_messages_commands_and_sizes_split_anywhere():
    message = frame(b"header", more=True) + frame(b"x" * 1000, more=True) + frame(b"")
    ping = bytes([0x04, 7]) + b"\x04PING\x00\x0a"  # a heartbeat: its TTL, no context
    stream = HANDSHAKE + message + ping + message
    for step in (1, 3, 7, len(stream)):  # one byte at a time, and chunks cutting headers in two
        reader = fed(stream, step=step)
        assert (reader.frames, reader.unfinished, reader.body_left) == (0, 0, 0)
    half = fed(HANDSHAKE + frame(b"header", more=True) + frame(b"y" * 500, more=True)[:300])
    assert half.frames == 2 and half.unfinished == 8 + 9 + 291


def test_a_message_of_more_frames_than_the_bound_is_refused_and_one_of_max_frames_is_not():
    fed(HANDSHAKE + frame(b"", more=True) * (WIRE_FRAMES - 1) + frame(b""))  # the bound itself passes
    with pytest.raises(Violation, match=f"more than {WIRE_FRAMES} frames"):
        fed(HANDSHAKE + frame(b"", more=True) * (WIRE_FRAMES + 1))
    assert WIRE_FRAMES > LIMITS.max_frames  # a message just over max_frames reaches the codec's own error


@pytest.mark.parametrize("data, words", [
    (HANDSHAKE + bytes([0x02]) + struct.pack(">Q", LIMITS.max_frame_bytes + 1), "max_frame_bytes"),
    (HANDSHAKE + bytes([0x08, 0]), "reserved bits"),
    (NULL_GREETING + frame(b"header"), "before the handshake's READY"),
    (HANDSHAKE + bytes([0x05, 10]) + b"\x09SUBSCRIBE", "a command with MORE"),
    (HANDSHAKE + bytes([0x04, 10]) + b"\x09SUBSCRIBE", "SUBSCRIBE"),
    (HANDSHAKE + bytes([0x04, 7]) + b"\x06CANCEL", "CANCEL"),
    (HANDSHAKE + bytes([0x04, 1]) + b"\x00", "after the handshake"),
    (HANDSHAKE + bytes([0x04, 5]) + b"\x04PING", "PING"),  # no TTL: libzmq answers with stale memory
    (HANDSHAKE + bytes([0x06]) + struct.pack(">Q", 5000) + b"\x05READY", "a command of 5000 bytes"),
    (b"GET / HTTP/1.1\r\n", "not ZMTP"),
    (NULL_GREETING[:10] + bytes([2]) + NULL_GREETING[11:], "ZMTP version 2"),
    (NULL_GREETING[:12] + b"CURVE".ljust(20, b"\0") + NULL_GREETING[32:], "'CURVE' mechanism"),
])
def test_what_is_not_zmtp_3_null_within_the_limits_is_refused_in_words(data, words):
    with pytest.raises(Violation, match=words):
        fed(data)


def test_heartbeats_are_taken_at_a_clients_pace_and_a_flood_of_them_is_not():
    ping = bytes([0x04, 7]) + b"\x04PING\x00\x0a"
    fed(HANDSHAKE + ping * 50)
    with pytest.raises(Violation, match="heartbeats in a second"):
        fed(HANDSHAKE + ping * 51)


def test_a_message_over_the_unfinished_bytes_is_refused_when_its_frame_is_announced():
    limits = ConnectionLimits(unfinished_bytes=1 << 20)
    fed(HANDSHAKE + frame(b"z" * ((1 << 20) - 100)), limits)
    with pytest.raises(Violation, match="bytes"):
        fed(HANDSHAKE + frame(b"h", more=True) + bytes([0x02]) + struct.pack(">Q", 1 << 20), limits)


def test_an_endless_message_of_empty_frames_is_cut_off_and_others_are_served(tmp_path):
    """The case the bytes gate bounded only to 32 times: empty frames, 2 bytes each on the wire and 64
    bytes each in ZeroMQ. The relay closes the peer after WIRE_FRAMES frames; ZeroMQ frees what it held."""
    with running_backend(tmp_path) as server:
        peer = raw_null_peer(server.endpoint)
        assert b"READY" in handshake_answer(peer)
        sent = 0
        with pytest.raises(OSError):  # closed: EPIPE or ECONNRESET
            for _ in range(10_000):
                peer.sendall(bytes([0x01, 0]) * 1000)
                sent += 1000
                time.sleep(0.001)
        assert sent < 200_000, sent  # cut long before ZeroMQ had held a million frames
        assert server._guard.cut == 1
        with client(server.endpoint) as c:
            c.connect()
            assert c.ping() < 5


def test_subscribe_commands_inside_a_message_are_cut_off(tmp_path):
    """libzmq queues a SUBSCRIBE (or CANCEL) command as a 64-byte message of its own, outside any count of
    frames: 8 million of them (96 MB sent) took a backend from 49 to 540 MB through the first relay."""
    with running_backend(tmp_path) as server:
        peer = raw_null_peer(server.endpoint)
        assert b"READY" in handshake_answer(peer)
        peer.sendall(frame(b"h", more=True))
        with pytest.raises(OSError):
            for _ in range(10_000):
                peer.sendall((bytes([0x04, 10]) + b"\x09SUBSCRIBE") * 1000)
                time.sleep(0.001)
        assert server._guard.cut == 1
        with client(server.endpoint) as c:
            c.connect()
            assert c.ping() < 5


def test_a_message_just_over_max_frames_still_gets_the_codecs_error_through_the_relay(tmp_path):
    import zmq

    with running_backend(tmp_path) as server:
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(server.endpoint)
        try:
            dealer.send_multipart([*codec.encode(m.Ping(msg_id="many")), *[b"x"] * LIMITS.max_frames])
            assert dealer.poll(10_000)
            reply = codec.decode(dealer.recv_multipart())
            assert isinstance(reply, m.Error) and "frames" in reply.message, reply
            big = os.urandom(40 << 20)  # a large frame crosses the relay whole
            dealer.send_multipart([*codec.encode(m.Ping(msg_id="big")), big])
            assert dealer.poll(20_000) and codec.decode(dealer.recv_multipart()).re == "big"
        finally:
            dealer.close()
        assert server._guard.cut == 0


def test_only_the_backends_user_can_reach_the_router_behind_the_relay(tmp_path):
    with running_backend(tmp_path) as server:
        path = server._guard.router_endpoint.removeprefix("ipc://")
        folder = os.stat(os.path.dirname(path))
        assert stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == os.getuid()
        assert server.endpoint.startswith("tcp://127.0.0.1:")
    assert not os.path.exists(os.path.dirname(path))  # removed when the backend stops


def test_a_backend_on_ipc_is_served_through_the_relay_and_frees_its_socket_file(tmp_path):
    endpoint = f"ipc://{tmp_path}/backend.sock"
    from dreampolish.backend.server import BackendServer, ServerConfig

    from tests.support.pipelines import ScriptedPipeline

    server = BackendServer(ServerConfig(bind=endpoint, store_dir=tmp_path / "store"), ScriptedPipeline)
    server.start()
    try:
        assert server._guard is not None and server.endpoint == endpoint
        with client(endpoint) as c:
            c.connect()
            assert c.ping() < 5
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(f"{tmp_path}/backend.sock")
        raw.sendall(HANDSHAKE)
        assert b"READY" in handshake_answer(raw)
        with pytest.raises(OSError):
            for _ in range(1000):
                raw.sendall(bytes([0x01, 0]) * 1000)
        raw.close()
    finally:
        server.stop()
    assert not os.path.exists(f"{tmp_path}/backend.sock")
