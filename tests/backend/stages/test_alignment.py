"""Where an artist's picture puts its object (backend/stages/alignment.py): the picture's shift and scale are
learnt from the reference loss, within their bounds, kept in the NeRF checkpoint, and handed to the stages
after NeRF, so that a picture recentred on its silhouette's box lands on the object the priors keep centred."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dreampolish.backend.guidance.oracle import OracleGuidance, oracle_reference
from dreampolish.backend.render.rasterize import MeshRasterizer
from dreampolish.backend.stages.alignment import AlignmentConfig, ReferenceAlignment
from dreampolish.backend.stages.base import ResolutionSchedule, ScaledReference, reference_at
from dreampolish.backend.stages.nerf import NerfConfig, NerfState, run_nerf

from tests.support.stages import FIELD, REF, RENDER, VIEWS, Recorder, torus


def _disc(size: int, centre: tuple[float, float], radius: float) -> torch.Tensor:
    """[1,size,size,1] a disc at `centre` (normalised coordinates, x right, y down), radius in the same units."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return (((x - centre[0]) ** 2 + (y - centre[1]) ** 2) < radius**2).float()[None, ..., None]


def test_the_picture_moves_and_scales_onto_the_object_and_no_further_than_its_bounds():
    object_mask = _disc(48, (0.0, 0.0), 0.5)  # where the geometry's render puts the object
    picture = _disc(48, (0.0, -0.15), 0.42)   # the recentred picture: higher up and smaller
    ref = ScaledReference(camera=None, rgb=picture.expand(-1, -1, -1, 3), mask=picture, depth=None)
    align = ReferenceAlignment(AlignmentConfig(max_shift=0.3, max_log_scale=0.2))
    opt = torch.optim.Adam(align.parameters(), lr=0.05)
    before = F.mse_loss(align.apply(ref).mask, object_mask).item()
    for _ in range(300):
        opt.zero_grad()
        F.mse_loss(F.avg_pool2d(align.apply(ref).mask.permute(0, 3, 1, 2), 5, 1, 2),
                   F.avg_pool2d(object_mask.permute(0, 3, 1, 2), 5, 1, 2)).backward()
        opt.step()
    t, s = align.shift_scale()
    assert F.mse_loss(align.apply(ref).mask, object_mask).item() < 0.25 * before
    assert abs(float(t[0])) < 0.03 and abs(float(t[1]) - 0.15 * float(s)) < 0.04, (t, s)
    assert abs(float(s) - 0.5 / 0.42) < 0.06, s
    # the bounds hold however far the loss would pull
    with torch.no_grad():
        align.raw.fill_(50.0)
    t, s = align.shift_scale()
    assert float(t.abs().max()) <= 0.3 + 1e-6 and float(s) <= float(torch.exp(torch.tensor(0.2))) + 1e-6


def _nerf_cfg(align: bool) -> NerfConfig:
    return NerfConfig(steps=4, resolution=ResolutionSchedule(12), views=VIEWS, density=FIELD, render=RENDER,
                      reference=REF, occupancy_every=2, occupancy_warmup=0, occupancy_density=0.5,
                      mesh_resolution=24, align=AlignmentConfig(enabled=align, lr=0.05))


def test_nerf_learns_the_alignment_only_when_asked_and_its_checkpoint_keeps_it():
    target, raster = torus(), MeshRasterizer("torch")
    ref = oracle_reference(target, VIEWS.reference(24, 24), raster)
    guidance = OracleGuidance(target, raster)
    plain = run_nerf(_nerf_cfg(False), guidance, ref, Recorder(), generator=torch.Generator().manual_seed(0),
                     device="cpu", picture=True)
    assert plain.alignment is None  # the preset did not ask
    state = run_nerf(_nerf_cfg(True), guidance, ref, Recorder(), generator=torch.Generator().manual_seed(0),
                     device="cpu", picture=True)
    assert state.alignment is not None and float(state.alignment.raw.abs().max()) > 0  # it was learnt
    restored = NerfState.from_state_dict(state.cfg, state.state_dict())
    torch.testing.assert_close(restored.alignment.raw, state.alignment.raw)
    # the stages after NeRF get the full-size picture as NeRF saw it at its own size
    aligned = state.alignment.apply_to_view(ref)
    seen = state.alignment.apply(reference_at(ref, REF.resolution))
    # (warped then resized, or resized then warped: the same picture but for resampling at 12 px)
    assert float((reference_at(aligned, REF.resolution).mask - seen.mask).abs().mean()) < 0.03
    assert not torch.equal(aligned.mask, ref.mask)
    assert aligned.camera is ref.camera
    # a generated reference (no picture) is never moved
    generated = run_nerf(_nerf_cfg(True), guidance, ref, Recorder(), generator=torch.Generator().manual_seed(0),
                         device="cpu", picture=False)
    assert generated.alignment is None
