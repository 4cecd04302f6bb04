"""A DMTet training render evaluates its colour field in chunks whose activations are recomputed for the backward
pass (DmtetConfig.color_chunk): the same image and gradients, and far less held until the backward pass (at
1,024 px the colour field's activations were 3.0 GB of draft's DMTet peak; BENCHMARKS.md, issue 27)."""

from __future__ import annotations

from dataclasses import replace

import torch
import trimesh
from dreampolish.backend.commands.dryrun import LiveBytes
from dreampolish.backend.geometry.fields import FieldConfig
from dreampolish.backend.geometry.hashgrid import HashGridConfig
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.render.cameras import ViewSampler
from dreampolish.backend.stages.dmtet import DmtetConfig, dmtet_from_mesh

GRID = HashGridConfig(n_levels=6, log2_hashmap_size=12, base_resolution=8, per_level_scale=2.0, start_levels=6)


def _render(chunk: int) -> tuple[torch.Tensor, list[torch.Tensor], int, int]:
    """(rgb, gradients of sdf, deform and the colour field, bytes live after the forward pass, peak)."""
    t = trimesh.creation.torus(0.3, 0.13, major_sections=32, minor_sections=16)
    user = TriMesh(torch.tensor(t.vertices, dtype=torch.float32), torch.tensor(t.faces))
    cfg = DmtetConfig(grid_resolution=24, grid_bound=0.6, color=FieldConfig(grid=GRID, hidden_dim=16),
                      color_init_steps=2, rasterizer="torch", color_chunk=chunk)
    state = dmtet_from_mesh(cfg, user, generator=torch.Generator().manual_seed(0), device="cpu")
    cameras = replace(ViewSampler(), elevation_range=(20.0, 20.0)).sample(
        2, 64, 64, torch.Generator().manual_seed(1), "cpu")
    mesh = state.surface()
    counter = LiveBytes()
    with counter:
        out = state.render(cameras, mesh)
        held = counter.live
        (out.rgb * torch.linspace(0, 1, 3)).sum().backward()
    params = [state.sdf, state.deform, *state.color_field.parameters()]
    return out.rgb.detach(), [p.grad for p in params], held, counter.peak


def test_chunked_colours_give_the_same_render_and_gradients_and_hold_less_for_the_backward_pass():
    whole_rgb, whole_grads, whole_held, whole_peak = _render(1 << 24)
    rgb, grads, held, peak = _render(1024)  # 2 x 64 x 64 pixels: 8 chunks
    assert torch.equal(rgb, whole_rgb)
    for g, w in zip(grads, whole_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in grads[2:])  # the colour field is trained through the chunks
    assert held < 0.5 * whole_held and peak < whole_peak
