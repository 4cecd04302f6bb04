"""The geometry stages as the pipeline drives them: reporting, cancel, checkpoints, hand-over, refinement."""

from __future__ import annotations

import pytest
import torch
from dreampolish.backend.geometry.fields import FieldConfig
from dreampolish.backend.geometry.hashgrid import HashGridConfig
from dreampolish.backend.geometry.metrics import chamfer_fraction
from dreampolish.backend.guidance.oracle import OracleGuidance, oracle_reference
from dreampolish.backend.render.rasterize import MeshRasterizer
from dreampolish.backend.stages.base import Ramp, ReferenceWeights, ResolutionSchedule
from dreampolish.backend.stages.dmtet import DmtetConfig, DmtetState, run_dmtet
from dreampolish.backend.stages.nerf import NerfConfig, NerfState, run_nerf
from dreampolish.backend.stages.neus import NeusConfig, run_neus

from tests.support.stages import FIELD, GRID, REF, RENDER, VIEWS, Recorder, torus


@pytest.fixture(scope="module")
def oracle_setup():
    target = torus()
    raster = MeshRasterizer("torch")
    ref = oracle_reference(target, VIEWS.reference(24, 24), raster)
    return target, raster, OracleGuidance(target, raster), ref


def _nerf_cfg(steps=3) -> NerfConfig:
    return NerfConfig(steps=steps, resolution=ResolutionSchedule(12), views=VIEWS, density=FIELD, render=RENDER,
                      reference=REF, orientation_weight=Ramp(0.1), occupancy_every=2, occupancy_warmup=0,
                      occupancy_density=0.5, mesh_resolution=24)


def test_nerf_neus_chain_reports_every_loss_each_step_and_checkpoints(oracle_setup):
    target, raster, guidance, ref = oracle_setup
    gen = torch.Generator().manual_seed(0)
    rec = Recorder()
    nerf = run_nerf(_nerf_cfg(), guidance, ref, rec, generator=gen, device="cpu")
    assert [c[0] for c in rec.calls] == [1, 2, 3] and rec.cancel_checks == 3
    assert {"ref_rgb", "ref_mask", "ref_depth", "guidance", "oracle_opacity", "orientation", "loss"} <= set(rec.calls[-1][2])
    # Each term is a number or a detached 0-dim tensor that the reporter reads back when it reports.
    assert all(isinstance(v, float) or (isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad)
               for v in rec.calls[-1][2].values())
    out = nerf.render(VIEWS.sample(1, 10, 10, gen))
    assert {k: tuple(getattr(out, k).shape) for k in ("rgb", "opacity", "normal", "depth")} == {
        "rgb": (1, 10, 10, 3), "opacity": (1, 10, 10, 1), "normal": (1, 10, 10, 3), "depth": (1, 10, 10, 1)}

    restored = NerfState.from_state_dict(nerf.cfg, nerf.state_dict())
    x = torch.rand(64, 3) - 0.5
    torch.testing.assert_close(restored.field.density(x), nerf.field.density(x))
    mesh = nerf.extract_mesh()
    assert mesh.num_faces > 0 and mesh.vertex_colors is not None
    assert abs(float(mesh.vertices.norm(dim=-1).max()) - 0.5) < 1e-4

    neus_cfg = NeusConfig(steps=2, resolution=ResolutionSchedule(12), views=VIEWS, sdf=FIELD, render=RENDER,
                          reference=REF, occupancy_every=1, init_steps=20, init_batch=512, init_resolution=24,
                          mesh_resolution=24, eikonal_points=256)
    rec = Recorder()
    neus = run_neus(neus_cfg, nerf, guidance, ref, rec, generator=gen, device="cpu")
    assert len(rec.calls) == 2 and {"oracle_normal", "eikonal", "sharpness"} <= set(rec.calls[-1][2])
    assert neus.extract_mesh().num_faces > 0


def test_nerf_and_neus_alternate_reference_and_guidance_steps_as_dreamcraft3d_and_report_both(oracle_setup):
    # DreamCraft3D's coarse stages (freq.ref_or_guidance "alternate", n_ref 2): step 0, 2, 4 reference-only,
    # 1, 3, 5 guidance-only, so half the steps run no guidance; the reports carry the latest of both kinds.
    from dataclasses import replace

    from dreampolish.backend.stages.nerf import NerfConfig as _Nerf
    from dreampolish.backend.stages.neus import NeusConfig as _Neus

    assert _Nerf().reference.alternate_every == 2 and _Neus().reference.alternate_every == 2
    assert DmtetConfig().reference.alternate_every == 0  # its geometry stage accumulates
    target, raster, guidance, ref = oracle_setup
    calls = []

    def counting(inp):
        calls.append(inp.step)
        return guidance(inp)

    rec = Recorder()
    cfg = replace(_nerf_cfg(steps=6), reference=replace(REF, alternate_every=2))
    run_nerf(cfg, counting, ref, rec, generator=torch.Generator().manual_seed(0), device="cpu")
    assert calls == [1, 3, 5]
    assert "ref_rgb" in rec.calls[0][2] and "guidance" not in rec.calls[0][2]
    assert all({"ref_rgb", "guidance", "orientation"} <= set(terms) for _, _, terms in rec.calls[1:])
    calls.clear()
    run_nerf(cfg, counting, None, Recorder(), generator=torch.Generator().manual_seed(0), device="cpu")
    assert calls == list(range(6)), "without a reference view every step runs the guidance"


def test_cancel_stops_a_stage_within_one_step(oracle_setup):
    _, _, guidance, ref = oracle_setup
    rec = Recorder(cancel_at=1)
    with pytest.raises(RuntimeError, match="cancelled"):
        run_nerf(_nerf_cfg(steps=10), guidance, ref, rec, generator=torch.Generator().manual_seed(0), device="cpu")
    assert len(rec.calls) == 1


def test_dmtet_refines_a_users_mesh_towards_the_target(oracle_setup):
    target, raster, guidance, ref = oracle_setup
    # the user's mesh: the target squashed along Z; the oracle pulls it back
    user = target.with_vertices(target.vertices * torch.tensor([1.0, 1.0, 0.6]))
    cfg = DmtetConfig(steps=24, resolution=ResolutionSchedule(40), views=VIEWS, grid_resolution=20, grid_bound=0.6,
                      color=FieldConfig(grid=GRID, hidden_dim=16), lr_sdf=1e-2, lr_deform=2e-2,
                      reference=ReferenceWeights(Ramp(1.0), Ramp(1.0), Ramp(0.0), 24),
                      normal_consistency_weight=Ramp(0.01), laplacian_weight=Ramp(0.01), color_init_steps=10,
                      rasterizer="torch", input_shape_weight=0.0)  # the guidance alone moves the surface here
    rec = Recorder()
    state = run_dmtet(cfg, user, guidance, ref, rec, generator=torch.Generator().manual_seed(0), device="cpu")
    assert len(rec.calls) == 24 and {"normal_consistency", "laplacian", "oracle_normal"} <= set(rec.calls[-1][2])
    # 3 of 4 steps are normal-shaded: the colour term only appears on the others
    assert ["oracle_rgb" in c[2] for c in rec.calls[:4]] == [False, False, False, True]
    before = chamfer_fraction(user, target, 5000)
    after = chamfer_fraction(state.extract_mesh(normalize=False), target, 5000)
    assert after < 0.7 * before

    surface = state.surface()
    assert surface.vertices.requires_grad  # polish can fine-tune sdf/deform through it
    restored = DmtetState.from_state_dict(cfg, state.state_dict())
    torch.testing.assert_close(restored.surface().vertices, surface.vertices.detach())


def test_neus_starts_from_an_edited_mesh_and_keeps_its_shape(oracle_setup):
    """An artist's edit of the NeRF stage's mesh: NeuS is initialised from the mesh's signed distance."""
    target, _, guidance, ref = oracle_setup
    cfg = NeusConfig(steps=1, resolution=ResolutionSchedule(12), views=VIEWS,
                     sdf=FieldConfig(grid=HashGridConfig(n_levels=4, log2_hashmap_size=15, base_resolution=8,
                                                         per_level_scale=1.6, start_levels=4),
                                     hidden_dim=32, n_feature_dims=3, normal_eps=0.02),
                     render=RENDER, reference=REF, occupancy_every=1, init_steps=300, init_batch=1024,
                     init_resolution=32, mesh_resolution=40, eikonal_points=256)
    neus = run_neus(cfg, target, guidance, ref, Recorder(), generator=torch.Generator().manual_seed(0),
                    device="cpu")
    mesh = neus.extract_mesh(normalize=False)
    assert chamfer_fraction(mesh, target) < 0.03
