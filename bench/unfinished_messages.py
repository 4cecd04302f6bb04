"""What a peer that never finishes a message makes the backend hold (issue 34, item 2): the probe.

    PYTHONPATH=. .venv/bin/python bench/unfinished_messages.py [--server-path DIR] [--gib 1.0]

ZeroMQ hands a multipart message to the application only once its last frame has arrived, and until
then libzmq keeps every frame it has read. Its own bounds: ZMQ_MAXMSGSIZE (the backend's
`max_frame_bytes`) checks each frame's declared size, and the high-water marks count whole
messages. Measured here against a real backend process (ScriptedPipeline, loopback, NULL), with raw
ZMTP 3.0 peers that say what they send byte by byte:

- frames: one peer, one message, frames of 4 MiB (each far under `max_frame_bytes`) with the MORE
  flag, never a last frame: the backend's VmRSS after each step, up to --gib GiB sent.
- empty frames: one peer sending empty MORE frames (2 bytes each on the wire) by the million.
- partial frame: one peer announcing a 200 MiB frame and sending 0, 50, 100 and 199 MiB of it.

Each row ends with the peer closing its connection and the VmRSS after that. --server-path runs
the backend from another tree (hostile_input.py says how).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.hostile_input import Backend  # noqa: E402

MIB = 1 << 20
MB = 1e6


def zmtp_null_peer(endpoint: str) -> socket.socket:
    """A raw ZMTP 3.0 DEALER past the NULL handshake (or refused by the backend: then the next send fails)."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    s.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + b"\0" + b"\0" * 31)
    s.recv(64)
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    s.sendall(bytes([0x04, len(body)]) + body)
    return s


def frame_header(size: int, more: bool) -> bytes:
    """ZMTP 3.0 frame header: flags (MORE 0x01, LONG 0x02), then a 1- or 8-byte size."""
    if size < 256:
        return bytes([0x01 if more else 0x00, size])
    return bytes([0x03 if more else 0x02]) + struct.pack(">Q", size)


def settle(backend: Backend, seconds: float = 1.0) -> float:
    time.sleep(seconds)
    return backend.rss_mb()


def probe_frames(backend: Backend, frame_mib: int, total_gib: float) -> dict[str, object]:
    """One message of frame_mib-MiB MORE frames, never finished: VmRSS after each quarter of total_gib."""
    peer = zmtp_null_peer(backend.endpoint)
    start = settle(backend)
    payload = b"\1" * (frame_mib * MIB)
    frames = int(total_gib * 1024 / frame_mib)
    steps = []
    sent = 0
    try:
        for i in range(frames):
            peer.sendall(frame_header(len(payload), more=True) + payload)
            sent += len(payload)
            if (i + 1) % max(1, frames // 4) == 0:
                steps.append({"sent_mib": sent // MIB, "rss_mb": round(settle(backend, 0.5))})
    except OSError as exc:
        steps.append({"dropped_after_mib": sent // MIB, "error": str(exc)})
    peer.close()
    return {"frame_mib": frame_mib, "before_mb": round(start), "steps": steps,
            "after_close_mb": round(settle(backend, 2.0))}


def probe_empty_frames(backend: Backend, millions: int) -> dict[str, object]:
    """Empty MORE frames (2 bytes each on the wire), never a last one."""
    peer = zmtp_null_peer(backend.endpoint)
    start = settle(backend)
    block = frame_header(0, more=True) * 500_000
    steps = []
    try:
        for i in range(millions * 2):
            peer.sendall(block)
            if (i + 1) % 2 == 0:
                steps.append({"frames_m": (i + 1) // 2, "wire_mb": round((i + 1) * len(block) / MB, 1),
                              "rss_mb": round(settle(backend, 0.5))})
    except OSError as exc:
        steps.append({"dropped": str(exc)})
    peer.close()
    return {"before_mb": round(start), "steps": steps, "after_close_mb": round(settle(backend, 2.0))}


def probe_partial_frame(backend: Backend, declared_mib: int, send_mib: int) -> dict[str, object]:
    """One frame of declared_mib MiB announced as the message's last, send_mib MiB of it sent."""
    peer = zmtp_null_peer(backend.endpoint)
    start = settle(backend)
    peer.sendall(frame_header(declared_mib * MIB, more=False))
    piece = b"\1" * MIB
    for _ in range(send_mib):
        peer.sendall(piece)
    held = settle(backend)
    peer.close()
    return {"declared_mib": declared_mib, "sent_mib": send_mib, "before_mb": round(start), "held_mb": round(held),
            "after_close_mb": round(settle(backend, 2.0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-path", type=Path, default=None)
    ap.add_argument("--gib", type=float, default=1.0, help="bytes one message's frames reach (GiB)")
    ap.add_argument("--empty-millions", type=int, default=4)
    ap.add_argument("--only", default="frames,empty,partial")
    args = ap.parse_args()
    only = set(args.only.split(","))
    report: dict[str, object] = {"bench": "unfinished_messages", "server": str(args.server_path or REPO),
                                 "load": round(os.getloadavg()[0], 1)}
    with tempfile.TemporaryDirectory() as tmp:
        backend = Backend(Path(tmp) / "store", args.server_path)
        try:
            if "frames" in only:
                report["frames_4mib"] = probe_frames(backend, 4, args.gib)
                print("4 MiB MORE frames:", report["frames_4mib"], flush=True)
            if "empty" in only:
                report["empty_frames"] = probe_empty_frames(backend, args.empty_millions)
                print("empty MORE frames:", report["empty_frames"], flush=True)
            if "partial" in only:
                report["partial_frame"] = [probe_partial_frame(backend, 200, n) for n in (0, 50, 100, 199)]
                for row in report["partial_frame"]:
                    print("partial 200 MiB frame:", row, flush=True)
        finally:
            backend.stop()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
