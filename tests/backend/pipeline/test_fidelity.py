"""A reduced fidelity run: NeRF -> NeuS -> DMTet against the oracle on one target must reach the
figures the full benchmark (bench/fidelity.py) asks of every target."""

from __future__ import annotations

import json

import pytest
import torch
import trimesh
from dreampolish.backend.cli import main as cli_main
from dreampolish.backend.commands.fidelity import run_fidelity, tiny_preset
from dreampolish.backend.geometry.mesh import TriMesh, save_mesh


def _reduced():
    cfg = tiny_preset()
    cfg.nerf.steps = 40
    cfg.neus.steps = 10
    cfg.neus.init_steps = 40
    cfg.dmtet.steps = 30
    cfg.held_out_views = 4
    cfg.metric_samples = 8000
    return cfg


@pytest.mark.slow
def test_reduced_fidelity_on_a_sphere_meets_the_thresholds_and_each_stage_keeps_the_figure():
    s = trimesh.creation.icosphere(3)
    target = TriMesh(torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces))
    report = run_fidelity(target, _reduced(), "cpu")
    stages = report["stages"]
    print(json.dumps(stages))
    assert list(stages) == ["nerf", "neus", "dmtet"]
    final = stages["dmtet"]
    assert final["chamfer_fraction"] <= 0.02
    assert final["silhouette_iou"] >= 0.95
    assert final["normal_consistency"] >= 0.9
    # each stage keeps (within measurement noise) or improves the previous stage's figures
    for prev, cur in (("nerf", "neus"), ("neus", "dmtet")):
        assert stages[cur]["chamfer_fraction"] <= stages[prev]["chamfer_fraction"] + 0.002
        assert stages[cur]["silhouette_iou"] >= stages[prev]["silhouette_iou"] - 0.005


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
def test_fidelity_command_line_writes_a_report(tmp_path, monkeypatch):
    s = trimesh.creation.icosphere(2)
    path = save_mesh(TriMesh(torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces)),
                     tmp_path / "target.obj")

    def tiny_and_short():
        cfg = _reduced()
        cfg.nerf.steps, cfg.neus.steps, cfg.neus.init_steps, cfg.dmtet.steps = 2, 1, 5, 2
        cfg.nerf.mesh_resolution = cfg.neus.mesh_resolution = 32
        cfg.dmtet.grid_resolution = 16
        return cfg

    from dreampolish.backend.commands import fidelity

    monkeypatch.setitem(fidelity.PRESETS, "tiny", tiny_and_short)
    out = tmp_path / "report.json"
    assert cli_main(["fidelity", "--target", str(path), "--out", str(out), "--preset", "tiny", "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    assert set(report["stages"]) == {"nerf", "neus", "dmtet"}
    for fig in report["stages"].values():
        assert {"chamfer_fraction", "normal_consistency", "silhouette_iou", "seconds", "steps"} <= set(fig)
