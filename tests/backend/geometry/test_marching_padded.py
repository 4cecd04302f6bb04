"""Marching tetrahedra in fixed-size buffers (issue 28): the padded surface is the exact one plus degenerate
padding, reads nothing back from the device, flags an overflow instead of losing faces silently, and the
rasterisers and mesh regularisers ignore its padding."""

from __future__ import annotations

import logging

import pytest
import torch
from dreampolish.backend.geometry.marching import (
    SurfaceCapacity,
    marching_tetrahedra,
    marching_tetrahedra_padded,
    needed_capacity,
)
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.geometry.regularisers import mesh_laplacian, mesh_normal_consistency, real_faces
from dreampolish.backend.geometry.tets import make_tet_grid
from dreampolish.backend.host_syncs import HostSyncCounter
from dreampolish.backend.render.cameras import orbit_cameras
from dreampolish.backend.render.rasterize import MeshRasterizer


def _torus(p: torch.Tensor) -> torch.Tensor:
    q = torch.stack([p[..., :2].norm(dim=-1) - 0.33, p[..., 2]], dim=-1)
    return q.norm(dim=-1) - 0.14


def _grid_and_sdf(resolution: int = 16):
    g = make_tet_grid(resolution, 0.6)
    noise = 0.01 * torch.randn(g.vertices.shape[0], generator=torch.Generator().manual_seed(0))
    return g, _torus(g.vertices) + noise


def _cameras():
    return orbit_cameras(torch.tensor([20.0, -10.0]), torch.tensor([30.0, 200.0]), torch.tensor([2.5, 2.5]),
                         torch.tensor([40.0, 40.0]), 48, 40)


def test_the_padded_surface_is_the_exact_one_plus_degenerate_padding():
    g, sdf = _grid_and_sdf()
    exact_v, exact_f = marching_tetrahedra(g.vertices, sdf, g.tets)
    needed = needed_capacity(g.vertices, sdf, g.tets)
    s = marching_tetrahedra_padded(g.vertices, sdf, g.tets, 2 * needed)
    assert s.vertices.shape == (2 * needed, 3) and s.faces.shape == (4 * needed, 3)
    assert int(s.num_vertices) == exact_v.shape[0] and not bool(s.overflow)
    torch.testing.assert_close(s.vertices[: exact_v.shape[0]], exact_v, rtol=0, atol=0)
    assert (s.vertices[exact_v.shape[0]:] == 0).all()
    real = real_faces(s.faces)
    assert int(real.sum()) == exact_f.shape[0]
    assert set(map(tuple, s.faces[real].tolist())) == set(map(tuple, exact_f.tolist()))  # same winding too
    assert (s.faces[~real] == 0).all(), "padding faces are (0, 0, 0)"
    v, f = s.compact()
    assert torch.equal(v, exact_v) and f.shape == exact_f.shape


def test_an_overflow_is_flagged_and_compacting_it_refuses():
    g, sdf = _grid_and_sdf()
    needed = needed_capacity(g.vertices, sdf, g.tets)
    s = marching_tetrahedra_padded(g.vertices, sdf, g.tets, needed // 2)
    assert bool(s.overflow) and int(s.needed) == needed
    with pytest.raises(ValueError, match="capacity"):
        s.compact()
    # what fits is still a valid (partial) surface: every face index is inside the buffers
    assert int(s.faces.max()) < needed // 2


def test_a_padded_step_reads_nothing_back():
    g, sdf = _grid_and_sdf()
    capacity = 2 * needed_capacity(g.vertices, sdf, g.tets)
    vertices = g.vertices.clone().requires_grad_(True)
    sdf = sdf.clone().requires_grad_(True)
    with HostSyncCounter() as syncs:
        s = marching_tetrahedra_padded(vertices, sdf, g.tets, capacity)
        loss = (mesh_normal_consistency(s.vertices, s.faces) + mesh_laplacian(s.vertices, s.faces)
                + (s.vertices.norm(dim=-1) * s.vertex_weights()).sum())
        loss.backward()
        capacity_watch = SurfaceCapacity(capacity)
        capacity_watch.track(s)
    assert syncs.total == 0, syncs.by_op
    assert torch.isfinite(sdf.grad).all() and torch.isfinite(vertices.grad).all()
    assert sdf.grad.abs().sum() > 0


def test_the_regularisers_weigh_padding_faces_zero():
    g, sdf = _grid_and_sdf()
    s = marching_tetrahedra_padded(g.vertices, sdf, g.tets, 2 * needed_capacity(g.vertices, sdf, g.tets))
    v, f = s.compact()
    for term in (mesh_normal_consistency, mesh_laplacian):
        padded_v = s.vertices.detach().requires_grad_(True)
        exact_v = v.detach().requires_grad_(True)
        padded, exact = term(padded_v, s.faces), term(exact_v, f)
        torch.testing.assert_close(padded, exact)
        padded.backward()
        exact.backward()
        torch.testing.assert_close(padded_v.grad[: v.shape[0]], exact_v.grad)
        assert (padded_v.grad[v.shape[0]:] == 0).all()


def test_the_torch_rasteriser_draws_nothing_of_the_padding():
    g, sdf = _grid_and_sdf()
    s = marching_tetrahedra_padded(g.vertices, sdf, g.tets, 2 * needed_capacity(g.vertices, sdf, g.tets))
    raster = MeshRasterizer("torch")
    cams = _cameras()
    padded = raster.rasterize(TriMesh(s.vertices, s.faces), cams)
    exact = raster.rasterize(TriMesh(*s.compact()), cams)
    assert padded.foreground.any()
    assert torch.equal(padded.foreground, exact.foreground)
    assert bool(real_faces(s.faces)[padded.tri_id[padded.tri_id >= 0]].all())
    for name in ("mask", "depth", "normal", "world_pos"):
        torch.testing.assert_close(getattr(padded, name), getattr(exact, name), msg=name)


@pytest.mark.gpu
def test_nvdiffrast_draws_nothing_of_the_padding():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("nvdiffrast.torch", reason="needs the optional package diffrp-nvdiffrast")
    g, sdf = _grid_and_sdf()
    g, sdf = g.to("cuda"), sdf.cuda()
    s = marching_tetrahedra_padded(g.vertices, sdf, g.tets, 2 * needed_capacity(g.vertices, sdf, g.tets))
    raster = MeshRasterizer("nvdiffrast")
    cams = _cameras().to("cuda")
    padded_mesh, exact_mesh = TriMesh(s.vertices, s.faces), TriMesh(*s.compact())
    padded, exact = raster.rasterize(padded_mesh, cams), raster.rasterize(exact_mesh, cams)
    assert torch.equal(padded.foreground, exact.foreground)
    assert bool(real_faces(s.faces)[padded.tri_id[padded.tri_id >= 0]].all())
    torch.testing.assert_close(padded.mask, exact.mask)
    image = padded.normal.contiguous()
    torch.testing.assert_close(raster.antialias(image, padded, padded_mesh, cams),
                               raster.antialias(exact.normal.contiguous(), exact, exact_mesh, cams))


def test_the_capacity_grows_to_a_need_read_at_a_request_and_warns_once(caplog):
    g, sdf = _grid_and_sdf()
    needed = needed_capacity(g.vertices, sdf, g.tets)
    watch = SurfaceCapacity(0)
    watch.capacity = needed // 4
    assert watch.fitting(needed) >= 1.5 * needed
    with caplog.at_level(logging.INFO, logger="dreampolish.backend.geometry.marching"):
        watch.track(marching_tetrahedra_padded(g.vertices, sdf, g.tets, watch.capacity))
        assert not watch.poll(), "nothing is read before a request"
        watch.request()
        assert watch.capacity == watch.fitting(needed)
        watch.capacity = needed // 4
        watch.track(marching_tetrahedra_padded(g.vertices, sdf, g.tets, watch.capacity))
        watch.request()
    assert watch.capacity == watch.fitting(needed)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "outgrew" in warnings[0].getMessage()
    assert len([r for r in caplog.records if "outgrew" in r.getMessage()]) == 2
