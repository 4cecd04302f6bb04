"""Which object does the micro text prior draw? For every shape of the world (in the robustness grid's
colour, the held-out pairs included) and seeds 0..N-1, the text job's reference image is drawn as the
pipeline draws it (same priors, same stage seed, the job's reference camera) and named by the world's
shape whose silhouette overlaps its mask best (robustness.reference_shape). A wrong name there is a job
that cannot come out right: the chain rebuilds its reference faithfully (BENCHMARKS.md, issue 29).

    OMP_NUM_THREADS=2 .venv/bin/python bench/text_prior_shapes.py                  # seeds 0-9, front camera
    .venv/bin/python bench/text_prior_shapes.py --elevation 25 --seeds 5
    .venv/bin/python bench/text_prior_shapes.py --option reference.generation.guidance_scale=12

About a second a drawing on two cores. Prints one line a shape, the share right, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter

from dreampolish.backend.micro import quality, robustness, world
from dreampolish.protocol.job import parse_option


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--elevation", type=float, default=0.0, help="the reference camera's elevation (0: the default front camera)")
    p.add_argument("--option", action="append", default=[], metavar="PATH=VALUE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    options = dict(parse_option(item) for item in args.option)
    colours = robustness._rotating_colours(list(world.SHAPES))
    cameras = [quality.world_camera(args.elevation)] if args.elevation else None
    per_shape: dict[str, list[str]] = {}
    for shape in world.SHAPES:
        cells = [robustness.Cell(colours[shape], shape, seed, args.elevation) for seed in range(args.seeds)]
        names = [robustness.reference_shape(c, world.object_prompt(c.colour, shape), cameras, options) for c in cells]
        per_shape[shape] = names
        drawn = ", ".join(f"{k} {v}" for k, v in Counter(names).most_common() if k != shape)
        print(f"{colours[shape]:7s} {shape:9s} {names.count(shape):2d}/{args.seeds}" + (f"   otherwise: {drawn}" if drawn else ""),
              flush=True)
    right = sum(names.count(s) for s, names in per_shape.items())
    total = sum(len(n) for n in per_shape.values())
    print(f"\nthe prompt's shape drawn: {right} of {total} ({100 * right / total:.0f} %)")
    print(json.dumps({"benchmark": "text_prior_shapes", "elevation": args.elevation, "options": options,
                      "right": right, "total": total, "drawn": per_shape}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
