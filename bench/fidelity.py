"""Geometry fidelity of NeRF -> NeuS -> DMTet against the oracle on standard targets.

    .venv/bin/python bench/fidelity.py [--preset tiny] [--targets sphere torus suzanne] [--device cpu]

Targets are made here: an icosphere, a torus, and Blender's Suzanne (exported by the bpy
module of .venv-blender in a subprocess; without that environment a non-convex "peanut"
made by marching cubes on a smooth union of spheres stands in). Prints one line of figures
per stage and target, then one JSON line with everything.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import trimesh
from dreampolish.backend.commands.fidelity import PRESETS, run_fidelity
from dreampolish.backend.geometry.fields import grid_points
from dreampolish.backend.geometry.marching import marching_cubes
from dreampolish.backend.geometry.mesh import TriMesh, load_mesh

REPO = Path(__file__).resolve().parents[1]
BLENDER_PYTHON = REPO / ".venv-blender" / "bin" / "python"

_SUZANNE_SCRIPT = """
import sys, bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.mesh.primitive_monkey_add(size=1.0)
bpy.ops.wm.obj_export(filepath=sys.argv[-1], export_selected_objects=True, export_materials=False,
                      forward_axis="Y", up_axis="Z", export_triangulated_mesh=True)
"""


def _from_trimesh(t: trimesh.Trimesh, color: tuple[float, float, float]) -> TriMesh:
    v = torch.tensor(t.vertices, dtype=torch.float32)
    return TriMesh(v, torch.tensor(t.faces), vertex_colors=torch.tensor(color).expand(v.shape[0], 3).clone())


def suzanne() -> TriMesh:
    """Blender's Suzanne in Blender's frame (Z up), or the peanut when bpy is not installed."""
    if BLENDER_PYTHON.exists():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "suzanne.obj"
            res = subprocess.run([str(BLENDER_PYTHON), "-c", _SUZANNE_SCRIPT, str(path)], capture_output=True,
                                 text=True, timeout=300)
            if res.returncode == 0 and path.exists():
                mesh = load_mesh(path)
                return TriMesh(mesh.vertices, mesh.faces,
                               vertex_colors=torch.tensor([0.8, 0.6, 0.3]).expand(mesh.num_vertices, 3).clone())
            logging.warning("Suzanne export failed (%s); using the peanut", res.stderr[-300:])
    return peanut()


def peanut() -> TriMesh:
    """A non-convex target: smooth union of two spheres with a waist, and a bump."""
    p = grid_points(0.7, 64)

    def ball(c, r):
        return (p - torch.tensor(c)).norm(dim=-1) - r

    d1, d2, d3 = ball((0.0, -0.2, 0.0), 0.25), ball((0.0, 0.22, 0.05), 0.2), ball((0.18, 0.0, 0.15), 0.1)
    k = 0.05  # polynomial smooth minimum (Quilez)

    def smin(a, b):
        h = (0.5 + 0.5 * (b - a) / k).clamp(0, 1)
        return b + (a - b) * h - k * h * (1 - h)

    v, f = marching_cubes(smin(smin(d1, d2), d3).numpy(), 0.7)  # ~8k faces at this lattice
    return _from_trimesh(trimesh.Trimesh(v, f), (0.3, 0.6, 0.8))


TARGETS = {
    "sphere": lambda: _from_trimesh(trimesh.creation.icosphere(4), (0.9, 0.3, 0.2)),
    "torus": lambda: _from_trimesh(trimesh.creation.torus(0.35, 0.15, major_sections=64, minor_sections=32),
                                   (0.2, 0.7, 0.3)),
    "suzanne": suzanne,
    "peanut": peanut,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--targets", nargs="+", choices=sorted(TARGETS), default=["sphere", "torus", "suzanne"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    results = {}
    start = time.perf_counter()
    for name in args.targets:
        report = run_fidelity(TARGETS[name](), PRESETS[args.preset](), args.device)
        results[name] = report
        for stage, fig in report["stages"].items():
            print(f"{name:8s} {stage:6s} chamfer {100 * fig['chamfer_fraction']:5.2f}% of diagonal  "
                  f"normal consistency {fig['normal_consistency']:.3f}  silhouette IoU {fig['silhouette_iou']:.3f}  "
                  f"{fig['seconds']:6.1f} s  {fig['steps']} steps", flush=True)
    total = time.perf_counter() - start
    print(f"total {total:.1f} s on {args.device} with {args.threads} threads")
    print(json.dumps({"bench": "fidelity", "preset": args.preset, "device": args.device, "threads": args.threads,
                      "seconds_total": total, "targets": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
