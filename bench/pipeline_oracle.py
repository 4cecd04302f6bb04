"""Polish and texture fidelity with the oracle in place of the priors (no pretrained weights).

  .venv/bin/python bench/pipeline_oracle.py [--device cpu|cuda] [--polish-steps N] [--texture-steps N]

Target: a box with sharp edges and a colour pattern on its vertices (object frame, radius 0.5).
- Polish: the box with its edges rounded off (Laplacian smoothing, what DMTet gives from a blurry prior)
  is polished with the target's normals as the estimator; normal consistency against the target before,
  after, and with the plain normal-smoothness loss (the ablation).
- Texture: the colour field is fitted on the target's geometry with the oracle's albedo as guidance,
  baked into a dilated xatlas atlas; texture PSNR of the baked atlas (and of the field itself) against
  the target's albedo over eight views around the object, next to a flat grey texture.
Prints the figures and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch
import trimesh
from dreampolish.backend.geometry.fields import FieldConfig
from dreampolish.backend.geometry.hashgrid import HashGridConfig
from dreampolish.backend.geometry.mesh import TriMesh, normalize_to_unit
from dreampolish.backend.geometry.metrics import normal_consistency
from dreampolish.backend.guidance.oracle import OracleGuidance, OracleNormals, OracleTarget
from dreampolish.backend.render.cameras import orbit_cameras
from dreampolish.backend.render.rasterize import MeshRasterizer
from dreampolish.backend.stages.base import LoggingReporter
from dreampolish.backend.stages.polish import PolishConfig, run_polish
from dreampolish.backend.stages.texture import (
    SurfaceViews,
    TextureConfig,
    run_texture,
    shade_albedo,
)
from dreampolish.backend.stages.texture_bake import bake_texture


def target_box(subdivisions: int) -> tuple[TriMesh, TriMesh]:
    box = trimesh.creation.box((1.0, 1.0, 0.6))
    for _ in range(subdivisions):
        box = box.subdivide()
    rounded = box.copy()
    trimesh.smoothing.filter_laplacian(rounded, iterations=10)

    def mesh(tm: trimesh.Trimesh) -> TriMesh:
        return normalize_to_unit(TriMesh(torch.tensor(tm.vertices, dtype=torch.float32),
                                         torch.tensor(tm.faces, dtype=torch.int64)))[0]

    target, start = mesh(box), mesh(rounded)
    v = target.vertices
    colors = 0.5 + 0.4 * torch.sin(6.0 * v + torch.tensor([0.0, 2.0, 4.0]))
    return TriMesh(v, target.faces, vertex_colors=colors), start


def eval_cameras(size: int, device: str):
    return orbit_cameras(torch.tensor([20.0, -5.0] * 4), torch.arange(8) * 45.0 + 10.0, torch.full((8,), 3.2),
                         torch.full((8,), 20.0), size, size).to(device)


def psnr(got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor) -> float:
    m = (mask > 0.99).expand_as(got)
    mse = float(((got - want) ** 2)[m].mean())
    return 10 * np.log10(1.0 / max(mse, 1e-10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--polish-steps", type=int, default=150)
    ap.add_argument("--texture-steps", type=int, default=300)
    ap.add_argument("--size", type=int, default=128, help="render side of training views")
    ap.add_argument("--atlas", type=int, default=512)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = args.device
    raster = MeshRasterizer("auto")
    target, rounded = target_box(4)
    target, rounded = target.to(device), rounded.to(device)
    figures: dict[str, float] = {}

    # Polish: normal consistency before / after / smoothness ablation.
    t0 = time.perf_counter()
    cfg = PolishConfig(steps=args.polish_steps, lr=2e-3, render_size=args.size, batch_size=4, view_pool=32)
    polished = run_polish(cfg, rounded, OracleNormals(target, raster), None, LoggingReporter("polish", 50),
                          rasterizer=raster, generator=torch.Generator().manual_seed(0), device=device)
    smoothed = run_polish(PolishConfig(steps=args.polish_steps, lr=2e-3, loss="smoothness"), rounded, None, None,
                          LoggingReporter("polish", 50), rasterizer=raster, device=device)
    figures["polish_seconds"] = time.perf_counter() - t0
    figures["nc_dmtet_like"] = normal_consistency(rounded, target)
    figures["nc_polished"] = normal_consistency(polished, target)
    figures["nc_smoothness_ablation"] = normal_consistency(smoothed, target)

    # Texture: fit, bake, compare.
    t0 = time.perf_counter()
    geometry = TriMesh(target.vertices, target.faces)
    field = FieldConfig(grid=HashGridConfig(n_levels=12, log2_hashmap_size=16, base_resolution=8,
                                            per_level_scale=1.4, start_levels=12), hidden_dim=32)
    tcfg = TextureConfig(steps=args.texture_steps, lr=2e-2, render_size=args.size, batch_size=2, field=field,
                         camera_distance=3.2, reference_weight=0.0, view_pool=48, atlas_size=args.atlas)
    state = run_texture(tcfg, geometry, OracleGuidance(target, raster), None, LoggingReporter("texture", 100),
                        rasterizer=raster, generator=torch.Generator().manual_seed(0), device=device)
    baked = bake_texture(tcfg, state)
    figures["texture_seconds"] = time.perf_counter() - t0
    cams = eval_cameras(256, device)
    want = OracleTarget(target, raster).render(cams)
    textured = TriMesh(geometry.vertices, geometry.faces, uvs=torch.as_tensor(baked.uvs, device=device))
    got = OracleTarget(textured, raster, torch.as_tensor(baked.base_color, device=device)).render(cams)
    grey = OracleTarget(textured, raster, torch.full_like(torch.as_tensor(baked.base_color), 0.7).to(device)).render(cams)
    with torch.no_grad():
        field_rgb = shade_albedo(state.color_field, SurfaceViews.rasterize(geometry, cams, raster),
                                 torch.zeros(3, device=device))
    figures["texture_psnr_baked_db"] = psnr(got.albedo, want.albedo, want.mask)
    figures["texture_psnr_field_db"] = psnr(field_rgb, want.albedo, want.mask)
    figures["texture_psnr_grey_db"] = psnr(grey.albedo, want.albedo, want.mask)

    print(f"device {device}, target box {target.num_faces} faces")
    print(f"polish ({args.polish_steps} steps): normal consistency {figures['nc_dmtet_like']:.4f} -> "
          f"{figures['nc_polished']:.4f} (smoothness ablation {figures['nc_smoothness_ablation']:.4f}), "
          f"{figures['polish_seconds']:.1f} s")
    print(f"texture ({args.texture_steps} steps, {args.atlas}^2 atlas): PSNR baked {figures['texture_psnr_baked_db']:.2f} dB, "
          f"field {figures['texture_psnr_field_db']:.2f} dB, flat grey {figures['texture_psnr_grey_db']:.2f} dB, "
          f"{figures['texture_seconds']:.1f} s")
    print(json.dumps({"bench": "pipeline_oracle", "device": device, **{k: round(v, 4) for k, v in figures.items()}}))


if __name__ == "__main__":
    main()
