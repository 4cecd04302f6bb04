"""Multiresolution hash-grid encoding (Instant-NGP, Müller et al. 2022) in plain PyTorch.

Runs on the CPU and on CUDA with the same code. Level l has resolution
N_l = floor(base_resolution * growth**l); a point x in [0,1]^3 is looked up at the
8 corners of its cell, each corner index hashed into a table of size T when the
level's dense grid (N_l+1)^3 does not fit in T, and the corner features are
blended trilinearly. Coarse levels whose (N_l+1)^3 grid fits in T are stored
densely (no collisions) and looked up with `grid_sample`, which computes the same
trilinear blend several times faster on the CPU than gathering 8 corners.
Output: the concatenation of all levels' F features, [N, L*F].

On CUDA the encoding runs as fused Triton kernels (`hashgrid_triton`: forward, backward and
double backward, same hashing and layout) unless `implementation="torch"`; this module's PyTorch
code is the reference the kernels are tested against and the fallback everywhere else.

Progressive level unlocking (as in threestudio's ProgressiveBandHashGrid): only
the first `start_levels` levels are active at the stage's first step, and the
others unlock one by one at even intervals until all are active at the fraction
`unlock_until` of the stage (schedules.stage_progress), whatever its length.
Locked levels output zeros, so their tables get no gradient and coarse structure
is fitted before fine detail.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config_fields import ranged

log = logging.getLogger(__name__)

# Spatial hash primes (Teschner et al. 2003, as used by Instant-NGP); the first is 1
# so that, along x, neighbouring cells map to neighbouring table entries.
_PRIMES = (1, 2654435761, 805459861)


@dataclass
class HashGridConfig:
    n_levels: int = ranged(16, 1, 32)
    """Number of resolution levels L."""
    n_features_per_level: int = ranged(2, 1, 8)
    """Features F stored per table entry."""
    log2_hashmap_size: int = ranged(19, 8, 24)
    """log2 of the table size T per level."""
    base_resolution: int = ranged(16, 2, 1024)
    """Resolution N_0 of the coarsest level."""
    per_level_scale: float = ranged(1.447269237440378, 1.0, 4.0)
    """Growth factor b between levels: N_l = floor(N_0 * b**l) (16 levels from 16 reach ~4096)."""
    start_levels: int = ranged(8, 1, 32)
    """Levels active at step 0 (progressive unlocking); n_levels disables unlocking."""
    unlock_until: float = ranged(0.8, 0, 1)
    """Fraction of the stage by which every level is active; the levels above start_levels unlock at even
    intervals before it (0.8 with 8 of 16 levels at the start: one level per 500 steps of 5000)."""
    init_scale: float = ranged(1e-4, 0, 1)
    """Tables start uniform in [-init_scale, init_scale]."""
    implementation: Literal["auto", "triton", "torch"] = "auto"
    """"auto": the fused Triton kernels for CUDA inputs when Triton is installed, PyTorch otherwise;
    "triton": always the kernels (CPU inputs need TRITON_INTERPRET=1, set before Triton is imported);
    "torch": always the PyTorch code."""

    def levels_at(self, progress: float) -> int:
        """Active levels at `progress` in [0, 1]: start_levels + ⌊(n_levels − start_levels) · progress /
        unlock_until⌋, all of them from unlock_until on."""
        start = min(max(self.start_levels, 1), self.n_levels)
        if progress >= self.unlock_until:
            return self.n_levels
        return start + int((self.n_levels - start) * progress / self.unlock_until)


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
_TRITON_CHECKED: dict[tuple[str, int], bool] = {}
"""(device, features per level) -> whether the kernels passed their self-check there ("auto" only)."""


class HashGridEncoding(nn.Module):
    """x [N,3] in [0,1] -> features [N, n_levels * n_features_per_level]."""

    def __init__(self, cfg: HashGridConfig):
        super().__init__()
        self.cfg = cfg
        table_size = 2**cfg.log2_hashmap_size
        resolutions, sizes, offsets = [], [], [0]
        for level in range(cfg.n_levels):
            res = int(math.floor(cfg.base_resolution * cfg.per_level_scale**level))
            size = min(table_size, (res + 1) ** 3)
            resolutions.append(res)
            sizes.append(size)
            offsets.append(offsets[-1] + size)
        self.resolutions = resolutions
        self.level_sizes = sizes
        # host copies of the layout: reading the device buffers in the step would make the host wait (issue 28)
        self.level_starts = offsets[:-1]
        self.register_buffer("level_offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        # the layout as the Triton kernels read it: resolution, size and dense flag per level
        self.register_buffer("level_resolutions", torch.tensor(resolutions, dtype=torch.long), persistent=False)
        self.register_buffer("level_sizes_t", torch.tensor(sizes, dtype=torch.long), persistent=False)
        dense = [int((r + 1) ** 3 <= n) for r, n in zip(resolutions, sizes)]
        self.register_buffer("level_dense", torch.tensor(dense, dtype=torch.long), persistent=False)
        self.table = nn.Parameter(
            torch.empty(offsets[-1], cfg.n_features_per_level).uniform_(-cfg.init_scale, cfg.init_scale)
        )
        self.active_levels = min(cfg.start_levels, cfg.n_levels)
        # the 8 cell corners as {0,1}^3 offsets, [8,3]
        corners = torch.tensor([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], dtype=torch.long)
        self.register_buffer("corners", corners, persistent=False)

    @property
    def n_output_dims(self) -> int:
        return self.cfg.n_levels * self.cfg.n_features_per_level

    def update_progress(self, progress: float) -> None:
        """Unlock the levels due at `progress` (schedules.stage_progress) through the stage."""
        self.active_levels = self.cfg.levels_at(progress)

    def _corner_index(self, level: int, cell: Tensor) -> Tensor:
        """cell [N,8,3] integer corner coordinates -> table rows [N,8]: the rows' definition, one corner at a
        time (the tests' reference; forward takes the same rows through _outer_index)."""
        res = self.resolutions[level]
        size = self.level_sizes[level]
        if (res + 1) ** 3 <= size:
            idx = cell[..., 0] * (res + 1) ** 2 + cell[..., 1] * (res + 1) + cell[..., 2]
        else:
            idx = (cell[..., 0] * _PRIMES[0]) ^ (cell[..., 1] * _PRIMES[1]) ^ (cell[..., 2] * _PRIMES[2])
            idx = idx % size
        return idx + self.level_starts[level]

    def _outer_index(self, level: int, axes: Tensor) -> Tensor:
        """axes [N,2,3] (each axis's lower and upper integer coordinate) -> table rows [N,8] of the 8 corners,
        the same rows as _corner_index (a hashed level's size is a power of two: the modulo is a mask)."""
        size = self.level_sizes[level]
        h = [axes[:, :, d] * _PRIMES[d] for d in range(3)]
        idx = h[0][:, :, None, None] ^ h[1][:, None, :, None] ^ h[2][:, None, None, :]
        idx = idx & (size - 1) if size & (size - 1) == 0 else idx % size
        # int32 rows (the table has far fewer than 2^31): they are kept for the backward pass (_TableRows), so a
        # training render holds 32 bytes a point per hashed level for them instead of int64's 64
        return (idx.reshape(-1, 8) + self.level_starts[level]).to(torch.int32)

    def _dense_level(self, level: int, x: Tensor) -> Tensor:
        """Trilinear lookup in a level stored as a dense (N+1)^3 lattice, [N,F]."""
        r = self.resolutions[level] + 1
        f = self.cfg.n_features_per_level
        start = self.level_starts[level]
        # rows are x-major (x, y, z) -> volume [1,F,D=x,H=y,W=z]; grid_sample's coordinates are (W, H, D)
        vol = self.table[start:start + r**3].reshape(r, r, r, f).permute(3, 0, 1, 2)[None]
        grid = (x * 2 - 1).flip(-1).reshape(1, 1, 1, -1, 3)
        return F.grid_sample(vol, grid, mode="bilinear", align_corners=True).reshape(f, -1).t()

    def uses_triton(self, x: Tensor) -> bool:
        """Whether forward(x) runs the fused kernels (see HashGridConfig.implementation)."""
        choice = self.cfg.implementation
        if choice == "torch":
            return False
        if choice == "triton":
            if not _TRITON_INSTALLED:
                raise RuntimeError("hash grid implementation 'triton' needs the triton package")
            if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
                raise RuntimeError("hash grid implementation 'triton' needs CUDA inputs, or TRITON_INTERPRET=1 "
                                   "set before triton is imported to run its interpreter on the CPU")
            return True
        return x.is_cuda and _TRITON_INSTALLED and _triton_works(x.device, self.cfg.n_features_per_level)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[-1] != 3:
            raise ValueError(f"hash-grid input must be [N,3], got {tuple(x.shape)}")
        if self.uses_triton(x):
            from . import hashgrid_triton  # imported on first use: Triton is optional

            return hashgrid_triton.encode(x.to(self.table.dtype), self.table, self.level_resolutions,
                                          self.level_sizes_t, self.level_offsets[:-1], self.level_dense,
                                          self.active_levels)
        return self._torch_forward(x)

    def _torch_forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        f = self.cfg.n_features_per_level
        x = x.clamp(0.0, 1.0)
        out = []
        for level, res in enumerate(self.resolutions):
            if level >= self.active_levels:
                out.append(x.new_zeros(n, f))
                continue
            if (res + 1) ** 3 <= self.level_sizes[level]:
                out.append(self._dense_level(level, x))
                continue
            pos = x * res
            base = pos.floor().clamp(max=res - 1)
            frac = pos - base  # [N,3], carries the gradient w.r.t. x
            # per axis: the two corner coordinates and their linear weights; the 8 corners are their outer
            # products in the corners' order (x, y, z bits, x the highest), so nothing is built [N,8,3]
            lo = base.long()
            axes = torch.stack([lo, lo + 1], dim=1)  # [N,2,3]
            weights = torch.stack([1 - frac, frac], dim=1)  # [N,2,3]
            rows = self._outer_index(level, axes)  # [N,8]
            w = (weights[:, :, None, None, 0] * weights[:, None, :, None, 1]
                 * weights[:, None, None, :, 2]).reshape(n, 8)
            feats = _TableRows.apply(self.table, rows.reshape(-1)).view(n, 8, f)
            out.append(torch.bmm(w[:, None, :], feats)[:, 0])
        return torch.cat(out, dim=-1)


class _TableRows(torch.autograd.Function):
    """table.index_select(0, rows) for int32 rows [M] -> [M,F], keeping the int32 rows for the backward pass (a
    NeRF render with normals keeps them per chunk until the chunk's backward: BENCHMARKS.md, issue 27), where
    the gradient is accumulated with index_add (cheaper on the CPU than indexing's index_put) over the rows
    widened to int64: index_add with an int32 index was 3.5 times slower on the CPU (torch 2.13)."""

    @staticmethod
    def forward(ctx, table: Tensor, rows: Tensor) -> Tensor:
        ctx.save_for_backward(rows)
        ctx.table_rows = table.shape[0]
        return table.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (rows,) = ctx.saved_tensors
        return grad.new_zeros(ctx.table_rows, grad.shape[-1]).index_add(0, rows.long(), grad), None


def _triton_works(device: torch.device, n_features: int) -> bool:
    """Once per device and feature count: do the fused kernels compile there and agree with the PyTorch
    encoding (values, table gradient, double backward) on a small grid with dense and hashed levels?
    "auto" falls back to PyTorch, with a warning, where they do not, rather than failing the job."""
    key = (str(device), n_features)
    if key not in _TRITON_CHECKED:
        try:
            error = _triton_self_check(device, n_features)
        except Exception as exc:  # a compile or launch failure of the kernels on this device
            error = f"{type(exc).__name__}: {exc}"
        if error:
            log.warning("fused hash-grid kernels unusable on %s (%s); using the PyTorch encoding", device, error)
        _TRITON_CHECKED[key] = error is None
    return _TRITON_CHECKED[key]


def _triton_self_check(device: torch.device, n_features: int) -> str | None:
    from . import hashgrid_triton

    cfg = HashGridConfig(n_levels=3, n_features_per_level=n_features, log2_hashmap_size=10, base_resolution=4,
                         per_level_scale=2.0, start_levels=3, init_scale=1.0, implementation="torch")
    ref = HashGridEncoding(cfg).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(1000, 3, device=device, generator=gen)
    results = []
    with torch.enable_grad():
        for fused in (False, True):
            xi = x.clone().requires_grad_(True)
            out = hashgrid_triton.encode(xi, ref.table, ref.level_resolutions, ref.level_sizes_t,
                                         ref.level_offsets[:-1], ref.level_dense, 3) if fused else ref(xi)
            (gx,) = torch.autograd.grad(out.square().sum(), xi, create_graph=True)
            results.append((out, gx, *torch.autograd.grad(gx.square().sum(), [xi, ref.table])))
    for name, a, b in zip(("values", "grad_x", "double backward x", "double backward table"), *results):
        a, b = a.detach(), b.detach()
        err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
        if not err < 1e-4:  # the interpreter tests agree to ~5e-7; 1e-4 leaves room for GPU arithmetic
            return f"{name} differ from the PyTorch encoding by {err:.2g} (relative)"
    return None

