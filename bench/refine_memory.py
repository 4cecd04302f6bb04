"""Memory and time of refining an artist's mesh, by its face count.

    .venv/bin/python bench/refine_memory.py [--faces 50000 500000 2000000] [--grid 128] [--threads 1]

What is measured is the hand-over from the mesh to the DMTet grid (backend/stages/dmtet.py
`dmtet_from_mesh`: the mesh's signed distance at every grid vertex, backend/geometry/transitions.py):
the one step of a geometry refine whose cost grows with the mesh's face count (the stages after it
work on the grid and its own surface). The mesh is a torus (a hole, as ordinary objects have) of
about the asked face count, in the object frame the refine uses (`normalize_to_unit`); the grid is
the DMTet default's unless --grid says otherwise.

Each size runs in its own process. Figures: seconds; peak torch bytes (the most bytes of torch
storages live at once, counted by the dry run's LiveBytes); peak RSS of the process and its RSS just
before the hand-over (so numpy arrays and scipy's k-d trees count too). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time


def _torus(faces: int):
    import torch
    import trimesh
    from dreampolish.backend.geometry.mesh import TriMesh, normalize_to_unit

    # 2 * major * minor faces; sections in the ratio of the radii (0.33 / 0.14) keep triangles even
    minor = max(3, round(math.sqrt(faces / 2 / (0.33 / 0.14))))
    major = max(3, round(faces / 2 / minor))
    t = trimesh.creation.torus(0.33, 0.14, major_sections=major, minor_sections=minor)
    mesh, _ = normalize_to_unit(TriMesh(torch.tensor(t.vertices, dtype=torch.float32), torch.tensor(t.faces)))
    return mesh


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure_one(faces: int, grid_resolution: int) -> dict[str, float]:
    """The hand-over of one mesh, in this process."""
    import torch
    from dreampolish.backend.commands.dryrun import LiveBytes
    from dreampolish.backend.geometry.tets import make_tet_grid
    from dreampolish.backend.geometry.transitions import mesh_signed_distance
    from dreampolish.backend.stages.dmtet import DmtetConfig

    mesh = _torus(faces)
    cfg = DmtetConfig()
    grid = make_tet_grid(grid_resolution, cfg.grid_bound)
    rss_before = _rss_bytes()
    counter = LiveBytes()
    started = time.perf_counter()
    with torch.no_grad(), counter:
        sdf = mesh_signed_distance(mesh, grid.vertices, grid_resolution + 1, grid.spacing)
    seconds = time.perf_counter() - started
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"faces": mesh.num_faces, "grid_vertices": int(grid.vertices.shape[0]), "seconds": seconds,
            "peak_torch_gb": counter.peak / 1e9, "rss_before_gb": rss_before / 1e9, "peak_rss_gb": peak_rss / 1e9,
            "inside_fraction": float((sdf < 0).float().mean())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, nargs="+", default=[50_000, 500_000, 2_000_000])
    parser.add_argument("--grid", type=int, default=None, help="grid resolution (DMTet's default if not given)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed to one size")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.grid is None:
        from dreampolish.backend.stages.dmtet import DmtetConfig

        args.grid = DmtetConfig().grid_resolution
    if args.one is not None:
        print(json.dumps(measure_one(args.one, args.grid)))
        return 0
    rows = []
    print(f"{'faces':>10} {'grid verts':>11} {'seconds':>8} {'peak torch GB':>14} {'RSS before GB':>14} "
          f"{'peak RSS GB':>12}")
    for faces in args.faces:
        cmd = [sys.executable, __file__, "--one", str(faces), "--grid", str(args.grid), "--threads", str(args.threads)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=True)
        except subprocess.TimeoutExpired:
            print(f"{faces:>10} not measured: over {args.timeout:g} s")
            continue
        except subprocess.CalledProcessError as exc:
            print(f"{faces:>10} failed: {exc.stderr.strip().splitlines()[-1:]}")
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['faces']:>10} {row['grid_vertices']:>11} {row['seconds']:>8.1f} {row['peak_torch_gb']:>14.3f} "
              f"{row['rss_before_gb']:>14.3f} {row['peak_rss_gb']:>12.3f}", flush=True)
    print(json.dumps({"bench": "refine_memory", "grid": args.grid, "threads": args.threads, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
