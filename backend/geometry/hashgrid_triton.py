"""Fused multiresolution hash encoding as Triton kernels: forward, backward and double backward.

Computes exactly what `hashgrid.HashGridEncoding`'s PyTorch path computes (same level layout,
dense coarse levels, spatial hash, trilinear blend, clamping to [0,1]) in one pass per level,
without the [N,8,F] gathers and [N,8] weight tensors the PyTorch path keeps for autograd.

For a point x in [0,1]^3 at level l with resolution R (pos = R x, base = min(floor(pos), R-1),
t = pos - base), corner c in {0,1}^3 has weight w_c = prod_d (t_d if c_d else 1 - t_d) and
out_l = sum_c w_c T[row_c]. Derivatives used below, with s_d = +1 if c_d else -1:
  dw_c/dx_d = R s_d prod_{e != d} (.)_e,      d2w_c/dx_d dx_e = R^2 s_d s_e prod_{k != d,e} (.)_k,
and d2w_c/dx_d^2 = 0 (trilinear weights are linear along each axis).

- backward: grad_T[row_c] += w_c g_l (atomic adds into the table; no dense [N,8,F] intermediate),
  grad_x_d = sum_l sum_c (g_l . T[row_c]) dw_c/dx_d.
- double backward (for analytic normals, whose losses differentiate grad_x again): given G_x, the
  gradient arriving at grad_x, and G_T at grad_T, with v_c = sum_d G_x,d dw_c/dx_d:
  d/dg_l = sum_c v_c T[row_c] + w_c G_T[row_c];  d/dT[row_c] += v_c g_l;
  d/dx_e = sum_l sum_c (g_l . T[row_c]) sum_d G_x,d d2w_c/dx_d dx_e + (g_l . G_T[row_c]) dw_c/dx_e.
Third derivatives are not supported (the double backward is once-differentiable).

This module does not import `hashgrid` (which imports it lazily): it takes the level layout as
tensors. Import it only where Triton is installed; with TRITON_INTERPRET=1 set before Triton is
first imported, the kernels run on CPU tensors (slowly), which is how the tests check them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

# Same spatial hash primes as hashgrid._PRIMES (Teschner et al. 2003, as used by Instant-NGP),
# passed to the kernels as 64-bit arguments so that the products are computed in int64 as in PyTorch.
PRIMES = (1, 2654435761, 805459861)
_BLOCK = 128


@triton.jit
def _load_x(x_ptr, idx, mask, d: tl.constexpr):
    """Coordinate d of each point, and whether it lies in [0,1] (elsewhere the clamp stops gradients)."""
    raw = tl.load(x_ptr + idx * 3 + d, mask=mask, other=0.0)
    return raw, (raw >= 0.0) & (raw <= 1.0)


@triton.jit
def _axis(raw, resf):
    """Clamped coordinate -> (integer cell base, fraction t), base = min(floor(R x), R - 1)."""
    pos = tl.minimum(tl.maximum(raw, 0.0), 1.0) * resf
    base = tl.minimum(tl.floor(pos), resf - 1.0)
    return base.to(tl.int64), pos - base


@triton.jit
def _corner_row(bx, by, bz, cx: tl.constexpr, cy: tl.constexpr, cz: tl.constexpr, res, size, offset, dense,
                p1, p2):
    """Table row of one cell corner: x-major dense index, or the XOR hash mod the level size (2^k)."""
    ix = bx + cx
    iy = by + cy
    iz = bz + cz
    r1 = res + 1
    dense_row = ix * r1 * r1 + iy * r1 + iz
    # Hashed levels hold 2^k rows (k <= 24, HashGridConfig.log2_hashmap_size): the low k bits of the int64
    # products PyTorch computes equal those of 32-bit wrapping products, so the hash runs in uint32 with
    # a mask instead of a 64-bit modulo (slow on GPUs), and picks the same rows.
    u32 = tl.uint32
    hashed = (ix.to(u32) ^ (iy.to(u32) * p1.to(u32)) ^ (iz.to(u32) * p2.to(u32))) & (size - 1).to(u32)
    return tl.where(dense, dense_row, hashed.to(tl.int64)) + offset


@triton.jit
def _factor(t, c: tl.constexpr):
    """One axis's factor of the trilinear weight: t for the upper corner, 1 - t for the lower."""
    if c:
        return t
    else:
        return 1.0 - t


@triton.jit
def _level(res_ptr, size_ptr, off_ptr, dense_ptr, level, ACC: tl.constexpr):
    res = tl.load(res_ptr + level)
    return res, res.to(ACC), tl.load(size_ptr + level), tl.load(off_ptr + level), tl.load(dense_ptr + level) != 0


@triton.jit
def _store_x(ptr, idx, mask, g0, in0, g1, in1, g2, in2):
    """Store a gradient w.r.t. x, zero where x was clamped (as torch.clamp's gradient is)."""
    ty = ptr.dtype.element_ty
    tl.store(ptr + idx * 3 + 0, tl.where(in0, g0, 0.0).to(ty), mask=mask)
    tl.store(ptr + idx * 3 + 1, tl.where(in1, g1, 0.0).to(ty), mask=mask)
    tl.store(ptr + idx * 3 + 2, tl.where(in2, g2, 0.0).to(ty), mask=mask)


@triton.jit
def _forward_kernel(x_ptr, table_ptr, out_ptr, res_ptr, size_ptr, off_ptr, dense_ptr, n, out_stride, p1, p2,
                    F: tl.constexpr, FP: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    level = tl.program_id(1)
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    res, resf, size, offset, dense = _level(res_ptr, size_ptr, off_ptr, dense_ptr, level, ACC)
    x0, _in0 = _load_x(x_ptr, idx, mask, 0)
    x1, _in1 = _load_x(x_ptr, idx, mask, 1)
    x2, _in2 = _load_x(x_ptr, idx, mask, 2)
    bx, tx = _axis(x0, resf)
    by, ty = _axis(x1, resf)
    bz, tz = _axis(x2, resf)
    fcol = tl.arange(0, FP)
    fmask = mask[:, None] & (fcol < F)[None, :]
    acc = tl.zeros((BLOCK, FP), dtype=ACC)
    for c in tl.static_range(8):
        cx = (c >> 2) & 1
        cy = (c >> 1) & 1
        cz = c & 1
        row = _corner_row(bx, by, bz, cx, cy, cz, res, size, offset, dense, p1, p2)
        w = _factor(tx, cx) * _factor(ty, cy) * _factor(tz, cz)
        feats = tl.load(table_ptr + row[:, None] * F + fcol[None, :], mask=fmask, other=0.0)
        acc += w[:, None] * feats.to(ACC)
    out_ptrs = out_ptr + idx[:, None] * out_stride + level * F + fcol[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=fmask)


@triton.jit
def _backward_kernel(x_ptr, table_ptr, go_ptr, gx_ptr, gt_ptr, res_ptr, size_ptr, off_ptr, dense_ptr, n,
                     n_active, go_stride, p1, p2, NEED_X: tl.constexpr, NEED_T: tl.constexpr,
                     F: tl.constexpr, FP: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    x0, in0 = _load_x(x_ptr, idx, mask, 0)
    x1, in1 = _load_x(x_ptr, idx, mask, 1)
    x2, in2 = _load_x(x_ptr, idx, mask, 2)
    fcol = tl.arange(0, FP)
    fmask = mask[:, None] & (fcol < F)[None, :]
    gx0 = tl.zeros((BLOCK,), dtype=ACC)
    gx1 = tl.zeros((BLOCK,), dtype=ACC)
    gx2 = tl.zeros((BLOCK,), dtype=ACC)
    for level in range(n_active):
        res, resf, size, offset, dense = _level(res_ptr, size_ptr, off_ptr, dense_ptr, level, ACC)
        bx, tx = _axis(x0, resf)
        by, ty = _axis(x1, resf)
        bz, tz = _axis(x2, resf)
        go = tl.load(go_ptr + idx[:, None] * go_stride + level * F + fcol[None, :], mask=fmask,
                     other=0.0).to(ACC)
        for c in tl.static_range(8):
            cx = (c >> 2) & 1
            cy = (c >> 1) & 1
            cz = c & 1
            row = _corner_row(bx, by, bz, cx, cy, cz, res, size, offset, dense, p1, p2)
            fx = _factor(tx, cx)
            fy = _factor(ty, cy)
            fz = _factor(tz, cz)
            tptrs = row[:, None] * F + fcol[None, :]
            if NEED_T:
                tl.atomic_add(gt_ptr + tptrs, ((fx * fy * fz)[:, None] * go).to(gt_ptr.dtype.element_ty),
                              mask=fmask, sem="relaxed")
            if NEED_X:
                feats = tl.load(table_ptr + tptrs, mask=fmask, other=0.0).to(ACC)
                gf = tl.sum(go * feats, axis=1) * resf
                gx0 += gf * (2 * cx - 1) * fy * fz
                gx1 += gf * (2 * cy - 1) * fx * fz
                gx2 += gf * (2 * cz - 1) * fx * fy
    if NEED_X:
        _store_x(gx_ptr, idx, mask, gx0, in0, gx1, in1, gx2, in2)


@triton.jit
def _double_backward_kernel(x_ptr, table_ptr, go_ptr, ggx_ptr, ggt_ptr, out_go_ptr, out_x_ptr, out_t_ptr,
                            res_ptr, size_ptr, off_ptr, dense_ptr, n, n_active, go_stride, p1, p2,
                            HAS_GX: tl.constexpr, HAS_GT: tl.constexpr, NEED_X: tl.constexpr,
                            NEED_T: tl.constexpr, F: tl.constexpr, FP: tl.constexpr, BLOCK: tl.constexpr,
                            ACC: tl.constexpr):
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    x0, in0 = _load_x(x_ptr, idx, mask, 0)
    x1, in1 = _load_x(x_ptr, idx, mask, 1)
    x2, in2 = _load_x(x_ptr, idx, mask, 2)
    fcol = tl.arange(0, FP)
    fmask = mask[:, None] & (fcol < F)[None, :]
    # G_x reaches the encoding only where x was not clamped (grad_x is zero elsewhere).
    v0 = tl.zeros((BLOCK,), dtype=ACC)
    v1 = tl.zeros((BLOCK,), dtype=ACC)
    v2 = tl.zeros((BLOCK,), dtype=ACC)
    if HAS_GX:
        v0 = tl.where(in0, tl.load(ggx_ptr + idx * 3 + 0, mask=mask, other=0.0).to(ACC), 0.0)
        v1 = tl.where(in1, tl.load(ggx_ptr + idx * 3 + 1, mask=mask, other=0.0).to(ACC), 0.0)
        v2 = tl.where(in2, tl.load(ggx_ptr + idx * 3 + 2, mask=mask, other=0.0).to(ACC), 0.0)
    ox0 = tl.zeros((BLOCK,), dtype=ACC)
    ox1 = tl.zeros((BLOCK,), dtype=ACC)
    ox2 = tl.zeros((BLOCK,), dtype=ACC)
    for level in range(n_active):
        res, resf, size, offset, dense = _level(res_ptr, size_ptr, off_ptr, dense_ptr, level, ACC)
        bx, tx = _axis(x0, resf)
        by, ty = _axis(x1, resf)
        bz, tz = _axis(x2, resf)
        gptrs = idx[:, None] * go_stride + level * F + fcol[None, :]
        go = tl.load(go_ptr + gptrs, mask=fmask, other=0.0).to(ACC)
        out_go = tl.zeros((BLOCK, FP), dtype=ACC)
        for c in tl.static_range(8):
            cx = (c >> 2) & 1
            cy = (c >> 1) & 1
            cz = c & 1
            sx = 2 * cx - 1
            sy = 2 * cy - 1
            sz = 2 * cz - 1
            row = _corner_row(bx, by, bz, cx, cy, cz, res, size, offset, dense, p1, p2)
            fx = _factor(tx, cx)
            fy = _factor(ty, cy)
            fz = _factor(tz, cz)
            tptrs = row[:, None] * F + fcol[None, :]
            if HAS_GX:
                feats = tl.load(table_ptr + tptrs, mask=fmask, other=0.0).to(ACC)
                vc = resf * (v0 * sx * fy * fz + v1 * sy * fx * fz + v2 * sz * fx * fy)  # sum_d G_x,d dw/dx_d
                out_go += vc[:, None] * feats
                if NEED_T:
                    tl.atomic_add(out_t_ptr + tptrs, (vc[:, None] * go).to(out_t_ptr.dtype.element_ty),
                                  mask=fmask, sem="relaxed")
                if NEED_X:
                    gf = tl.sum(go * feats, axis=1) * resf * resf
                    ox0 += gf * sx * (v1 * sy * fz + v2 * sz * fy)
                    ox1 += gf * sy * (v0 * sx * fz + v2 * sz * fx)
                    ox2 += gf * sz * (v0 * sx * fy + v1 * sy * fx)
            if HAS_GT:
                gt = tl.load(ggt_ptr + tptrs, mask=fmask, other=0.0).to(ACC)
                out_go += (fx * fy * fz)[:, None] * gt
                if NEED_X:
                    gg = tl.sum(go * gt, axis=1) * resf
                    ox0 += gg * sx * fy * fz
                    ox1 += gg * sy * fx * fz
                    ox2 += gg * sz * fx * fy
        tl.store(out_go_ptr + gptrs, out_go.to(out_go_ptr.dtype.element_ty), mask=fmask)
    if NEED_X:
        _store_x(out_x_ptr, idx, mask, ox0, in0, ox1, in1, ox2, in2)


def _features_pow2(n_features: int) -> int:
    return 1 << max(n_features - 1, 0).bit_length()


def _acc(table: Tensor):
    """Accumulation type: float64 tables (gradient checks) accumulate in float64, others in float32."""
    return tl.float64 if table.dtype == torch.float64 else tl.float32


class _Layout:
    """The level layout as device tensors the kernels read: resolution, size, row offset, dense flag."""

    def __init__(self, resolutions: Tensor, sizes: Tensor, offsets: Tensor, dense: Tensor, n_active: int):
        self.resolutions, self.sizes, self.offsets, self.dense = resolutions, sizes, offsets, dense
        self.n_active = n_active


def _launch_backward(go: Tensor, x: Tensor, table: Tensor, layout: _Layout, need_x: bool, need_t: bool):
    n, f = x.shape[0], table.shape[1]
    grad_x = torch.zeros_like(x) if need_x else None
    grad_t = torch.zeros_like(table) if need_t else None
    if n and layout.n_active and (need_x or need_t):
        _backward_kernel[(triton.cdiv(n, _BLOCK),)](
            x, table, go, x if grad_x is None else grad_x, table if grad_t is None else grad_t,
            layout.resolutions, layout.sizes, layout.offsets, layout.dense, n, layout.n_active, go.stride(0),
            PRIMES[1], PRIMES[2], NEED_X=need_x, NEED_T=need_t, F=f, FP=_features_pow2(f), BLOCK=_BLOCK,
            ACC=_acc(table))
    return grad_x, grad_t


class _EncodeBackward(torch.autograd.Function):
    """(grad_out, x, table) -> (grad_x, grad_table); its own backward is the double backward."""

    @staticmethod
    def forward(ctx, go, x, table, layout, need_x, need_t):
        go = go.contiguous()
        ctx.save_for_backward(go, x, table)
        ctx.layout = layout
        return _launch_backward(go, x, table, layout, need_x, need_t)

    @staticmethod
    @once_differentiable
    def backward(ctx, ggx, ggt):
        go, x, table = ctx.saved_tensors
        layout = ctx.layout
        need_go, need_x, need_t = ctx.needs_input_grad[:3]
        n, f = x.shape[0], table.shape[1]
        out_go = torch.zeros_like(go)
        out_x = torch.zeros_like(x) if need_x else None
        out_t = torch.zeros_like(table) if need_t else None
        has_gx, has_gt = ggx is not None, ggt is not None
        if n and layout.n_active and (has_gx or has_gt):
            _double_backward_kernel[(triton.cdiv(n, _BLOCK),)](
                x, table, go, ggx.contiguous() if has_gx else x, ggt.contiguous() if has_gt else table, out_go,
                x if out_x is None else out_x, table if out_t is None else out_t, layout.resolutions,
                layout.sizes, layout.offsets, layout.dense, n, layout.n_active, go.stride(0), PRIMES[1],
                PRIMES[2], HAS_GX=has_gx, HAS_GT=has_gt, NEED_X=need_x, NEED_T=need_t, F=f,
                FP=_features_pow2(f), BLOCK=_BLOCK, ACC=_acc(table))
        return (out_go if need_go else None), out_x, out_t, None, None, None


class _Encode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, layout):
        n, f = x.shape[0], table.shape[1]
        n_levels = layout.resolutions.shape[0]
        out = torch.zeros(n, n_levels * f, dtype=table.dtype, device=x.device)
        if n and layout.n_active:
            _forward_kernel[(triton.cdiv(n, _BLOCK), layout.n_active)](
                x, table, out, layout.resolutions, layout.sizes, layout.offsets, layout.dense, n, out.stride(0),
                PRIMES[1], PRIMES[2], F=f, FP=_features_pow2(f), BLOCK=_BLOCK, ACC=_acc(table))
        ctx.save_for_backward(x, table)
        ctx.layout = layout
        return out

    @staticmethod
    def backward(ctx, go):
        x, table = ctx.saved_tensors
        need_x, need_t = ctx.needs_input_grad[:2]
        grad_x, grad_t = _EncodeBackward.apply(go, x, table, ctx.layout, need_x, need_t)
        return grad_x, grad_t, None


def encode(x: Tensor, table: Tensor, resolutions: Tensor, sizes: Tensor, offsets: Tensor, dense: Tensor,
           n_active: int) -> Tensor:
    """x [N,3] (clamped to [0,1] inside), table [rows,F] -> features [N, L*F]; levels >= n_active are zero.

    resolutions, sizes, offsets (row of each level's first entry), dense (1 where the level is stored as
    an (R+1)^3 lattice): int64 [L] on x's device. Hashed levels' sizes must be powers of two (at most
    2^32), as HashGridEncoding makes them.
    """
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"hash-grid input must be [N,3], got {tuple(x.shape)}")
    if x.dtype != table.dtype:
        raise TypeError(f"hash-grid input dtype {x.dtype} differs from the table's {table.dtype}")
    layout = _Layout(resolutions, sizes, offsets, dense, int(n_active))
    return _Encode.apply(x.contiguous(), table.contiguous(), layout)
