"""Volume renderer: coverage, depth and normals of an analytic ball; occupancy culling; NeuS alpha;
fixed shapes without host syncs, equal to evaluating only the kept samples."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace

import torch
from dreampolish.backend.host_syncs import HostSyncCounter
from dreampolish.backend.render.cameras import orbit_cameras
from dreampolish.backend.render.volume import (
    NerfVolume,
    NeusVolume,
    OccupancyGrid,
    VolumeRenderConfig,
    _composite,
    _sample_rays,
    camera_rays,
    measured_chunks_only,
    ray_box,
    render_volume,
)

RADIUS = 0.4


class Ball:
    """A ball of constant density and colour; normals point outward."""

    def query(self, points, dirs, deltas, want_normals):
        sigma = torch.where(points.norm(dim=-1) < RADIUS, 200.0, 0.0)
        alpha = 1 - torch.exp(-sigma * deltas)
        rgb = torch.tensor([0.2, 0.4, 0.6]).expand_as(points)
        return alpha, rgb, (torch.nn.functional.normalize(points, dim=-1) if want_normals else None)


class SphereSdf:
    """Stands in for an SdfField: the exact sphere SDF."""

    bound = 0.6

    def __call__(self, x):
        return x.norm(dim=-1) - RADIUS, torch.full_like(x, 0.5)

    def gradient(self, x):
        return torch.nn.functional.normalize(x, dim=-1)

    def forward_with_gradient(self, x):
        return (*self(x), self.gradient(x))


def _camera(res=32):
    one = torch.ones(1)
    return orbit_cameras(20 * one, 30 * one, 2.0 * one, 40 * one, res, res)


def _expected_disc(cam):
    origins, dirs, _ = camera_rays(cam)
    # a ray hits the ball when its closest approach to the centre is inside the radius
    t = -(origins * dirs).sum(-1, keepdim=True)
    closest = (origins + t * dirs).norm(dim=-1)
    return closest < RADIUS


def test_ball_renders_as_a_disc_with_depth_and_outward_normals():
    cam = _camera()
    out = render_volume(Ball(), cam, 0.6, VolumeRenderConfig(n_samples=128), want_normals=True)
    disc = _expected_disc(cam)[0]
    opacity = out["opacity"][0, ..., 0]
    iou = ((opacity > 0.5) & disc).sum() / ((opacity > 0.5) | disc).sum()
    assert iou > 0.9
    # the centre pixel sees the ball's front at camera depth 2 - R
    c = cam.height // 2
    assert abs(float(out["depth"][0, c, c, 0]) - (2.0 - RADIUS)) < 0.03
    n = out["normal"][0, c, c]
    towards_camera = cam.c2w[0, :3, 3] / cam.c2w[0, :3, 3].norm()
    assert float((n * towards_camera).sum()) > 0.95
    # background is the configured colour
    assert torch.allclose(out["rgb"][0][~disc & (opacity < 1e-4)], torch.ones(3))
    assert float(out["orientation"].sum()) < 1e-3  # front faces only


def test_occupancy_culling_keeps_the_image():
    cam = _camera()
    cfg = VolumeRenderConfig(n_samples=64)
    full = render_volume(Ball(), cam, 0.6, cfg)
    occ = OccupancyGrid(0.6, 16, "cpu")
    occ.update(lambda x: x.norm(dim=-1) < RADIUS)
    assert occ.fraction < 0.5
    culled = render_volume(Ball(), cam, 0.6, cfg, occ)
    torch.testing.assert_close(culled["opacity"], full["opacity"], atol=1e-4, rtol=0)


def test_neus_alpha_renders_the_sphere_and_sharpens_with_s():
    cam = _camera()
    cfg = VolumeRenderConfig(n_samples=96)
    disc = _expected_disc(cam)[0]
    soft = render_volume(NeusVolume(SphereSdf(), sharpness=10.0), cam, 0.6, cfg)["opacity"][0, ..., 0]
    sharp = render_volume(NeusVolume(SphereSdf(), sharpness=400.0), cam, 0.6, cfg)["opacity"][0, ..., 0]
    iou = ((sharp > 0.5) & disc).sum() / ((sharp > 0.5) | disc).sum()
    assert iou > 0.9
    # outside the silhouette the soft surface leaks more coverage than the sharp one
    assert float(soft[~disc].mean()) > float(sharp[~disc].mean())


class BackFacingFog:
    """A learnable density in the ball, with normals that point along the rays (facing away everywhere)."""

    def __init__(self):
        self.log_sigma = torch.tensor(3.0, requires_grad=True)
        self.normal_tilt = torch.tensor(1.0, requires_grad=True)

    def query(self, points, dirs, deltas, want_normals):
        sigma = torch.where(points.norm(dim=-1) < RADIUS, self.log_sigma.exp(), torch.zeros(()))
        alpha = 1 - torch.exp(-sigma * deltas)
        rgb = torch.full_like(points, 0.5)
        return alpha, rgb, self.normal_tilt * dirs if want_normals else None


def test_orientation_penalty_moves_normals_not_density():
    # threestudio's orientation loss detaches the ray weights: it must not lower the penalty by removing
    # density where normals face away.
    fog = BackFacingFog()
    out = render_volume(fog, _camera(16), 0.6, VolumeRenderConfig(n_samples=32), want_normals=True)
    out["orientation"].sum().backward()
    assert fog.normal_tilt.grad is not None and fog.normal_tilt.grad.abs() > 0
    assert fog.log_sigma.grad is None or fog.log_sigma.grad.abs() == 0


def _field_loss_and_grads(volume, params, recompute: bool, saved: list[int] | None = None):
    cfg = VolumeRenderConfig(n_samples=16, chunk_rays=64, recompute_chunks=recompute)
    gen = torch.Generator().manual_seed(3)

    def pack(t):
        if saved is not None:
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = render_volume(volume, _camera(16), 0.6, cfg, want_normals=True, generator=gen)
    loss = out["rgb"].square().sum() + out["normal"].sum() + out["orientation"].sum() + out["depth"].sum()
    return loss.detach(), torch.autograd.grad(loss, params)


def _tiny_fields(normals: str = "analytic"):
    from dreampolish.backend.geometry.fields import DensityField, FieldConfig, SdfField
    from dreampolish.backend.geometry.hashgrid import HashGridConfig

    torch.manual_seed(0)
    cfg = FieldConfig(bound=0.6, grid=HashGridConfig(n_levels=4, log2_hashmap_size=10, start_levels=4), hidden_dim=16,
                      normals=normals, normal_stencil="forward", normal_eps=0.01)
    return [NerfVolume(DensityField(cfg)), NeusVolume(SdfField(cfg), sharpness=20.0, cos_anneal=0.5)]


def test_recomputed_chunks_give_the_same_gradients_and_keep_far_less_for_backward():
    # 16x16 rays in chunks of 64: four chunks. Recomputing each chunk in the backward pass must not
    # change a value or a gradient (the jitter is drawn outside the checkpoint), while what the
    # graph keeps for backward drops to one chunk's worth plus the per-ray results.
    for volume in _tiny_fields():
        params = [p for p in volume.field.parameters() if p.requires_grad]
        kept, recomputed = [], []
        loss_a, grads_a = _field_loss_and_grads(volume, params, recompute=False, saved=kept)
        loss_b, grads_b = _field_loss_and_grads(volume, params, recompute=True, saved=recomputed)
        assert torch.allclose(loss_a, loss_b, rtol=1e-5), type(volume).__name__
        for ga, gb in zip(grads_a, grads_b):
            assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-6), type(volume).__name__
        assert sum(recomputed) < 0.25 * sum(kept), (type(volume).__name__, sum(recomputed), sum(kept))


def _render_peak(volume, chunk_rays: int, grad: bool, dry_run: bool) -> int:
    from dreampolish.backend.commands.dryrun import LiveBytes

    cfg = VolumeRenderConfig(n_samples=16, chunk_rays=chunk_rays)
    counter = LiveBytes()
    with counter, measured_chunks_only() if dry_run else contextlib.nullcontext(), torch.set_grad_enabled(grad):
        out = render_volume(volume, _camera(20), 0.6, cfg, want_normals=True, generator=torch.Generator().manual_seed(3))
        if grad:
            (out["rgb"].square().sum() + out["normal"].sum() + out["orientation"].sum()).backward()
        del out
    return counter.peak


def test_the_dry_runs_chunks_reach_the_renders_peak():
    # The dry run evaluates the first chunk and the last two and stands in for the others (_StandInChunk):
    # the render's peak must be the job's, training (the chunks recomputed for the backward pass, each
    # keeping what the analytic normals' inner backward saved) and not; 400 rays in chunks of 64 (the last
    # one shorter) and of 50. Above the job's only by what the first chunk makes once (a few kB here).
    for volume in _tiny_fields():
        for chunk_rays in (64, 50):
            job, dry = _render_peak(volume, chunk_rays, False, False), _render_peak(volume, chunk_rays, False, True)
            assert dry == job, (type(volume).__name__, chunk_rays)
            job, dry = _render_peak(volume, chunk_rays, True, False), _render_peak(volume, chunk_rays, True, True)
            assert job <= dry <= 1.05 * job, (type(volume).__name__, chunk_rays, job, dry)


def test_a_jobs_render_evaluates_every_chunk_unwatched(caplog, monkeypatch):
    # the dry run's bookkeeping (stand-ins, the first chunk's ops watched) is for the dry run alone: a job's
    # render of many chunks runs each chunk, and no op of it passes through the bookkeeping's dispatch mode
    from dreampolish.backend.render import volume as volume_module

    watched = []
    monkeypatch.setattr(volume_module._RetainedBytes, "__enter__", lambda self: watched.append(self) or self)
    volume = _tiny_fields()[0]
    with caplog.at_level("INFO", logger=volume_module.__name__):
        out = render_volume(volume, _camera(20), 0.6, VolumeRenderConfig(n_samples=16, chunk_rays=50),
                            want_normals=True, generator=torch.Generator().manual_seed(3))
        (out["rgb"].square().sum() + out["normal"].sum() + out["orientation"].sum()).backward()
    assert watched == [] and "dry run" not in caplog.text


def _compacted_render(volume, cam, bound, cfg, occupancy):
    """The renderer as it was before fixed shapes (issue 28): only rays that hit the box and samples the
    occupancy grid keeps are sent to the field, then scattered back (boolean counts read by the host)."""
    origins, dirs, forward = camera_rays(cam)
    o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    cos_fwd = (dirs * forward[:, None, None, :]).sum(-1).reshape(-1)
    near, far, hit = ray_box(o, d, bound)
    ids = hit.nonzero().squeeze(-1)
    t, delta, pts = _sample_rays(o[ids], d[ids], near[ids], far[ids], cfg.n_samples, None)
    n, s = pts.shape[:2]
    flat = pts.reshape(-1, 3)
    keep = occupancy.lookup(flat).nonzero().squeeze(-1)
    a_k, c_k, n_k = volume.query(flat[keep], d[ids].repeat_interleave(s, dim=0)[keep],
                                 delta.expand(n, s).reshape(-1)[keep], True)
    alpha = torch.zeros(n * s).index_put((keep,), a_k).reshape(n, s)
    color = torch.zeros(n * s, 3).index_put((keep,), c_k).reshape(n, s, 3)
    normal = torch.zeros(n * s, 3).index_put((keep,), n_k).reshape(n, s, 3)
    bg = torch.tensor(cfg.background)
    values = _composite(alpha, color, normal, t, d[ids], cos_fwd[ids], bg)
    outs = [bg.expand(o.shape[0], 3).clone()] + [torch.zeros(o.shape[0], v.shape[1]) for v in values[1:]]
    return [out.index_put((ids,), v) for out, v in zip(outs, values)]


def test_every_sample_evaluated_gives_the_values_and_gradients_of_the_kept_samples_alone():
    # Empty cells and rays that miss the box are evaluated and weighted zero instead of being left out:
    # the image and every parameter gradient stay those of evaluating the kept samples only.
    cam = orbit_cameras(*(torch.tensor([v]) for v in (15.0, 40.0, 1.6, 50.0)), 16, 16)  # corners miss the box
    cfg = VolumeRenderConfig(n_samples=24, chunk_rays=100)
    for volume in _tiny_fields():
        occ = OccupancyGrid(0.6, 8, "cpu")
        occ.update(lambda x: x.norm(dim=-1) < 0.45)
        assert 0.1 < float(occ.fraction) < 0.9
        params = [p for p in volume.field.parameters() if p.requires_grad]
        out = render_volume(volume, cam, 0.6, cfg, occ, want_normals=True)
        fixed = [out[k].reshape(-1, out[k].shape[-1]) for k in ("rgb", "opacity", "depth", "normal", "orientation")]
        compacted = _compacted_render(volume, cam, 0.6, cfg, occ)
        assert not ray_box(*(t.reshape(-1, 3) for t in camera_rays(cam)[:2]), 0.6)[2].all()
        for name, a, b in zip(("rgb", "opacity", "depth", "normal", "orientation"), fixed, compacted):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        # the option that evaluates the kept samples only (empty_space="compact") is that render too
        out = render_volume(volume, cam, 0.6, replace(cfg, empty_space="compact"), occ, want_normals=True)
        option = [out[k].reshape(-1, out[k].shape[-1]) for k in ("rgb", "opacity", "depth", "normal", "orientation")]
        weights = [torch.rand(v.shape, generator=torch.Generator().manual_seed(i)) for i, v in enumerate(fixed)]
        grads = [torch.autograd.grad(sum((w * v).sum() for w, v in zip(weights, values)), params)
                 for values in (fixed, compacted, option)]
        for name, a, b in zip(("rgb", "opacity", "depth", "normal", "orientation"), option, compacted):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        for other in grads[1:]:
            for a, b in zip(grads[0], other):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def _values(out):
    return [out[k].reshape(-1, out[k].shape[-1]) for k in ("rgb", "opacity", "depth", "normal", "orientation")]


def test_gathered_samples_give_the_values_and_gradients_of_the_kept_samples_alone_and_report_their_count():
    # empty_space="gather" (the default): the first render knows no capacity and evaluates every sample; a
    # request reads the need back and the next renders gather the kept samples into 1.5 x the need,
    # evaluating far fewer samples, with the values and gradients of evaluating the kept samples only.
    cam = orbit_cameras(*(torch.tensor([v]) for v in (15.0, 40.0, 1.6, 50.0)), 16, 16)
    cfg = VolumeRenderConfig(n_samples=24, chunk_rays=100)
    assert cfg.empty_space == "gather"
    for volume in _tiny_fields():
        occ = OccupancyGrid(0.6, 8, "cpu")
        occ.update(lambda x: x.norm(dim=-1) < 0.35)
        occ.kept.minimum = occ.kept.quantum = 16  # sized for 16x16 rays (the defaults are for 16384 a chunk)
        params = [p for p in volume.field.parameters() if p.requires_grad]
        assert occ.kept.capacity is None
        first = _values(render_volume(volume, cam, 0.6, cfg, occ, want_normals=True))
        occ.kept.request()
        need = max(int(occ.lookup(pts.reshape(-1, 3)).sum()) for pts in _chunk_points(cam, cfg))
        assert occ.kept.capacity == occ.kept.fitting(need) < cfg.chunk_rays * cfg.n_samples
        evaluated = []
        volume.query = _counting(volume.query, evaluated)
        gathered = _values(render_volume(volume, cam, 0.6, cfg, occ, want_normals=True))
        del volume.query  # the class's method again
        assert max(evaluated) == occ.kept.capacity  # 3 chunks of 100 rays, then 56
        compacted = _compacted_render(volume, cam, 0.6, cfg, occ)
        for name, a, b, c in zip(("rgb", "opacity", "depth", "normal", "orientation"), gathered, compacted, first):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
            torch.testing.assert_close(c, b, rtol=1e-5, atol=1e-6, msg=name)
        weights = [torch.rand(v.shape, generator=torch.Generator().manual_seed(i)) for i, v in enumerate(gathered)]
        grads = [torch.autograd.grad(sum((w * v).sum() for w, v in zip(weights, values)), params)
                 for values in (gathered, compacted)]
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def _counting(query, evaluated):
    def counted(points, *args):
        evaluated.append(points.shape[0])
        return query(points, *args)
    return counted


def _chunk_points(cam, cfg):
    origins, dirs, _ = camera_rays(cam)
    o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    near, far, hit = ray_box(o, d, 0.6)
    near, far = torch.where(hit, near, 0.0), torch.where(hit, far, 0.0)
    for start in range(0, o.shape[0], cfg.chunk_rays):
        ids = slice(start, start + cfg.chunk_rays)
        yield _sample_rays(o[ids], d[ids], near[ids], far[ids], cfg.n_samples, None)[2][hit[ids]]


def test_samples_past_a_full_capacity_are_left_out_until_a_report_grows_it(caplog):
    # The occupied space grew past the capacity: the render leaves the samples past it out (the last rays
    # of the chunk lose opacity), the log says so once, and the next request grows the capacity so that
    # the render is whole again. No step waits for the device meanwhile.
    cam = _camera(16)
    cfg = VolumeRenderConfig(n_samples=24, chunk_rays=256)
    volume = NerfVolume(_tiny_fields()[0].field)
    ball = Ball()
    occ = OccupancyGrid(0.6, 8, "cpu")
    occ.update(lambda x: x.norm(dim=-1) < 0.45)
    whole = render_volume(ball, cam, 0.6, replace(cfg, empty_space="mask"), occ)["opacity"]
    occ.kept.minimum = occ.kept.quantum = 1
    occ.kept.capacity = 64
    with HostSyncCounter() as syncs:
        cut = render_volume(ball, cam, 0.6, cfg, occ)["opacity"]
    assert syncs.total == 0, syncs.by_op
    assert cut.sum() < 0.5 * whole.sum() and cut.reshape(-1)[-16:].sum() == 0  # the bottom rows went missing
    with caplog.at_level(logging.INFO, logger="dreampolish.backend.capacity"):
        occ.kept.request()
    assert occ.kept.capacity > 64 and occ.kept.overflows == 1
    assert [r.levelno for r in caplog.records if "outgrew" in r.getMessage()] == [logging.WARNING]
    torch.testing.assert_close(render_volume(ball, cam, 0.6, cfg, occ)["opacity"], whole)
    del volume


def test_rays_that_miss_the_box_show_the_background_even_under_neus_alpha():
    # NeuS alpha is not zero on a zero-length interval (its 1e-5 terms), so the miss must be masked.
    cam = orbit_cameras(*(torch.tensor([v]) for v in (0.0, 0.0, 2.0, 90.0)), 16, 16)
    origins, dirs, _ = camera_rays(cam)
    miss = ~ray_box(origins.reshape(-1, 3), dirs.reshape(-1, 3), 0.6)[2].reshape(16, 16)
    assert miss.any() and not miss.all()
    out = render_volume(NeusVolume(SphereSdf(), sharpness=5.0), cam, 0.6, VolumeRenderConfig(n_samples=16),
                        want_normals=True)
    assert (out["opacity"][0][miss] == 0).all() and (out["depth"][0][miss] == 0).all()
    assert (out["rgb"][0][miss] == 1).all() and (out["normal"][0][miss] == 0).all()


def test_a_training_render_and_its_backward_make_the_host_wait_for_nothing():
    cam = _camera(16)
    cfg = VolumeRenderConfig(n_samples=16, chunk_rays=100)
    gen = torch.Generator().manual_seed(0)
    for volume in _tiny_fields() + _tiny_fields("finite_difference"):
        occ = OccupancyGrid(0.6, 8, "cpu")
        occ.update(lambda x: x.norm(dim=-1) < 0.45, gen)
        params = [p for p in volume.field.parameters() if p.requires_grad]
        with HostSyncCounter(keep_stacks=True) as syncs:
            out = render_volume(volume, cam, 0.6, cfg, occ, want_normals=True, generator=gen)
            loss = out["rgb"].square().sum() + out["orientation"].sum() + out["opacity"].sum()
            torch.autograd.grad(loss, params)
        assert syncs.total == 0, (type(volume).__name__, syncs.by_op)
