"""Connections past the backend's limits are refused in their handshake, in words, and the backend keeps
serving the others (issue 34 item 2: what unfinished messages hold is bounded by the connections)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import time

import pytest
from dreampolish.backend.commands import keys as keys_command
from dreampolish.backend.connections import ConnectionLimits, LiveConnections
from dreampolish.backend.security import load_server_keys
from dreampolish.protocol.client import AccessRefused, BackendClient

from tests.support.pipelines import running_backend

pytestmark = pytest.mark.timeout(60)
needs_tcp_info = pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="unfinished bytes are read from "
                                    "TCP_INFO (Linux); elsewhere the backend does not bound them")


def client(endpoint: str, **kw) -> BackendClient:
    return BackendClient(endpoint, timeout_s=5, heartbeat_s=0.3, dead_after_s=4, **kw)


def refusal(c: BackendClient) -> str:
    """A refused connection raises AccessRefused at once; a silent one would be BackendUnreachable."""
    with pytest.raises(AccessRefused) as info:
        c.connect()
    return str(info.value)


def wait_for_live(server, n: int, timeout_s: float = 5.0) -> None:
    """Until the backend counts n live connections (a closed one is counted off when ZeroMQ reports it)."""
    deadline = time.monotonic() + timeout_s
    while (counts := (server._gate.live.count(), server._guard.live.count() if server._guard else n)) != (n, n):
        assert time.monotonic() < deadline, f"{counts} connections live (ROUTER, relay), not {n}"
        time.sleep(0.02)


def test_a_connection_past_the_total_is_refused_in_words_and_the_others_are_still_served(tmp_path):
    limits = ConnectionLimits(per_address=16, total=2)
    with running_backend(tmp_path, connection_limits=limits) as server:
        with client(server.endpoint) as first, client(server.endpoint) as second:
            welcome = first.connect()
            second.connect()
            assert welcome.limits["max_connections_total"] == 2
            assert welcome.limits["max_connections_per_address"] == 16
            with client(server.endpoint) as third:
                line = refusal(third)
            assert "refused the connection: too many connections" in line
            assert "max_connections_total" in line and "\n" not in line
            assert first.ping() < 5 and second.ping() < 5


def test_closing_a_connection_frees_its_place(tmp_path):
    with running_backend(tmp_path, connection_limits=ConnectionLimits(per_address=16, total=1)) as server:
        with client(server.endpoint) as first:
            first.connect()
            with client(server.endpoint) as second:
                refusal(second)
        wait_for_live(server, 0)
        with client(server.endpoint) as third:
            third.connect()
            assert third.ping() < 5


def test_one_address_may_hold_only_its_share(tmp_path):
    with running_backend(tmp_path, connection_limits=ConnectionLimits(per_address=1, total=16)) as server:
        port = server.endpoint.rsplit(":", 1)[1]
        with client(server.endpoint) as here:
            here.connect()
            with client(server.endpoint) as again:
                assert "too many connections" in refusal(again)
            # Another address (all of 127/8 is loopback): ZeroMQ connects from it as "source;destination".
            with client(f"tcp://127.0.0.2:0;127.0.0.1:{port}") as elsewhere:
                elsewhere.connect()
                assert elsewhere.ping() < 5
            assert here.ping() < 5


def raw_null_peer(endpoint: str) -> socket.socket:
    """A ZMTP 3.0 DEALER written by hand: the greeting (NULL) and READY, nothing more."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + b"\0" + b"\0" * 31)
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    s.sendall(bytes([0x04, len(body)]) + body)
    return s


def handshake_answer(s: socket.socket) -> bytes:
    """What the backend sends a raw peer in its handshake: its greeting, then READY or ERROR."""
    data = b""
    while b"READY" not in data and b"ERROR" not in data:
        data += s.recv(4096)
    return data


def test_a_flood_of_connections_that_vanish_leaves_no_place_taken(tmp_path):
    with running_backend(tmp_path, connection_limits=ConnectionLimits(per_address=4, total=4)) as server:
        host, port = server.endpoint.removeprefix("tcp://").rsplit(":", 1)
        for i in range(2000):
            with socket.create_connection((host, int(port))) as s:
                if i % 2:
                    s.sendall(b"\xff" + b"\0" * 8)  # half a greeting
        wait_for_live(server, 0, timeout_s=20)
        with client(server.endpoint) as c:
            c.connect()


def test_a_raw_peer_past_the_limit_is_refused_in_its_handshake_before_it_can_send_a_frame(tmp_path):
    """The stalled peers of bench/hostile_input.py: one past the limit gets ZMTP's ERROR command with ZAP
    status 500 where the others got READY, and ZeroMQ reads no message from it."""
    with running_backend(tmp_path, connection_limits=ConnectionLimits(per_address=2, total=16)) as server:
        held = [raw_null_peer(server.endpoint) for _ in range(2)]
        assert all(b"\x05READY" in handshake_answer(s) for s in held)
        wait_for_live(server, 2)
        past = raw_null_peer(server.endpoint)
        assert handshake_answer(past).endswith(b"\x05ERROR\x03500")
        # ZeroMQ would go on reading it (a frame sent in the handshake is buffered) until the handshake
        # times out; the backend shuts it down at once.
        past.settimeout(3)
        more = bytes([0x03]) + struct.pack(">Q", 1 << 20) + b"\1" * (1 << 20)
        with pytest.raises(OSError) as info:
            for _ in range(1000):
                past.sendall(more)
        assert not isinstance(info.value, TimeoutError)  # EPIPE or ECONNRESET: not left unread
        with client(server.endpoint) as c:
            assert "too many connections" in refusal(c)
        for s in held + [past]:
            s.close()
        wait_for_live(server, 0)
        with client(server.endpoint) as c:
            c.connect()
            assert c.ping() < 5


@pytest.fixture
def curve_keys(tmp_path):
    def pair(folder, name, client_name):
        args = type("Args", (), {"out": folder, "name": name, "client": client_name, "force": False})
        assert keys_command.run(args) == 0
        return folder / f"{name}.key", folder / f"{name}.key_secret"

    ring = tmp_path / "keys"
    server_public, server_secret = pair(ring, "server", None)
    alice_public, alice_secret = pair(ring / "alice", "alice", "alice")
    _, bob_secret = pair(ring / "bob", "bob", "bob")
    allowed = tmp_path / "clients"
    allowed.mkdir()
    shutil.copy(alice_public, allowed)
    return {"server": load_server_keys(server_secret), "server_public": str(server_public),
            "alice": alice_secret, "bob": bob_secret, "allowed": allowed}


def test_with_an_allow_list_keys_are_checked_first_and_served_keys_count_against_the_limits(tmp_path, curve_keys):
    limits = ConnectionLimits(per_address=1, total=16)
    with running_backend(tmp_path / "store", curve_keys=curve_keys["server"], curve_clients=curve_keys["allowed"],
                         connection_limits=limits) as server:
        def keyed(key):
            return client(server.endpoint, server_public_key=curve_keys["server_public"], client_key=key)

        with keyed(curve_keys["alice"]) as alice:
            alice.connect()
            with keyed(curve_keys["bob"]) as bob:
                assert refusal(bob).startswith("this backend does not know your client key")
            with keyed(curve_keys["alice"]) as again:
                assert "too many connections" in refusal(again)
            assert alice.ping() < 5
            alice_user = alice.connection.public_key
        assert server.access.clients is not None and alice_user.encode() in server.access.clients


def test_the_connection_asking_is_known_when_its_address_has_one_unanswered():
    live = LiveConnections(ConnectionLimits())
    live.opened(7, "a")
    assert live.asking("a") == 7 and live.asking("a") is None  # answered once
    live.opened(8, "a")
    live.opened(9, "a")
    assert live.asking("a") is None  # two unanswered: the ZAP request does not say which
    live.closed(8)
    assert live.asking("a") == 9


def test_live_connections_count_each_connection_until_it_closes_and_name_the_limit_reached():
    live = LiveConnections(ConnectionLimits(per_address=2, total=3))
    live.opened(1, "a")
    live.opened(2, "a")
    assert live.refusal("a") == ""  # fd 2 asking: the second of "a"
    live.opened(3, "a")
    assert live.refusal("a").startswith("max_connections_per_address is 2: a has 2 connections open")
    live.refused("a")
    live.opened(4, "b")
    assert live.refusal("b") == ""  # the refused fd 3, not yet closed, takes no place
    live.opened(5, "c")
    assert live.refusal("c").startswith("max_connections_total is 3: 3 connections are open")
    live.refused("c")
    # Whichever of an address's connections closes first, what is counted never falls below what is served.
    live.closed(1)  # served fd 2 is left of "a", but the refused fd 3's place is taken back with fd 1's close
    assert live.count("a") == 2 and live.count() == 3
    live.closed(3)
    live.closed(99)  # a descriptor never seen opened
    assert live.count("a") == 1
    for fd in (2, 4, 5):
        live.closed(fd)
    assert live.count() == 0 and live.refusal("a") == ""


@needs_tcp_info
@pytest.mark.parametrize("relay", [True, False], ids=["relay", "gate"])
def test_a_message_that_never_ends_is_cut_off_and_whole_messages_of_the_same_size_are_not(tmp_path, relay):
    """bench/unfinished_messages.py: ZeroMQ takes any number of frames into a message that never ends.
    Past the connection's limit (max_message_bytes and an allowance; 8 MiB here) the backend shuts the
    connection down; a client sending many whole messages that add up to more is served throughout."""
    import zmq
    from dreampolish.protocol import codec
    from dreampolish.protocol import messages as m

    limits = ConnectionLimits(unfinished_bytes=8 << 20)
    with running_backend(tmp_path, connection_limits=limits, frame_relay=relay) as server:
        honest = zmq.Context.instance().socket(zmq.DEALER)
        honest.linger = 0
        honest.connect(server.endpoint)
        try:
            for i in range(8):  # 8 x 3 MiB in whole messages (each refused: a ping carries no frames)
                honest.send_multipart([*codec.encode(m.Ping(msg_id=f"big-{i}")), b"\0" * (3 << 20)])
                assert honest.poll(10_000) and codec.decode(honest.recv_multipart()).re == f"big-{i}"
        finally:
            honest.close()
        endless = raw_null_peer(server.endpoint)
        assert b"READY" in handshake_answer(endless)
        frame = bytes([0x03]) + struct.pack(">Q", 1 << 20) + b"\1" * (1 << 20)  # MORE, 1 MiB
        sent, deadline = 0, time.monotonic() + 20
        with pytest.raises(OSError):  # shut down: EPIPE or ECONNRESET
            while time.monotonic() < deadline:
                endless.sendall(frame)
                sent += 1
                time.sleep(0.01)
        assert 8 <= sent < 100, sent
        endless.close()
        with client(server.endpoint) as c:
            c.connect()
            assert c.ping() < 5


@needs_tcp_info
@pytest.mark.parametrize("curve", [False, True], ids=["null", "curve"])
def test_whole_messages_leave_nothing_counted_unfinished_but_the_handshake(tmp_path, curve_keys, curve):
    """The gate's count of unfinished bytes is exact to the byte for each frame (ZMTP headers, CurveZMQ's
    MESSAGE command), so a long-lived client does not drift towards the limit (the relay's count is
    tested below)."""
    config = {"curve_keys": curve_keys["server"], "curve_clients": curve_keys["allowed"]} if curve \
        else {"frame_relay": False}
    keys = {"server_public_key": curve_keys["server_public"], "client_key": curve_keys["alice"]} if curve else {}
    with running_backend(tmp_path / "store", **config) as server, client(server.endpoint, **keys) as c:
        c.connect()
        for _ in range(200):
            c.ping()
        c.list_jobs()
        time.sleep(0.3)  # the last replies' requests are counted before the check
        (fd,) = list(server._gate.live._address_of)
        held = server._gate.unfinished.unfinished(fd)
        assert held is not None and 0 <= held < 2048, held


@needs_tcp_info
@pytest.mark.parametrize("relay", [True, False], ids=["relay", "gate"])
def test_past_the_total_of_unfinished_bytes_the_connection_idle_longest_is_shut_down(tmp_path, relay):
    limits = ConnectionLimits(unfinished_bytes=64 << 20, unfinished_total=8 << 20)
    with running_backend(tmp_path, connection_limits=limits, frame_relay=relay) as server:
        stalled, sending = raw_null_peer(server.endpoint), raw_null_peer(server.endpoint)
        for s in (stalled, sending):
            assert b"READY" in handshake_answer(s)
            s.sendall(bytes([0x02]) + struct.pack(">Q", 32 << 20))  # one 32 MiB frame, the last
        stalled.sendall(b"\1" * (5 << 20))
        time.sleep(0.5)
        for _ in range(50):  # 5 MiB more, while the other has sent nothing for half a second
            sending.sendall(b"\1" * (100 << 10))
            time.sleep(0.01)
        time.sleep(0.5)
        stalled.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert stalled.recv(1) == b""  # shut down
        sending.setblocking(False)
        with pytest.raises(BlockingIOError):  # still open, nothing to read
            sending.recv(1)
        assert server._gate.live.count() == 1


def test_serve_takes_the_limits_from_its_options(tmp_path):
    import subprocess

    from tests.support.pipelines import backend_command, free_tcp_endpoint, repo_env, wait_until_serving

    endpoint = free_tcp_endpoint()
    args = ("--bind", endpoint, "--max-connections", "3", "--max-connections-per-address", "2")
    proc = subprocess.Popen(backend_command(tmp_path, *args), env=repo_env(), stderr=subprocess.DEVNULL)
    try:
        assert wait_until_serving(endpoint, proc)
        with client(endpoint) as c:
            limits = c.connect().limits
        assert (limits["max_connections_total"], limits["max_connections_per_address"]) == (3, 2)
    finally:
        proc.terminate()
        proc.wait(20)


def test_ipc_clients_are_one_address(tmp_path):
    from dreampolish.backend.server import BackendServer, ServerConfig

    from tests.support.pipelines import ScriptedPipeline

    endpoint = f"ipc://{tmp_path}/backend.sock"
    limits = ConnectionLimits(per_address=1)
    server = BackendServer(ServerConfig(bind=endpoint, store_dir=tmp_path / "store", connection_limits=limits),
                           ScriptedPipeline)
    server.start()
    try:
        with client(endpoint) as first:
            first.connect()
            with client(endpoint) as second:
                assert "too many connections" in refusal(second)
            assert first.ping() < 5
    finally:
        server.stop()


@needs_tcp_info
@pytest.mark.parametrize("relay", [True, False], ids=["relay", "gate"])
def test_past_the_total_of_unfinished_bytes_an_idle_client_holding_no_message_is_not_shut_down(tmp_path, relay):
    """An artist's Blender that sent nothing for a while (rendering: its timers do not run) holds only its
    handshake's bytes: shutting it down frees nothing, and it must not be cut before the peer that holds
    the unfinished bytes."""
    limits = ConnectionLimits(unfinished_bytes=64 << 20, unfinished_total=8 << 20)
    with running_backend(tmp_path, connection_limits=limits, frame_relay=relay) as server:
        with client(server.endpoint) as idle:
            idle.connect()
            idle.ping()
            time.sleep(1.0)  # idle longer than the stalled peer below
            stalled = raw_null_peer(server.endpoint)
            assert b"READY" in handshake_answer(stalled)
            stalled.sendall(bytes([0x02]) + struct.pack(">Q", 32 << 20) + b"\1" * (9 << 20))
            stalled.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert stalled.recv(1) == b""  # shut down: it holds what is over the total
            time.sleep(0.3)
            assert idle.ping() < 5  # still the same connection: not lost
            stalled.close()


def vanish(s: socket.socket) -> None:
    """Close s without a word to its peer (no FIN, no RST), as a machine that lost its network or power
    does: TCP_REPAIR (Linux, CAP_NET_ADMIN). The peer learns only by sending to it."""
    try:
        s.setsockopt(socket.IPPROTO_TCP, 19, 1)  # TCP_REPAIR
    except OSError as exc:
        pytest.skip(f"cannot close a connection silently here (TCP_REPAIR: {exc})")
    s.close()


def test_connections_whose_peer_vanished_give_their_places_back(tmp_path, monkeypatch):
    """A Blender whose machine lost its network (a laptop that slept, a NAT that forgot an idle mapping)
    connects again from the same address: the connection it left behind sends nothing and, unasked,
    would hold its place for ever, until the address is locked out. The backend asks (TCP keepalive)."""
    from dreampolish.backend import connections

    monkeypatch.setattr(connections, "KEEPALIVE_IDLE_S", 1)
    monkeypatch.setattr(connections, "KEEPALIVE_INTERVAL_S", 1)
    monkeypatch.setattr(connections, "KEEPALIVE_PROBES", 2)
    with running_backend(tmp_path, connection_limits=ConnectionLimits(per_address=2, total=16)) as server:
        for _ in range(2):
            gone = raw_null_peer(server.endpoint)
            assert b"READY" in handshake_answer(gone)
            vanish(gone)
        wait_for_live(server, 0, timeout_s=15)
        with client(server.endpoint) as again:
            again.connect()
            assert again.ping() < 5


def test_a_descriptor_reused_by_another_local_socket_is_not_shut_down():
    """The gate shuts down a refused connection 0.2 s later by its descriptor. If that connection closed
    and its descriptor went to another one in between, the other must be left alone, also for IPC
    (Unix) sockets, whose getpeername() is "" for every peer."""
    from dreampolish.backend import connections

    refused, its_peer = socket.socketpair()
    fd = refused.fileno()
    recorded = connections.peer_name(fd)  # as the gate records it when ZeroMQ accepts the connection
    served, client_end = socket.socketpair()  # an artist's Blender over ipc://, served
    os.dup2(served.fileno(), fd)  # the refused connection closed; its descriptor is now the served one's
    try:
        connections.shut_down(fd, recorded)
        served.sendall(b"still here")
        assert client_end.recv(16) == b"still here"
    finally:
        for s in (served, client_end, its_peer):
            s.close()
        os.close(fd)
        refused.detach()
