"""PyTorch mesh rasteriser speed on the CPU: forward + backward of a typical fitting loss.

    .venv/bin/python bench/raster_cpu.py [--faces 20000] [--size 256] [--views 1] [--threads 2]

Prints the median and best time of one rasterise + mask/depth/normal loss + backward. The
target is well under 0.2 s for 20k triangles at 256 x 256 on two cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import trimesh
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.render.cameras import orbit_cameras
from dreampolish.backend.render.rasterize import MeshRasterizer


def sphere_with_faces(n_faces: int) -> TriMesh:
    """An icosphere (radius 0.5) with at least n_faces triangles."""
    subdivisions = 0
    while 20 * 4**subdivisions < n_faces:
        subdivisions += 1
    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.5)
    return TriMesh(torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=20000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--views", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    mesh = sphere_with_faces(args.faces)
    cams = orbit_cameras(torch.linspace(-10, 45, args.views), torch.linspace(0, 300, args.views),
                         torch.full((args.views,), 3.8), torch.full((args.views,), 20.0), args.size, args.size)
    rasterizer = MeshRasterizer("torch")
    vertices = mesh.vertices.clone().requires_grad_(True)
    times, cpu_times = [], []
    for _ in range(args.repeats + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = rasterizer.rasterize(mesh.with_vertices(vertices), cams)
        loss = out.mask.mean() + out.depth.mean() + out.normal.mean()
        loss.backward()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    # The first call pays for one-off allocations. CPU time (all threads) shows the work done
    # even when other processes share the cores; wall time is what a caller waits.
    times, cpu_times = times[1:], cpu_times[1:]
    covered = int((out.tri_id >= 0).sum())
    print(f"faces {mesh.num_faces}, {args.views} view(s) at {args.size}x{args.size}, {covered} covered pixels, "
          f"{args.threads} thread(s)")
    print(f"forward+backward wall: median {1000 * statistics.median(times):.1f} ms, best {1000 * min(times):.1f} ms")
    print(f"forward+backward CPU time: median {1000 * statistics.median(cpu_times):.1f} ms")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
