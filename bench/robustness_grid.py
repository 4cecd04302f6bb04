"""The micro chain's robustness grid (issue 29): the share of cells whose mesh is nearest to the named shape
with the colour within the quality test's bound, and each cell's figures (backend/micro/robustness.py).

    OMP_NUM_THREADS=1 .venv/bin/python bench/robustness_grid.py --cells quick            # the issue's failures
    OMP_NUM_THREADS=1 .venv/bin/python bench/robustness_grid.py --cells grid --jobs 2    # every shape, seed, camera
    .venv/bin/python bench/robustness_grid.py --cells quick --option texture.inherit_colours=true  # a method row

A cell is one whole job (reference -> ... -> export) with the micro preset, about two minutes on one core.
`--jobs N` runs N cells at once, each in its own process with one torch thread (the figures do not depend on
it: every cell is seeded). Prints a line per cell as it ends, the success rate, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from concurrent.futures import ProcessPoolExecutor

from dreampolish.backend.micro import robustness
from dreampolish.protocol.job import parse_option

CELLS = {"grid": robustness.GRID, "quick": robustness.QUICK, "slice": robustness.SLICE, "demo": robustness.DEMO,
         "quick+demo": robustness.QUICK + [c for c in robustness.DEMO if c not in robustness.QUICK] + robustness.SLICE}


def _run(args: tuple[robustness.Cell, dict]) -> robustness.CellResult:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.ERROR)
    return robustness.run_cell(*args)


def _line(r: robustness.CellResult) -> str:
    mark = "right" if r.right else f"WRONG ({r.nearest})"
    return (f"{r.cell.name:48s} {mark:18s} reference={r.reference:8s} chamfer={r.chamfer_pct:.2f} iou={r.iou:.3f} "
            f"iou_overhead={r.iou_overhead:.3f} dE={r.colour_delta_e:.1f} s={r.seconds:.0f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", choices=sorted(CELLS), default="quick")
    p.add_argument("--only", nargs="+", default=None, help="only the cells whose names contain one of these")
    p.add_argument("--option", action="append", default=[], metavar="PATH=VALUE",
                   help="a preset option on top of the micro preset (repeatable), as the CLI's --option")
    p.add_argument("--jobs", type=int, default=1)
    args = p.parse_args(argv)
    options = dict(parse_option(item) for item in args.option)
    cells = [c for c in CELLS[args.cells] if not args.only or any(o in c.name for o in args.only)]
    results = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for r in pool.map(_run, [(c, options) for c in cells]):
            results.append(r)
            print(_line(r), flush=True)
    rate = robustness.success_rate(results)
    holes = [r.iou_overhead for r in results if r.cell.shape == "torus"]
    print(f"\nright: {sum(r.right for r in results)} of {len(results)} ({100 * rate:.0f} %)"
          + (f"; torus from above: IoU {min(holes):.3f}-{max(holes):.3f}" if holes else ""))
    print(json.dumps({"benchmark": "robustness_grid", "cells": args.cells, "options": options,
                      "success_rate": rate, "results": [r.as_dict() for r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
