"""Hash-grid encoding: progressive level unlocking, dense/hashed lookups, gradients."""

from __future__ import annotations

import torch
from dreampolish.backend.geometry.hashgrid import HashGridConfig, HashGridEncoding


def _trilinear_by_gather(enc: HashGridEncoding, level: int, x: torch.Tensor) -> torch.Tensor:
    res = enc.resolutions[level]
    pos = x * res
    base = pos.floor().clamp(max=res - 1)
    frac = pos - base
    cell = base.long()[:, None, :] + enc.corners[None]
    feats = enc.table[enc._corner_index(level, cell)]
    c = enc.corners[None].float()
    w = (c * frac[:, None, :] + (1 - c) * (1 - frac[:, None, :])).prod(-1)
    return (w[..., None] * feats).sum(1)


def test_levels_unlock_progressively_and_locked_levels_get_no_gradient():
    cfg = HashGridConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4,
                         per_level_scale=2.0, start_levels=1, unlock_until=0.6, init_scale=0.5)
    enc = HashGridEncoding(cfg)
    x = torch.rand(256, 3, generator=torch.Generator().manual_seed(0))
    enc.update_progress(0.0)
    out = enc(x)
    assert out.shape == (256, 8)
    assert out[:, 2:].abs().max() == 0 and out[:, :2].abs().max() > 0
    out.sum().backward()
    lo, hi = int(enc.level_offsets[1]), int(enc.level_offsets[-1])
    assert enc.table.grad[lo:hi].abs().max() == 0

    enc.update_progress(0.4)  # start 1 + ⌊3 · 0.4 / 0.6⌋ = 3 levels
    out = enc(x)
    assert out[:, :6].abs().amin(dim=0).min() >= 0 and (out[:, :6].abs().sum(0) > 0).all()
    assert out[:, 6:].abs().max() == 0
    enc.update_progress(1.0)
    assert enc.active_levels == 4


def test_dense_and_hashed_levels_are_trilinear_blends_of_the_table():
    cfg = HashGridConfig(n_levels=3, log2_hashmap_size=12, base_resolution=4, per_level_scale=2.0,
                         start_levels=3, init_scale=1.0)
    enc = HashGridEncoding(cfg)
    x = torch.rand(500, 3, generator=torch.Generator().manual_seed(1))
    out = enc(x)
    dense = [(r + 1) ** 3 <= s for r, s in zip(enc.resolutions, enc.level_sizes)]
    assert dense == [True, True, False]  # 5^3, 9^3 fit in 4096 entries; 17^3 is hashed
    for level in range(3):
        torch.testing.assert_close(out[:, 2 * level:2 * level + 2], _trilinear_by_gather(enc, level, x),
                                   atol=1e-5, rtol=1e-5)


def test_gradient_with_respect_to_position_matches_finite_differences():
    cfg = HashGridConfig(n_levels=2, log2_hashmap_size=12, base_resolution=3, per_level_scale=2.0,
                         start_levels=2, init_scale=1.0)
    enc = HashGridEncoding(cfg).double()
    x = torch.tensor([[0.31, 0.42, 0.77]], dtype=torch.float64, requires_grad=True)
    enc(x).sum().backward()
    eps = 1e-6
    for d in range(3):
        dx = torch.zeros(1, 3, dtype=torch.float64)
        dx[0, d] = eps
        with torch.no_grad():
            fd = (enc(x.detach() + dx).sum() - enc(x.detach() - dx).sum()) / (2 * eps)
        assert abs(float(fd) - float(x.grad[0, d])) < 1e-5


def test_a_hashed_level_keeps_four_bytes_a_corner_for_the_backward_pass():
    # The table rows a point reads are kept until the backward pass (index_select's backward scatters the
    # gradient into them): per point and hashed level 8 rows, as int32 32 bytes, not int64's 64. In a NeRF
    # training render with normals each chunk keeps them until its own backward pass (BENCHMARKS.md, issue 27).
    enc = HashGridEncoding(HashGridConfig(n_levels=2, log2_hashmap_size=12, base_resolution=64, per_level_scale=2.0,
                                          start_levels=2))
    assert all((r + 1) ** 3 > n for r, n in zip(enc.resolutions, enc.level_sizes))  # both levels hashed
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        enc(torch.rand(1000, 3)).sum()
    rows = [t for t in saved if not t.is_floating_point()]
    assert len(rows) == 2 and sum(t.untyped_storage().nbytes() for t in rows) == 2 * 1000 * 8 * 4
