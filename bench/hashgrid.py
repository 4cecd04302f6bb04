"""Hash-grid encoding throughput: forward + backward, points per second, PyTorch vs fused Triton.

    .venv/bin/python bench/hashgrid.py [--points N] [--levels 16] [--log2-table 19] [--threads 2]

Two workloads per encoding, on the NeRF stage's grid (16 levels x 2 features, 2^19 entries, base
16, growth 1.447; all levels unlocked):
- "train": encode, then backward of a random cotangent into the table (what every field step does);
- "analytic normals": encode, grad w.r.t. the points with create_graph, then backward of a loss on
  that gradient into the table (the double backward the analytic normals' losses need).

On CUDA both encodings are timed (CUDA-synchronised, after warm-up). On the CPU only the PyTorch
encoding gives a meaningful speed: the Triton kernels run there only in Triton's interpreter
(TRITON_INTERPRET=1), which executes them in Python, so `--interpreter` times them on a small
batch only to show that they run; that figure says nothing about GPU speed.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

if "--interpreter" in sys.argv:
    # must be set before Triton is imported (hashgrid_triton is imported on first use)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from dreampolish.backend.geometry.hashgrid import HashGridConfig, HashGridEncoding  # noqa: E402


def _step(enc: HashGridEncoding, x: torch.Tensor, cotangent: torch.Tensor, workload: str) -> None:
    enc.table.grad = None
    if workload == "train":
        enc(x).backward(cotangent)
        return
    xg = x.detach().requires_grad_(True)
    out = enc(xg)
    (grad_x,) = torch.autograd.grad(out, xg, cotangent, create_graph=True)
    ((grad_x.norm(dim=-1) - 1) ** 2).mean().backward()


def _time(enc: HashGridEncoding, x: torch.Tensor, workload: str, repeats: int) -> dict:
    cotangent = torch.randn(x.shape[0], enc.n_output_dims, device=x.device)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    _step(enc, x, cotangent, workload)  # warm-up: kernel compilation, allocator
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _step(enc, x, cotangent, workload)
        sync()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"median_s": median, "best_s": min(times), "points_per_s": x.shape[0] / median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=None, help="points per step (default 2^18 CUDA, 2^16 CPU)")
    parser.add_argument("--levels", type=int, default=16)
    parser.add_argument("--log2-table", type=int, default=19)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--interpreter", action="store_true",
                        help="on the CPU, also run the Triton kernels in the interpreter (2^10 points; not a speed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    n = args.points or (2**18 if cuda else 2**16)
    base = dict(n_levels=args.levels, log2_hashmap_size=args.log2_table, start_levels=args.levels, init_scale=0.1)
    runs = [("torch", n)]
    if cuda or args.interpreter:
        runs.append(("triton", n if cuda else 2**10))
    results = []
    name = torch.cuda.get_device_name() if cuda else f"cpu ({args.threads} threads)"
    print(f"hash grid {args.levels} levels x 2 features, 2^{args.log2_table} entries, on {name}")
    print(f"{'encoding':>8} {'workload':>17} {'points':>8} {'median ms':>10} {'Mpoints/s':>10}")
    for impl, points in runs:
        torch.manual_seed(0)
        enc = HashGridEncoding(HashGridConfig(**base, implementation=impl)).to(device)
        x = torch.rand(points, 3, device=device)
        for workload in ("train", "analytic normals"):
            r = _time(enc, x, workload, args.repeats)
            meaningful = cuda or impl == "torch"
            results.append({"encoding": impl, "workload": workload, "points": points, **r,
                            "speed_meaningful": meaningful})
            note = "" if meaningful else "  (Triton interpreter: not a speed)"
            print(f"{impl:>8} {workload:>17} {points:>8} {r['median_s'] * 1e3:>10.1f} "
                  f"{r['points_per_s'] / 1e6:>10.3f}{note}")
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak CUDA memory {peak:.2f} GiB")
    print(json.dumps({"benchmark": "hashgrid", "device": name, "torch": torch.__version__,
                      "levels": args.levels, "log2_table": args.log2_table, "results": results}))


if __name__ == "__main__":
    main()
