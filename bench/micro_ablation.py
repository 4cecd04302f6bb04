"""Ablation of the method with the micro priors, on prompts held out of their training (the paper's
figures 6 and 7, in numbers): geometry from text SDS only, + Zero123, + polish; then the texture of the
full geometry by DSD (the method) against SDS, VSD and BSD.

    .venv/bin/python bench/micro_ablation.py [--prompts "a green torus" "a red cone"] [--seed 0]
    .venv/bin/python bench/micro_ablation.py --cheaper --rows "+ polish (full geometry; texture DSD, the method)" \
        "text encode at render size" "NeRF orientation on, analytic normals" \
        "NeRF orientation on, normals by forward differences"   # issue 28 item 3

Every row runs the whole chain (reference -> ... -> export) with the `micro` preset and the row's options;
the texture rows change only the texture's objective, so their geometry is the full row's. Figures (backend/micro/quality.py): Chamfer in % of the diagonal and
silhouette IoU over held-out views against the world's object, and ΔE*ab of the seen colour against
the prompt's. Prints one line per row and prompt, the mean per row, then one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from dreampolish.backend.micro import quality, world

GEOMETRY_ROWS: dict[str, dict] = {
    "text SDS only": {"guidance.zero123_weight": 0.0, "polish.steps": 1, "polish.normal_weight": 0.0,
                      "polish.consistency_weight": 0.0, "polish.laplacian_weight": 0.0},
    "+ Zero123": {"polish.steps": 1, "polish.normal_weight": 0.0, "polish.consistency_weight": 0.0,
                  "polish.laplacian_weight": 0.0},
    "+ polish (full geometry; texture DSD, the method)": {},
}
"""Geometry rows: options on the micro preset. "No polish" keeps the stage (the chain is fixed) with one
step and every loss at 0, so the mesh passes through unchanged."""

BUG_ROWS = {f"Zero123 {name} (a method bug)": rewrite for name, rewrite in quality.CAMERA_BUGS.items()}
"""Full geometry with a wrong camera given to Zero123 (backend/micro/quality.py CAMERA_BUGS). With text prompts
they leave the figures where they were (BENCHMARKS.md says why); the novel-view check in
tests/backend/micro/test_micro_models.py is what catches them."""

TEXTURE_ROWS: dict[str, dict] = {
    "texture SDS": {"texture.guidance.objective": "sds"},
    "texture VSD": {"texture.guidance.objective": "vsd"},
    "texture BSD": {"texture.guidance.objective": "bsd"},
}
"""Texture rows: the whole chain again with another texture objective. Every stage before the texture is
seeded by the job's seed, so the geometry is the full-geometry row's (its Chamfer and IoU repeat); that row
is the method's DSD texture. (A texture-only job on the polished mesh would not do: it has no reference
view, so its colours follow the prior's guidance alone.)"""


_ORIENTATION_ON = {"nerf.orientation_weight.start": 1.0, "nerf.orientation_weight.end": 10.0}
CHEAPER_ROWS: dict[str, dict] = {
    "text encode at render size": {"guidance.text.encode_size": "render"},
    "NeRF orientation on, analytic normals": _ORIENTATION_ON,
    "NeRF orientation on, normals by forward differences": {
        **_ORIENTATION_ON, "nerf.density.normals": "finite_difference", "nerf.density.normal_stencil": "forward",
        "nerf.density.normal_eps": 0.01},
    "texture from the geometry's colours (DreamCraft3D)": {"texture.inherit_colours": True},
    "reference and guidance alternating (DreamCraft3D, the GPU presets)": {
        "nerf.reference.alternate_every": 2, "neus.reference.alternate_every": 2, "texture.alternate_every": 2},
}
"""Cheaper choices where the method may not care (issue 28 item 3). The geometry stages' text prior encoding a
render at its own size instead of resizing it to the model's native side first (score_distillation.py
encode_size), against the full method's row. NeRF normals by DreamCraft3D's forward differences at 0.01 world
units instead of the analytic double backward (fields.py), against the same chain with analytic normals: the
micro preset, like tiny, sets the NeRF's orientation weight to 0, and no other micro NeRF loss asks for normals,
so both normal rows turn the orientation term on at the standard preset's ramp (1 -> 10). Reference-only and
guidance-only steps alternating in NeRF, NeuS and texture, as DreamCraft3D and the GPU presets do (half the
guidance work; issues 28 and 29), against the micro preset, which keeps both on every step at its small budgets.
The texture's colour field regressed onto the mesh's vertex colours first, with DreamCraft3D's lower texture
timesteps (TextureConfig.inherit_colours, issue 29), against the random start."""


def run_row(prompt: str, colour: str, shape: str, options: dict, seed: int,
            image_elevation: float | None = None) -> tuple[dict, quality.Generation]:
    picture = {}
    if image_elevation is not None:  # image to 3D: the world's picture of the object's front, with its camera
        image, camera = quality.world_picture(colour, shape, image_elevation)
        picture = {"image": image, "cameras": [camera]}
    with tempfile.TemporaryDirectory() as work:
        t = time.monotonic()
        gen = quality.generate(prompt, Path(work), options, seed=seed, **picture)
        seconds = time.monotonic() - t
    figures = {**quality.score(gen.final, colour, shape, gen.front_azimuth_deg).as_dict(), "seconds": round(seconds, 1)}
    return figures, gen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", nargs="+", default=[world.object_prompt(c, s) for c, s in world.HELD_OUT[:3]])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", nargs="+", default=None, help="only these rows (by name)")
    p.add_argument("--bug", action="store_true", help="add the wrong-camera rows (BUG_ROWS)")
    p.add_argument("--cheaper", action="store_true", help="add the cheaper-choice rows (CHEAPER_ROWS)")
    p.add_argument("--image-elevation", type=float, default=None,
                   help="image to 3D: each prompt's object as the world renders it from this elevation, with its camera")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    table: dict[str, list[dict]] = {}
    # (row, options, camera rewrite or None): the option rows, then the wrong-camera rows on the full method
    option_rows = {**GEOMETRY_ROWS, **TEXTURE_ROWS, **(CHEAPER_ROWS if args.cheaper else {})}
    rows = [(row, options, None) for row, options in option_rows.items() if not args.rows or row in args.rows]
    rows += [(row, {}, rewrite) for row, rewrite in BUG_ROWS.items()] if args.bug else []
    for prompt in args.prompts:
        colour, shape = world.parse_prompt(prompt)
        for row, options, rewrite in rows:
            with quality.wrong_camera(rewrite) if rewrite else contextlib.nullcontext():
                figures, _ = run_row(prompt, colour, shape, options, args.seed, args.image_elevation)
            table.setdefault(row, []).append(figures)
            print(f"{row:30s} {prompt:16s} " + " ".join(f"{k}={v:.3g}" for k, v in figures.items()), flush=True)
    print("\nmean over prompts:")
    means = {row: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} for row, rows in table.items()}
    for row, m in means.items():
        print(f"{row:28s} " + " ".join(f"{k}={v:.3g}" for k, v in m.items()))
    print(json.dumps({"benchmark": "micro_ablation", "prompts": args.prompts, "seed": args.seed,
                      "image_elevation": args.image_elevation, "rows": table, "means": means}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
