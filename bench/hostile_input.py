"""Hostile input costs little (issue 34): the probe's figures, measured against a real backend process.

    PYTHONPATH=. .venv/bin/python bench/hostile_input.py [--server-path DIR] [--only ping,png,fuzz,cancel,partial]

- ping: another client's ping round trip, idle (p50/p99 of 200).
- png: the same ping while one, then two clients send reference PNGs back to back whose pixel data
  inflates to 134 MB (a 16-bit RGBA picture at the largest side, 130 kB on the wire) and then fails the
  size check; with the checks per second done.
- fuzz: malformed messages one at a time (tests/support/malformed.py): replies, refusals in Python's words,
  replies with the wrong `re`, tracebacks and refusal lines in the backend's log.
- cancel: the backend's memory (VmRSS) with six queued jobs holding reference images (three 67 MB arrays,
  three 50 MB PNGs), after cancelling them, and after deleting them.
- partial: six peers that each announce one large frame and send 100 MiB of it, then wait: a frame
  announced past max_frame_bytes (500 MiB), and one under it (200 MiB); then twenty such peers (past
  max_connections_per_address).
- endless: one peer sending 4 MiB frames with the MORE flag and never a last one, up to 1 GiB.
- oom: the backend's memory after a job that filled 1 GB in 1 MB tensors and then ran out of memory
  (AllocatingPipeline, below), before the job, after its failure.

--server-path DIR runs the backend from another tree (the code before a change): DIR holds `protocol/`,
`backend/` and `tests/` (git archive), and DIR/ns/dreampolish/ links `protocol` and `backend` to them.
Figures depend on the machine's load: say which machine and how loaded it was.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __name__ == "__main__":  # imported by a backend (AllocatingPipeline), its own tree comes first
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import zmq  # noqa: E402
from dreampolish.protocol import codec  # noqa: E402
from dreampolish.protocol import messages as m  # noqa: E402
from dreampolish.protocol.client import BackendClient  # noqa: E402
from dreampolish.protocol.image import ReferenceImage  # noqa: E402
from dreampolish.protocol.job import JobSpec  # noqa: E402

from tests.support.malformed import PYTHON_WORDS, every_request, malformed, valid_messages  # noqa: E402
from tests.support.pipelines import (  # noqa: E402
    ScriptedPipeline,
    backend_command,
    free_tcp_endpoint,
    repo_env,
    wait_until_serving,
)
from tests.support.png import chunk  # noqa: E402

MB = 1e6


class AllocatingPipeline(ScriptedPipeline):
    """Every job fills 1 GB in 1 MB CPU tensors and then fails as out of memory (bench_oom)."""

    def __init__(self) -> None:
        import torch  # before the baseline is read: torch's own memory is not the job's

        torch.ones(1)

    def run(self, spec, ctx, resume=None):
        import torch

        held = [torch.ones(1 << 18) for _ in range(1000)]  # 1000 x 1 MiB, touched
        ctx.progress("nerf", 1, 1, {"held_mb": len(held)})
        raise MemoryError("DefaultCPUAllocator: can't allocate memory")


class Backend:
    """A backend process (ScriptedPipeline) with its log in a file."""

    def __init__(self, store: Path, server_path: Path | None,
                 pipeline: str = "tests.support.pipelines:ScriptedPipeline") -> None:
        self.endpoint = free_tcp_endpoint()
        self.log = store.parent / "backend.log"
        env = repo_env()
        if server_path is not None:  # that tree's code; this bench's AllocatingPipeline from this one
            env["PYTHONPATH"] = f"{server_path / 'ns'}{os.pathsep}{server_path}{os.pathsep}{REPO}"
        env["OMP_NUM_THREADS"] = "1"
        with open(self.log, "wb") as log:
            # `python -m` puts its working folder first on sys.path: the other tree's, for its tests.support.
            self.proc = subprocess.Popen(backend_command(store, "--bind", self.endpoint, pipeline=pipeline), env=env,
                                         stderr=log, cwd=server_path or REPO)
        if not wait_until_serving(self.endpoint, self.proc):
            raise RuntimeError(f"backend exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / MB
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def dealer(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    return sock


def reply_to(sock: zmq.Socket, timeout_s: float = 60) -> m.Message | None:
    """The next message that is not a job event (None after timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
        msg = codec.decode(sock.recv_multipart())
        if not msg.IS_EVENT:
            return msg
        if time.monotonic() > deadline:
            break
    return None


def pings(endpoint: str, n: int = 200, every_s: float = 0.02, within_s: float = 60.0) -> tuple[float, float, float]:
    """p50, p99 and max round trip of n pings (fewer when they take longer than within_s), in ms."""
    times = []
    sock = dealer(endpoint)
    deadline = time.monotonic() + within_s
    for i in range(n):
        if times and time.monotonic() > deadline:
            break
        start = time.perf_counter()
        sock.send_multipart(codec.encode(m.Ping(msg_id=f"ping-{i}")))
        while True:
            reply = reply_to(sock, timeout_s=60)
            if reply is None or reply.re == f"ping-{i}":
                break
        times.append((time.perf_counter() - start) * 1000)
        time.sleep(every_s)
    sock.close()
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))], times[-1]


def png_bomb() -> bytes:
    """4096x4096 16-bit RGBA: 134 MB of pixel data declared, 1 kB more inflated (so it fails the check)."""
    side = 4096
    raw = side * (1 + side * 8)
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    idat = zlib.compress(b"\0" * (raw + 1024), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bench_png(backend: Backend, senders: int, seconds: float) -> dict[str, float]:
    bomb = png_bomb()
    frames = [bytes(f) for f in codec.encode(m.Submit(spec=JobSpec("", image=ReferenceImage(png=bomb))))]
    stop, checks = threading.Event(), [0]

    def send() -> None:
        sock = dealer(backend.endpoint)
        while not stop.is_set():
            sock.send_multipart(frames)
            if reply_to(sock) is not None:
                checks[0] += 1
        sock.close()

    threads = [threading.Thread(target=send) for _ in range(senders)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    start = time.monotonic()
    p50, p99, worst = pings(backend.endpoint, n=int(seconds / 0.02 / 1.5), within_s=4 * seconds)
    elapsed = time.monotonic() - start
    stop.set()
    for t in threads:
        t.join()
    return {"png_bytes": len(bomb), "p50_ms": p50, "p99_ms": p99, "max_ms": worst,
            "checks_per_s": checks[0] / (elapsed + 1.0)}


def bench_fuzz(backend: Backend, n: int) -> dict[str, int]:
    rng = random.Random(34)
    base = valid_messages() + every_request()
    sock = dealer(backend.endpoint)
    counts = {"sent": 0, "replies": 0, "refusals": 0, "python_words": 0, "wrong_re": 0}
    for _ in range(n):
        frames = malformed(rng, base)
        request_id = codec.peek_message_id(frames)
        sock.send_multipart(frames)
        counts["sent"] += 1
        reply = reply_to(sock, timeout_s=5)
        counts["replies"] += reply is not None
        if isinstance(reply, m.Error):
            counts["refusals"] += 1
            counts["python_words"] += bool(PYTHON_WORDS.search(reply.message))
            counts["wrong_re"] += bool(request_id) and reply.re != request_id
    sock.close()
    log = backend.log.read_text(errors="replace")
    counts["log_tracebacks"] = log.count("Traceback")
    lines = log.splitlines()
    counts["traceback_ends"] = sorted({lines[i - 1][:100] for i, line in enumerate(lines)
                                       if i and "Traceback" not in line and lines[i - 1][:1].isalpha()
                                       and line.startswith("20")} & {ln[:100] for ln in lines if "Error" in ln[:40]})
    counts["log_refusal_lines"] = sum("refused" in line for line in log.splitlines())
    return counts


def bench_cancel(backend: Backend, store: Path) -> dict[str, float]:
    hold = store.parent / "hold"
    hold.touch()
    rss = {"idle": backend.rss_mb()}
    noise = np.random.default_rng(0).integers(0, 256, (4096, 4096, 3), np.uint8)
    raw = b"".join(b"\0" + noise[y].tobytes() for y in range(noise.shape[0]))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4096, 4096, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b""))
    with BackendClient(backend.endpoint, timeout_s=120) as client:
        client.connect()
        client.submit(JobSpec("holds the worker", options={"test.hold_while": str(hold)}))
        jobs = []
        for i in range(6):
            image = (ReferenceImage(array=np.full((4096, 4096, 4), i, np.uint8)) if i % 2 == 0
                     else ReferenceImage(png=png))
            jobs.append(client.submit(JobSpec("", image=image)))
        time.sleep(2.0)
        rss["six_queued"] = backend.rss_mb()
        for job in jobs:
            client.cancel(job)
        time.sleep(2.0)
        rss["after_cancel"] = backend.rss_mb()
        for job in jobs:
            client.delete(job)
        time.sleep(2.0)
        rss["after_delete"] = backend.rss_mb()
    hold.unlink()
    rss["png_mb"] = len(png) / MB
    return rss


def zmtp_peer(endpoint: str, declared: int, send_bytes: int) -> socket.socket:
    """A raw ZMTP 3.0 (NULL) DEALER that announces one frame of `declared` bytes and sends send_bytes of it."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)  # a refused peer is not read from: no hang
    s.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + b"\0" + b"\0" * 31)
    s.recv(64)
    props = b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    body = b"\x05READY" + props
    s.sendall(bytes([0x04, len(body)]) + body)
    s.sendall(bytes([0x02]) + struct.pack(">Q", declared))  # a long, last frame
    piece = b"\0" * (1 << 20)
    sent = 0
    try:
        while sent < send_bytes:
            s.sendall(piece)
            sent += len(piece)
    except OSError:
        pass  # the backend dropped the connection
    return s


def bench_partial(backend: Backend, declared: int, count: int = 6) -> dict[str, float]:
    before = backend.rss_mb()
    peers = [zmtp_peer(backend.endpoint, declared, 100 << 20) for _ in range(count)]
    time.sleep(2.0)
    during = backend.rss_mb()
    for p in peers:
        p.close()
    time.sleep(2.0)
    return {"declared_mib": declared >> 20, "peers": count, "before": before, "during": during,
            "after_close": backend.rss_mb()}


def bench_endless(backend: Backend, gib: float = 1.0) -> dict[str, float]:
    """One peer sending 4 MiB frames with the MORE flag, never a last one, up to gib GiB (or until dropped)."""
    before = backend.rss_mb()
    s = zmtp_peer(backend.endpoint, 0, 0)  # an empty last frame: a (malformed) whole message, answered
    frame = bytes([0x03]) + struct.pack(">Q", 4 << 20) + b"\1" * (4 << 20)
    sent, peak = 0, before
    try:
        while sent < gib * 1024:
            s.sendall(frame)
            sent += 4
            if sent % 64 == 0:
                peak = max(peak, backend.rss_mb())
    except OSError:
        pass  # the backend shut the connection down
    time.sleep(1.0)
    peak = max(peak, backend.rss_mb())
    s.close()
    time.sleep(2.0)
    return {"sent_mib": sent, "before": before, "peak": peak, "after_close": backend.rss_mb()}


def bench_oom(server_path: Path | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        backend = Backend(Path(tmp) / "store", server_path, pipeline="bench.hostile_input:AllocatingPipeline")
        try:
            with BackendClient(backend.endpoint, timeout_s=120) as client:
                client.connect()
                before = backend.rss_mb()
                job = client.submit(JobSpec("fills memory"))
                try:
                    client.wait(job, timeout_s=300)
                except Exception as exc:  # the job fails by design
                    message = str(exc)
                time.sleep(2.0)
                return {"before": before, "after_failure": backend.rss_mb(), "message": message}
        finally:
            backend.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-path", type=Path, default=None)
    ap.add_argument("--only", default="ping,png,fuzz,cancel,partial,endless,oom")
    ap.add_argument("--fuzz", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args()
    only = set(args.only.split(","))
    report: dict[str, object] = {"bench": "hostile_input", "server": str(args.server_path or REPO),
                                 "load": round(os.getloadavg()[0], 1)}
    print(f"backend from {args.server_path or REPO}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        backend = Backend(store, args.server_path)
        try:
            if "ping" in only:
                p50, p99, worst = pings(backend.endpoint)
                report["ping_idle_ms"] = [round(p50, 1), round(p99, 1), round(worst, 1)]
                print(f"ping idle: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms")
            if "png" in only:
                for senders in (1, 2):
                    r = bench_png(backend, senders, args.seconds)
                    report[f"ping_png_senders_{senders}"] = {k: round(v, 1) for k, v in r.items()}
                    print(f"ping with {senders} client(s) sending {r['png_bytes'] / 1e3:.0f} kB PNGs back to back: "
                          f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms "
                          f"({r['checks_per_s']:.1f} PNG checks/s)")
            if "fuzz" in only:
                report["fuzz"] = bench_fuzz(backend, args.fuzz)
                print("fuzz:", report["fuzz"])
            if "cancel" in only:
                r = bench_cancel(backend, store)
                report["rss_cancel_mb"] = {k: round(v) for k, v in r.items()}
                print(f"memory (VmRSS, MB): idle {r['idle']:.0f}, six queued image jobs {r['six_queued']:.0f}, "
                      f"after cancel {r['after_cancel']:.0f}, after delete {r['after_delete']:.0f} "
                      f"(PNG {r['png_mb']:.0f} MB, arrays 67 MB)")
            if "partial" in only:
                for declared, count in ((500 << 20, 6), (200 << 20, 6), (200 << 20, 20)):
                    r = bench_partial(backend, declared, count)
                    report[f"rss_partial_{declared >> 20}_mib_{count}"] = {k: round(v) for k, v in r.items()}
                    print(f"{count} peers announcing {r['declared_mib']} MiB, 100 MiB sent each: VmRSS "
                          f"{r['before']:.0f} -> {r['during']:.0f} MB, {r['after_close']:.0f} MB after they close")
            if "endless" in only:
                r = bench_endless(backend)
                report["rss_endless_mb"] = {k: round(v) for k, v in r.items()}
                print(f"one peer sending 4 MiB MORE frames, never a last one: {r['sent_mib']} MiB sent, VmRSS "
                      f"{r['before']:.0f} -> {r['peak']:.0f} MB at most, {r['after_close']:.0f} MB after it closes")
        finally:
            backend.stop()
    if "oom" in only:
        r = bench_oom(args.server_path)
        report["rss_oom_mb"] = {k: (round(v) if isinstance(v, float) else v[:160]) for k, v in r.items()}
        print(f"a job that filled 1 GB and ran out of memory: VmRSS {r['before']:.0f} MB before, "
              f"{r['after_failure']:.0f} MB after it failed; {r['message'][:160]!r}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
