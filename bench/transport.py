"""Transport benchmark: one stage_result with ~1M triangles, per-corner UVs and a 2048² base-colour PNG,
encoded by the protocol codec, sent over loopback TCP with ZeroMQ and decoded — next to a raw ZeroMQ send
of the same bytes. Prints a table and one JSON line.

    .venv/bin/python bench/transport.py [--faces 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dreampolish.protocol import codec  # noqa: E402
from dreampolish.protocol.messages import StageResult  # noqa: E402
from dreampolish.protocol.scene import MeshPayload, TexturePayload  # noqa: E402
from payloads import grid_mesh, png_bytes, texture_image  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faces", type=int, default=1_000_000)
    p.add_argument("--texture", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()

    verts, faces, uvs = grid_mesh(args.faces)
    png = png_bytes(texture_image(args.texture))
    mesh = MeshPayload(verts, faces, uvs=uvs, textures=[TexturePayload("base_color", png=png)])
    msg = StageResult(stage="texture", index=5, mesh=mesh, job_id="bench", seq=1)

    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    for s in (push, pull):
        s.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")

    enc, send_recv, dec, raw = [], [], [], []
    nbytes = 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        frames = codec.encode(msg)
        t1 = time.perf_counter()
        push.send_multipart(frames, copy=False)
        got = pull.recv_multipart(copy=False)
        t2 = time.perf_counter()
        out = codec.decode(got)
        t3 = time.perf_counter()
        assert isinstance(out, StageResult) and out.mesh.num_faces == faces.shape[0]
        nbytes = sum(memoryview(f).nbytes for f in frames)
        enc.append(t1 - t0)
        send_recv.append(t2 - t1)
        dec.append(t3 - t2)
        blob = [bytes(memoryview(f)) for f in frames]
        t4 = time.perf_counter()
        push.send_multipart(blob, copy=False)
        pull.recv_multipart(copy=False)
        raw.append(time.perf_counter() - t4)
    ctx.destroy(linger=0)

    med = {k: float(np.median(v)) for k, v in
           {"encode_s": enc, "send_recv_s": send_recv, "decode_s": dec, "raw_zmq_s": raw}.items()}
    total = med["encode_s"] + med["send_recv_s"] + med["decode_s"]
    figures = {
        "benchmark": "transport",
        "faces": int(faces.shape[0]),
        "vertices": int(verts.shape[0]),
        "texture_side": args.texture,
        "png_mb": round(len(png) / 1e6, 2),
        "message_mb": round(nbytes / 1e6, 1),
        **{k: round(v, 4) for k, v in med.items()},
        "total_s": round(total, 4),
        "codec_path_gb_s": round(nbytes / total / 1e9, 2),
        "raw_zmq_gb_s": round(nbytes / med["raw_zmq_s"] / 1e9, 2),
    }
    print(f"stage_result: {figures['faces']} triangles, {figures['vertices']} vertices, "
          f"{args.texture}² PNG ({figures['png_mb']} MB); message {figures['message_mb']} MB")
    for k in ("encode_s", "send_recv_s", "decode_s", "total_s", "raw_zmq_s"):
        print(f"  {k:12s} {figures[k]:.4f}")
    print(f"  codec path {figures['codec_path_gb_s']} GB/s, raw ZeroMQ {figures['raw_zmq_gb_s']} GB/s")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
