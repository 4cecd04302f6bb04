"""Thousands of malformed messages against a running backend: each gets an error reply or is
dropped, and the backend still welcomes a well-formed hello afterwards."""

from __future__ import annotations

import random
import time

import msgpack
import numpy as np
import pytest
import zmq
from dreampolish.protocol import PROTOCOL_VERSION, codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.client import BackendClient
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import MeshPayload

from tests.support.pipelines import running_backend

pytestmark = pytest.mark.timeout(120)


def valid_messages() -> list[list[bytes]]:
    mesh = MeshPayload(np.zeros((3, 3), np.float32), np.array([[0, 1, 2]], np.uint32))
    msgs = [
        m.Hello(client="fuzz"),
        m.Submit(spec=JobSpec("a cat", input_mesh=mesh, options={"test.steps": 1})),
        m.Resume(job_id="nope", mesh=mesh),
        m.Attach(job_id="nope", last_seq=3),
        m.Cancel(job_id="nope"),
        m.FetchResult(job_id="nope"),
    ]
    return [[bytes(f) for f in codec.encode(x)] for x in msgs]


def mutate(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    """One malformed variant of a valid message."""
    header = msgpack.unpackb(frames[0])
    choice = rng.randrange(14)
    if choice == 0:
        return [rng.randbytes(rng.randrange(0, 200)) for _ in range(rng.randrange(1, 4))]
    if choice == 1:
        return [msgpack.packb(rng.choice([1, "x", [1, 2], None, 3.5, b"\x00"]))]
    if choice == 2:
        header["v"] = rng.choice(["2.0", "0.1", 7, None, ""])
    elif choice == 3:
        header["type"] = rng.choice(["welcome", "done", "nope", 5, None, "stage_result", "x" * 500])
    elif choice == 4:
        return frames[:1]  # array frames missing
    elif choice == 5:
        return [frames[0], *frames[1:], *[b"\x00" * 8] * rng.randrange(1, 70)]
    elif choice == 6:
        return [frames[0][: rng.randrange(len(frames[0]))], *frames[1:]]  # truncated header
    elif choice == 7:
        header["body"] = rng.choice([None, 5, "x", [1], {"spec": 3}, {"mesh": {"vertices": 1}}])
    else:
        # Corrupt one field deep in the body: wrong types, huge declared sizes, bad references.
        body = header.get("body") or {}
        target = body.get("spec", body)
        if isinstance(target.get("input_mesh"), dict):
            target = target["input_mesh"] if rng.random() < 0.5 else target
        if isinstance(target.get("mesh"), dict):
            target = target["mesh"]
        key = rng.choice(sorted(target) or ["x"])
        target[key] = rng.choice(
            [
                None,
                -1,
                2**70 if rng.random() < 0.1 else 2**31,
                "\u0000" * 3000,
                [[]],
                {"frame": 99, "dtype": "<f4", "shape": [3, 3]},
                {"frame": 1, "dtype": "<f4", "shape": [2**40, 2**20]},
                {"frame": 1, "dtype": "|O", "shape": [1]},
                {"frame": 1, "dtype": "<f4", "shape": [-3, 3]},
                {"frame": True, "dtype": "<f4"},
                float("nan"),
            ]
        )
    try:
        return [msgpack.packb(header), *frames[1:]]
    except (OverflowError, TypeError, ValueError):
        return [rng.randbytes(32)]


def test_fuzzed_messages_get_errors_and_the_backend_keeps_serving(tmp_path):
    rng = random.Random(1234)
    base = valid_messages()
    with running_backend(tmp_path) as server:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.rcvtimeo = 5000
        sock.connect(server.endpoint)
        sent, replies, errors = 3000, 0, 0
        for i in range(sent):
            sock.send_multipart(mutate(rng, rng.choice(base)))
            if i % 200 == 199:  # keep our own receive queue short
                while sock.poll(0):
                    msg = codec.decode(sock.recv_multipart())
                    replies += not msg.IS_EVENT  # events come from mutations that stayed valid submits
                    errors += isinstance(msg, m.Error)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sock.poll(500):
            msg = codec.decode(sock.recv_multipart())
            replies += not msg.IS_EVENT
            errors += isinstance(msg, m.Error)
        sock.close()
        # A reply is an Error, except for the odd mutation that is still a valid request.
        assert replies <= sent and errors >= 0.8 * sent, (replies, errors)
        with BackendClient(server.endpoint, timeout_s=5) as client:
            welcome = client.connect()
            assert welcome.presets == ["tiny", "fast"]
            assert client.ping() < 1.0
        assert server._thread is not None and server._thread.is_alive()


def test_error_reply_names_the_problem_and_answers_the_request(tmp_path):
    with running_backend(tmp_path) as server:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(server.endpoint)
        frames = [bytes(f) for f in codec.encode(m.Hello(msg_id="h-1"))]
        header = msgpack.unpackb(frames[0])
        header["v"] = "9.0"
        sock.send_multipart([msgpack.packb(header)])
        assert sock.poll(5000)
        reply = codec.decode(sock.recv_multipart())
        assert isinstance(reply, m.Error) and reply.code == "version_mismatch" and reply.re == "h-1"
        assert "9.0" in reply.message and PROTOCOL_VERSION in reply.message
        sock.send_multipart([b"\xc1garbage"])
        assert sock.poll(5000)
        reply = codec.decode(sock.recv_multipart())
        assert isinstance(reply, m.Error) and reply.code == "malformed_message"
        sock.close()
