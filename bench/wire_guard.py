"""What the relay in front of a backend without CURVE costs a transfer (backend/wire_guard.py, issue 34).

    .venv/bin/python bench/wire_guard.py [--mib 1 16 128] [--repeat 5]

A DEALER sends a message of a header frame and one payload frame of N MiB over loopback TCP; a ROUTER echoes
it back whole; timed from the send to the last byte of the echo (median of --repeat), once with the ROUTER
bound on the TCP port itself and once behind the relay (the ROUTER on its private ipc:// endpoint), which
reads the framing of what the client sends and copies both directions. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import zmq
from dreampolish.backend.connections import ConnectionLimits
from dreampolish.backend.wire_guard import WireGuard


def echo(router: zmq.Socket, stop: threading.Event) -> None:
    while not stop.is_set():
        if router.poll(100):
            router.send_multipart(router.recv_multipart(copy=False), copy=False)


def round_trips(endpoint: str, payload: bytes, repeat: int) -> float:
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(endpoint)
    try:
        times = []
        for _ in range(repeat + 1):  # the first one also connects: not counted
            t = time.perf_counter()
            dealer.send_multipart([b"header", payload], copy=False)
            assert dealer.poll(60_000)
            frames = dealer.recv_multipart(copy=False)
            assert len(frames[1]) == len(payload)
            times.append(time.perf_counter() - t)
        return statistics.median(times[1:])
    finally:
        dealer.close()


def measure(relay: bool, sizes: list[int], repeat: int) -> dict[int, float]:
    context = zmq.Context.instance()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    guard = WireGuard("tcp://127.0.0.1:*", ConnectionLimits()) if relay else None
    if guard is not None:
        router.bind(guard.router_endpoint)
        endpoint = guard.start()
    else:
        router.bind("tcp://127.0.0.1:*")
        endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    stop = threading.Event()
    thread = threading.Thread(target=echo, args=(router, stop), daemon=True)
    thread.start()
    try:
        return {mib: round_trips(endpoint, b"\1" * (mib << 20), repeat) for mib in sizes}
    finally:
        stop.set()
        thread.join()
        router.close()
        if guard is not None:
            guard.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, nargs="+", default=[1, 16, 128])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    direct = measure(False, args.mib, args.repeat)
    relayed = measure(True, args.mib, args.repeat)
    print(f"{'MiB':>5} {'direct ms':>10} {'relay ms':>10} {'relay GB/s (both ways)':>24}")
    for mib in args.mib:
        rate = 2 * (mib << 20) / relayed[mib] / 1e9
        print(f"{mib:5d} {direct[mib] * 1e3:10.1f} {relayed[mib] * 1e3:10.1f} {rate:24.2f}")
    print(json.dumps({"bench": "wire_guard", "direct_s": direct, "relay_s": relayed}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
