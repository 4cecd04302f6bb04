"""The remeshers compared on our own polished meshes (issue 30): for each mesh (an .npz of `vertices` and
`faces`, e.g. a micro job's polish result) and each remesher, the faces reached against the budget, the share
of quads, the share of vertices of valence 4, the symmetric Chamfer distance and the Hausdorff distance to the
polished surface (both as a fraction of its bounding-box diagonal, 20k area-uniform samples each way), and
the time. Each remesher runs as the finishing stage runs it (backend/geometry/remesh.py: its own process,
a time limit), without the fallback. Prints a Markdown table and one JSON line.

    .venv/bin/python bench/remesh_compare.py MESH.npz [MESH.npz ...] [--budget 3000] [--time-limit 120]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.geometry.metrics import bbox_diagonal, chamfer_fraction, sample_surface
from dreampolish.backend.geometry.remesh import RemeshFailed, quadric_to_budget, remesh_to_budget
from scipy.spatial import cKDTree


def hausdorff_fraction(pred: TriMesh, target: TriMesh, n: int = 20000) -> float:
    a, _ = sample_surface(pred, n, torch.Generator().manual_seed(0))
    b, _ = sample_surface(target, n, torch.Generator().manual_seed(1))
    return float(max(cKDTree(b).query(a)[0].max(), cKDTree(a).query(b)[0].max()) / bbox_diagonal(target))


def tri(vertices: np.ndarray, faces: np.ndarray) -> TriMesh:
    return TriMesh(torch.as_tensor(np.asarray(vertices, np.float32)), torch.as_tensor(np.asarray(faces, np.int64)))


def measure(name: str, method: str, v: np.ndarray, f: np.ndarray, budget: int, limit: float) -> dict:
    t0 = time.perf_counter()
    try:
        if method == "quadric":
            mesh, notes = quadric_to_budget(v, f, budget, quads=True), []
        elif method == "quadric_triangles":
            mesh, notes = quadric_to_budget(v, f, budget, quads=False), []
        else:
            out = remesh_to_budget(v, f, budget, quads=True, method=method, time_limit_s=limit)
            if out.fell_back:
                raise RemeshFailed(out.notes[-2])
            mesh, notes = out.mesh, out.notes
    except RemeshFailed as exc:
        return {"mesh": name, "method": method, "failed": str(exc), "time_s": round(time.perf_counter() - t0, 1)}
    seconds = time.perf_counter() - t0
    low, high = tri(mesh.vertices, mesh.triangles()), tri(v, f)
    return {"mesh": name, "method": method, "faces": mesh.num_faces,
            "budget_error_pct": round(100 * (mesh.num_faces - budget) / budget, 1),
            "quads_pct": round(100 * mesh.quad_share, 1), "valence4_pct": round(100 * mesh.valence_share(4), 1),
            "chamfer": round(chamfer_fraction(low, high), 5), "hausdorff": round(hausdorff_fraction(low, high), 4),
            "time_s": round(seconds, 1), "tries": len([n for n in notes if "try" in n])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("meshes", nargs="+", type=Path)
    p.add_argument("--budget", type=int, default=3000)
    p.add_argument("--time-limit", type=float, default=120.0)
    p.add_argument("--methods", default="instant_meshes,quadriflow,quadric,quadric_triangles")
    args = p.parse_args()
    rows = []
    for path in args.meshes:
        d = np.load(path)
        for method in args.methods.split(","):
            rows.append(measure(path.stem, method, d["vertices"], d["faces"], args.budget, args.time_limit))
            print(rows[-1], file=sys.stderr, flush=True)
    print(f"| mesh | remesher | faces (budget {args.budget}) | off by | quads | valence 4 | Chamfer | Hausdorff | time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "failed" in r:
            print(f"| {r['mesh']} | {r['method']} | failed: {r['failed']} | | | | | | {r['time_s']} s |")
        else:
            print(f"| {r['mesh']} | {r['method']} | {r['faces']} | {r['budget_error_pct']:+.1f} % | {r['quads_pct']} % | "
                  f"{r['valence4_pct']} % | {r['chamfer']:.5f} | {r['hausdorff']:.4f} | {r['time_s']} s |")
    print(json.dumps({"benchmark": "remesh_compare", "budget": args.budget, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
