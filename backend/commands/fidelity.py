"""`dreampolish-backend fidelity --target FILE --out REPORT.json [--preset tiny]`

Runs NeRF -> NeuS -> DMTet against the oracle guidance (guidance/oracle.py: the target
mesh rendered at every sampled camera, plus its render at the reference camera as the
reference view) and reports, per stage, the fidelity of the extracted mesh to the target:
Chamfer distance as a fraction of the target's bounding-box diagonal, normal consistency,
silhouette IoU on held-out views (cameras never used in training), seconds and steps.

The target is first moved into the object frame (bbox centre at the origin,
bounding-sphere radius 0.5, Z up), where the stages work; the stage meshes are compared
to it in that frame, without re-normalising them.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ..geometry.fields import FieldConfig
from ..geometry.hashgrid import HashGridConfig
from ..geometry.mesh import TriMesh, load_mesh, normalize_to_unit
from ..geometry.metrics import chamfer_fraction, normal_consistency, silhouette_iou
from ..guidance.oracle import OracleGuidance, OracleWeights, oracle_reference
from ..render.cameras import ViewSampler
from ..render.rasterize import MeshRasterizer
from ..render.volume import VolumeRenderConfig
from ..stages.base import LoggingReporter, Ramp, ReferenceWeights, ResolutionSchedule
from ..stages.dmtet import DmtetConfig, run_dmtet
from ..stages.nerf import NerfConfig, run_nerf
from ..stages.neus import NeusConfig, run_neus

log = logging.getLogger(__name__)

PresetName = Literal["tiny", "standard"]


@dataclass
class FidelityConfig:
    nerf: NerfConfig
    """NeRF stage settings."""
    neus: NeusConfig
    """NeuS stage settings."""
    dmtet: DmtetConfig
    """DMTet stage settings."""
    oracle: OracleWeights = field(default_factory=OracleWeights)
    """Weights of the oracle's opacity / normal / albedo terms."""
    reference_resolution: int = 128
    """Side of the oracle's reference image."""
    held_out_views: int = 8
    """Held-out cameras for the silhouette IoU."""
    held_out_resolution: int = 128
    """Their image side."""
    metric_samples: int = 20000
    """Surface samples per mesh for Chamfer and normal consistency."""
    seed: int = 0
    """Seed of every random choice (views, initialisation)."""


def _fidelity_views() -> ViewSampler:
    # the oracle sees every side, so views cover the whole sphere of directions but the poles
    return ViewSampler(elevation_range=(-60.0, 75.0), distance_range=(3.8, 3.8), fovy_range=(20.0, 20.0))


def tiny_preset() -> FidelityConfig:
    """Small enough for a 2-core CPU: a few hundred cheap steps per target."""
    views = _fidelity_views()
    grid = HashGridConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=18, base_resolution=16,
                          per_level_scale=1.5, start_levels=2, unlock_until=2 / 3)
    small_field = FieldConfig(grid=grid, hidden_dim=32, n_hidden_layers=1, n_feature_dims=7, normal_eps=0.01)
    render = VolumeRenderConfig(n_samples=24, occupancy_resolution=32)
    reference = ReferenceWeights(rgb=Ramp(1.0), mask=Ramp(1.0), depth=Ramp(0.0), resolution=24)
    nerf = NerfConfig(
        steps=60, batch_size=1, resolution=ResolutionSchedule(24), views=views, density=small_field,
        render=render, lr_encoding=3e-2, lr_network=3e-3, reference=reference,
        orientation_weight=Ramp(0.0), sparsity_weight=Ramp(0.0), opacity_weight=Ramp(0.001),
        occupancy_every=8, occupancy_warmup=0, occupancy_density=0.5, iso_density=1.0, mesh_resolution=64,
    )
    neus = NeusConfig(
        steps=30, batch_size=1, resolution=ResolutionSchedule(24), views=views,
        sdf=FieldConfig(grid=HashGridConfig(n_levels=4, log2_hashmap_size=18, base_resolution=16,
                                            per_level_scale=1.5, start_levels=4),
                        hidden_dim=32, n_hidden_layers=1, n_feature_dims=7, normal_eps=0.01),
        render=render, lr_encoding=1e-2, lr_network=1e-3, sharpness=Ramp(100.0, 200.0),
        cos_anneal=Ramp(1.0), reference=reference, eikonal_weight=Ramp(0.01), eikonal_points=2048,
        occupancy_every=8, init_steps=60, init_batch=2048, init_resolution=64, mesh_resolution=64,
    )
    dmtet = DmtetConfig(
        steps=40, batch_size=1, resolution=ResolutionSchedule(64), views=views, grid_resolution=32,
        color=FieldConfig(grid=HashGridConfig(n_levels=4, log2_hashmap_size=18, base_resolution=16,
                                              per_level_scale=1.5, start_levels=4), hidden_dim=32),
        lr_sdf=2e-3, lr_deform=1e-2, lr_color=1e-2,
        reference=ReferenceWeights(rgb=Ramp(1.0), mask=Ramp(1.0), depth=Ramp(0.0), resolution=64),
        normal_consistency_weight=Ramp(0.02, 0.002), color_init_steps=50, rasterizer="auto",
    )
    return FidelityConfig(nerf=nerf, neus=neus, dmtet=dmtet, reference_resolution=64, held_out_resolution=96)


def standard_preset() -> FidelityConfig:
    """The method's stage settings (METHOD.md), for a GPU."""
    views = _fidelity_views()
    return FidelityConfig(nerf=NerfConfig(views=views), neus=NeusConfig(views=views), dmtet=DmtetConfig(views=views),
                          reference_resolution=512, held_out_resolution=256)


PRESETS = {"tiny": tiny_preset, "standard": standard_preset}


HELD_OUT_VIEWS = ViewSampler(elevation_range=(-45.0, 60.0), distance_range=(3.8, 3.8), fovy_range=(20.0, 20.0))
"""Where the held-out cameras come from; drawn with a seed the training views never use."""


def stage_figures(mesh: TriMesh, target: TriMesh, cfg: FidelityConfig, rasterizer: MeshRasterizer,
                  device) -> dict[str, float]:
    cams = HELD_OUT_VIEWS.sample(
        cfg.held_out_views, cfg.held_out_resolution, cfg.held_out_resolution,
        torch.Generator().manual_seed(cfg.seed + 7919), device)
    return {
        "chamfer_fraction": chamfer_fraction(mesh, target, cfg.metric_samples, cfg.seed),
        "normal_consistency": normal_consistency(mesh, target, cfg.metric_samples, cfg.seed),
        "silhouette_iou": silhouette_iou(mesh.to(device), target.to(device), cams, rasterizer),
        "faces": mesh.num_faces,
    }


def run_fidelity(target: TriMesh, cfg: FidelityConfig, device: torch.device | str = "cpu") -> dict:
    """Run the chain on `target` and return the report (see the module docstring)."""
    target, _ = normalize_to_unit(target.to(device))
    rasterizer = MeshRasterizer(cfg.dmtet.rasterizer)
    guidance = OracleGuidance(target, rasterizer, cfg.oracle)
    ref_cam = cfg.nerf.views.reference(cfg.reference_resolution, cfg.reference_resolution, device)
    reference = oracle_reference(target, ref_cam, rasterizer)
    gen = torch.Generator().manual_seed(cfg.seed)
    report: dict = {"stages": {}}
    start = time.perf_counter()

    nerf = run_nerf(cfg.nerf, guidance, reference, LoggingReporter("nerf", 10), generator=gen, device=device)
    report["stages"]["nerf"] = {**stage_figures(nerf.extract_mesh(normalize=False), target, cfg, rasterizer, device),
                                "seconds": nerf.seconds, "steps": nerf.steps_done}
    neus = run_neus(cfg.neus, nerf, guidance, reference, LoggingReporter("neus", 10), generator=gen, device=device)
    report["stages"]["neus"] = {**stage_figures(neus.extract_mesh(normalize=False), target, cfg, rasterizer, device),
                                "seconds": neus.seconds, "steps": neus.steps_done}
    dmtet = run_dmtet(cfg.dmtet, neus, guidance, reference, LoggingReporter("dmtet", 10), generator=gen, device=device)
    report["stages"]["dmtet"] = {**stage_figures(dmtet.extract_mesh(normalize=False), target, cfg, rasterizer,
                                                 device), "seconds": dmtet.seconds, "steps": dmtet.steps_done}
    report["seconds_total"] = time.perf_counter() - start
    report["device"] = str(device)
    return report


def _run(args: argparse.Namespace) -> int:
    target = load_mesh(args.target)
    cfg = PRESETS[args.preset]()
    cfg.seed = args.seed
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    report = run_fidelity(target, cfg, device)
    report["target"] = str(args.target)
    report["preset"] = args.preset
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    for stage, fig in report["stages"].items():
        print(f"{stage:6s} chamfer {100 * fig['chamfer_fraction']:.2f}% of diagonal  "
              f"normal consistency {fig['normal_consistency']:.3f}  silhouette IoU {fig['silhouette_iou']:.3f}  "
              f"{fig['seconds']:.1f} s  {fig['steps']} steps")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("fidelity", help="measure NeRF -> NeuS -> DMTet against a known target mesh (oracle)")
    p.add_argument("--target", required=True, type=Path, help="target mesh file (.obj/.ply/.glb/.gltf/.stl)")
    p.add_argument("--out", required=True, type=Path, help="report JSON file to write")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="stage settings (default tiny)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.set_defaults(run=_run)
