"""PBR bake with the oracle: how well the baked maps recover a target's known materials.

  .venv/bin/python bench/materials_oracle.py [--device cpu|cuda] [--steps N] [--atlas N] [--views N]

Target (tests/support/materials_target.py): a sphere of three materials (polished gold, rough red
plastic, satin blue paint; azimuth sectors) under one known light. The texture stage fits its colour field
to the target's LIT look (the oracle prior shows it lit, as a 2D prior's images carry lighting); the bake
renders the result from the decomposition views, decomposes them with the oracle decomposer (which knows
the target's materials) and fuses the estimates per texel. Mean absolute error per map over the atlas's
texels, against the target's material at each texel's surface point; and the lit base colour's error
against the albedo, for comparison. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/ holds the target

from dreampolish.backend import bake  # noqa: E402
from dreampolish.backend.geometry.fields import FieldConfig  # noqa: E402
from dreampolish.backend.geometry.hashgrid import HashGridConfig  # noqa: E402
from dreampolish.backend.geometry.mesh import TriMesh  # noqa: E402
from dreampolish.backend.guidance.intrinsics import OracleDecomposer  # noqa: E402
from dreampolish.backend.guidance.oracle import OracleGuidance  # noqa: E402
from dreampolish.backend.render.rasterize import MeshRasterizer  # noqa: E402
from dreampolish.backend.stages.base import LoggingReporter  # noqa: E402
from dreampolish.backend.stages.texture import MaterialBakeConfig, TextureConfig, run_texture  # noqa: E402
from dreampolish.backend.stages.texture_bake import bake_texture  # noqa: E402

from tests.support.materials_target import lit_colour, material_at  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--atlas", type=int, default=256)
    parser.add_argument("--views", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    raster = MeshRasterizer("torch")
    s = trimesh.creation.icosphere(4, radius=0.45)
    sphere = TriMesh(torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces, dtype=torch.int64))
    lit_target = TriMesh(sphere.vertices, sphere.faces, vertex_colors=lit_colour(sphere.vertices))
    field = FieldConfig(grid=HashGridConfig(n_levels=8, log2_hashmap_size=15, base_resolution=8,
                                            per_level_scale=1.6, start_levels=8), hidden_dim=32)
    cfg = TextureConfig(steps=args.steps, lr=3e-2, render_size=96, field=field, camera_distance=3.2, view_pool=24,
                        atlas_size=args.atlas, reference_weight=0.0, elevation_range_deg=(-40.0, 40.0),
                        pbr=MaterialBakeConfig(views=args.views, render_size=256))
    t0 = time.perf_counter()
    state = run_texture(cfg, sphere, OracleGuidance(lit_target, raster), None, LoggingReporter("texture"),
                        rasterizer=raster, device=device, generator=torch.Generator().manual_seed(0))
    t1 = time.perf_counter()
    baked = bake_texture(cfg, state, decomposer=OracleDecomposer(sphere, raster, material=material_at),
                         rasterizer=raster)
    t2 = time.perf_counter()
    coverage = bake.rasterize_uv(baked.uvs, args.atlas, args.atlas)
    points = bake.texel_attribute(coverage, sphere.faces.numpy(), sphere.vertices.numpy())
    truth = material_at(torch.as_tensor(points)).numpy()
    filled = coverage.filled
    errors = {
        "albedo": float(np.abs(baked.base_color[filled] - truth[:, :3]).mean()),
        "lit_base_color": float(np.abs(baked.lit_base_color[filled] - truth[:, :3]).mean()),
        "roughness": float(np.abs(baked.roughness_metallic[filled][:, 1] - truth[:, 3]).mean()),
        "metallic": float(np.abs(baked.roughness_metallic[filled][:, 2] - truth[:, 4]).mean()),
    }
    print(f"target: 3-material sphere, {sphere.num_faces} faces; atlas {args.atlas}², {args.views} views; "
          f"texture {args.steps} steps {t1 - t0:.1f} s, material bake {t2 - t1:.1f} s")
    print("| map | mean abs error |")
    print("|---|---|")
    for name, value in errors.items():
        print(f"| {name} | {value:.4f} |")
    print(json.dumps({"benchmark": "materials_oracle", "device": str(device), "atlas": args.atlas,
                      "views": args.views, "texture_steps": args.steps, "errors": errors,
                      "texture_s": round(t1 - t0, 2), "bake_s": round(t2 - t1, 2)}))


if __name__ == "__main__":
    main()
