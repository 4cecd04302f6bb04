"""Several pictures with their cameras (issue 31): 1, 2 and 3 pictures of held-out objects through the micro
chain (backend/micro/multiview.py TABLE), each scored: nearest shape, Chamfer %, silhouette IoU over held-out
views and from above (60°-89°), ΔE of the seen colour.

    OMP_NUM_THREADS=1 .venv/bin/python bench/multiview.py                  # the whole table
    OMP_NUM_THREADS=1 .venv/bin/python bench/multiview.py --only torus     # the cells whose name holds "torus"
    OMP_NUM_THREADS=1 .venv/bin/python bench/multiview.py --only torus --seed 1 \
        --option nerf.reference.views=mean --option neus.reference.views=mean --option dmtet.reference.views=mean

Prints a line per cell as it ends (and appends it as JSON to --out when given), then the table in Markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging

from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.micro import multiview, quality
from dreampolish.protocol.job import parse_option


def bounding_radius(payload) -> float:
    """The radius of the mesh's bounding sphere about its bounding box's centre, in the job's object frame (the
    frame the pictures' cameras fix): what the score divides the mesh by (geometry.mesh.normalize_to_unit)."""
    vertices = TriMesh.from_payload(payload, apply_transform=False).vertices
    centre = 0.5 * (vertices.min(0).values + vertices.max(0).values)
    return float((vertices - centre).norm(dim=-1).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cells whose name holds this text")
    parser.add_argument("--cell", default="", help="run only the cell of exactly this name (a 2-picture cell's "
                        "name is part of its 3-picture cell's)")
    parser.add_argument("--out", default="", help="append each cell's figures as a JSON line to this file")
    parser.add_argument("--option", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                        help="a preset override for every cell (a method row)")
    parser.add_argument("--seed", type=int, default=None,
                        help="the job's seed for every cell (default: each cell's own, 0)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    rows = []
    for cell in multiview.TABLE:
        if (args.only and args.only not in cell.name) or (args.cell and args.cell != cell.name):
            continue
        if args.seed is not None:
            cell = dataclasses.replace(cell, seed=args.seed)
        r, gen = multiview.run_views_cell(cell, dict(args.option))
        # where the view from above is won or lost: each geometry stage's mesh, scored as the final one
        geometry = {stage: mesh for stage, mesh in gen.stages.items() if stage in ("nerf", "neus", "dmtet", "polish")}
        stages = {stage: round(quality.overhead_iou(mesh, cell.shape, gen.front_azimuth_deg), 3)
                  for stage, mesh in geometry.items()}
        # the score normalises each mesh to its bounding sphere: a bump that grows that sphere shrinks the rest
        radii = {stage: round(bounding_radius(mesh), 4) for stage, mesh in geometry.items()}
        row = {"cell": cell.name, "pictures": len(cell.views), "options": dict(args.option),
               "seed": cell.seed, "nearest": r.nearest,
               "chamfer_pct": r.chamfer_pct, "iou": r.iou, "iou_overhead": r.iou_overhead,
               "delta_e": r.colour_delta_e, "seconds": r.seconds, "iou_overhead_by_stage": stages,
               "bounding_radius_by_stage": radii}
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
        rows.append(row)
    print("\n| pictures | cell | nearest | Chamfer % | IoU | IoU from above | ΔE |\n|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['pictures']} | {row['cell']} | {row['nearest']} | {row['chamfer_pct']:.2f} | {row['iou']:.3f} | "
              f"{row['iou_overhead']:.3f} | {row['delta_e']:.1f} |")


if __name__ == "__main__":
    main()
