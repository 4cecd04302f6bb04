"""How many triangles the DMTet grid makes of an object, for the face budget's bound at submit (issue 30,
stages/finish.py FACES_PER_CELL_AREA): marching tetrahedra on the grid (bound 0.7, as every preset's) at each
resolution, of the object frame's sphere (radius 0.5: the convex object of the most surface in the frame) and of
the micro world's shapes (`frame_sphere` the exact sphere, `sphere` the world's polygonal one; each normalised to the frame, signed distance as DMTet's refine takes a mesh), after
the extraction's clean-up. Prints, per resolution, the counts and the sphere's triangles per cell face of area
(h², h the cell's edge), then one JSON line.

    .venv/bin/python bench/dmtet_face_counts.py [--resolutions 8 16 32 64 128] [--shapes cube torus ...]
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from dreampolish.backend.geometry.marching import marching_tetrahedra
from dreampolish.backend.geometry.mesh import TriMesh, clean_mesh
from dreampolish.backend.geometry.tets import make_tet_grid
from dreampolish.backend.geometry.transitions import mesh_signed_distance
from dreampolish.backend.micro import world

GRID_BOUND = 0.7


def faces_of(grid, sdf) -> int:
    v, f = marching_tetrahedra(grid.vertices, sdf, grid.tets)
    return clean_mesh(TriMesh(v, f)).num_faces


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolutions", nargs="+", type=int, default=[8, 16, 24, 32, 48, 64, 96, 128])
    p.add_argument("--shapes", nargs="*", default=[], help="micro world shapes, at resolutions up to 32")
    args = p.parse_args(argv)
    rows = []
    for res in args.resolutions:
        grid = make_tet_grid(res, GRID_BOUND)
        row = {"resolution": res, "frame_sphere": faces_of(grid, grid.vertices.norm(dim=-1) - 0.5)}
        row["per_cell_area"] = round(row["frame_sphere"] * grid.spacing**2 / math.pi, 3)
        for shape in args.shapes if res <= 32 else []:
            row[shape] = faces_of(grid, mesh_signed_distance(world.shape_mesh(shape), grid.vertices, res + 1,
                                                             grid.spacing))
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    print(json.dumps({"benchmark": "dmtet_face_counts", "grid_bound": GRID_BOUND, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
