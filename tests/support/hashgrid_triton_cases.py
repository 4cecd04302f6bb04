"""Checks of the fused Triton hash encoding against the PyTorch one, run by test_hashgrid_triton.py in a
subprocess that sets TRITON_INTERPRET=1 before Triton is imported (so that the kernels run on CPU tensors
and no other test's process sees the interpreter). Prints one JSON object: case -> figures."""

from __future__ import annotations

import copy
import json
import os
import sys

import torch
from dreampolish.backend.geometry.fields import DensityField, FieldConfig, SdfField
from dreampolish.backend.geometry.hashgrid import HashGridConfig, HashGridEncoding


def _pair(cfg: HashGridConfig, dtype=torch.float32) -> tuple[HashGridEncoding, HashGridEncoding]:
    """(PyTorch, Triton) encodings with the same table."""
    torch.manual_seed(0)
    ref = HashGridEncoding(HashGridConfig(**{**cfg.__dict__, "implementation": "torch"})).to(dtype)
    fused = copy.deepcopy(ref)
    fused.cfg = HashGridConfig(**{**cfg.__dict__, "implementation": "triton"})
    return ref, fused


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(|b|, tiny): the error relative to the reference's scale."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _points(n: int, seed: int) -> torch.Tensor:
    # a few points outside [0,1] exercise the clamp (and its zero gradient)
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g) * 1.1 - 0.05


# Three dense coarse levels (5^3, 9^3, 17^3 fit 2^13 entries) then hashed ones; 5 of 6 levels active.
MIXED = HashGridConfig(n_levels=6, n_features_per_level=2, log2_hashmap_size=13, base_resolution=4,
                       per_level_scale=2.0, start_levels=5, init_scale=1.0)
# Three features per entry (not a power of two: the kernels' feature lanes are masked).
THREE = HashGridConfig(n_levels=3, n_features_per_level=3, log2_hashmap_size=10, base_resolution=6,
                       per_level_scale=1.7, start_levels=2, init_scale=1.0)


def first_order(cfg: HashGridConfig, n: int) -> dict:
    ref, fused = _pair(cfg)
    layout = {"dense": [int(v) for v in ref.level_dense], "active": ref.active_levels}
    x = _points(n, 1)
    outs, grads = [], []
    for enc in (ref, fused):
        xi = x.clone().requires_grad_(True)
        out = enc(xi)
        go = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        gx, gt = torch.autograd.grad(out, [xi, enc.table], go)
        outs.append(out)
        grads.append((gx, gt))
    f = cfg.n_features_per_level
    locked = slice(fused.active_levels * f, None)
    lo = int(fused.level_offsets[fused.active_levels])
    return {**layout, "value": _rel(outs[1], outs[0]), "grad_x": _rel(grads[1][0], grads[0][0]),
            "grad_table": _rel(grads[1][1], grads[0][1]),
            "locked_out": float(outs[1][:, locked].detach().abs().max()),
            "locked_grad": float(grads[1][1][lo:].abs().max()),
            "clamped_grad_x": float(grads[1][0][(x < 0) | (x > 1)].abs().max()),
            "reference_grad_x_scale": float(grads[0][0].abs().max())}


def double_backward(cfg: HashGridConfig, n: int) -> dict:
    """A loss on grad_x of an MLP over the encoding (as analytic normals make): its gradients w.r.t. the
    table, the MLP and x, which flow through the double backward (grad_out depends on the MLP)."""
    ref, fused = _pair(cfg)
    torch.manual_seed(3)
    mlp = torch.nn.Sequential(torch.nn.Linear(ref.n_output_dims, 16), torch.nn.Softplus(),
                              torch.nn.Linear(16, 1))
    x = _points(n, 4)
    results = []
    for enc in (ref, fused):
        xi = x.clone().requires_grad_(True)
        y = mlp(enc(xi)).sum()
        (gx,) = torch.autograd.grad(y, xi, create_graph=True)
        loss = ((gx.norm(dim=-1) - 1) ** 2).mean()
        params = [enc.table, *mlp.parameters()]
        # the last bias does not reach grad_x: its gradient is zero for both
        results.append(torch.autograd.grad(loss, [xi, *params[:-1]]) + (gx,))
    errs = [_rel(b, a) for a, b in zip(results[0], results[1])]
    return {"grad_x": errs[-1], "dloss_dx": errs[0], "dloss_dtable": errs[1], "dloss_dmlp": max(errs[2:-1])}


def gradgradcheck() -> dict:
    """torch.autograd.gradcheck / gradgradcheck of the fused encoding in float64 (numerical derivatives),
    including the path where a gradient arrives at grad_table."""
    # tiny (one dense level of 27 rows, two hashed of 64): on a mismatch gradcheck falls back to its slow
    # element-by-element mode to report it, which must stay affordable in the interpreter
    cfg = HashGridConfig(n_levels=3, n_features_per_level=2, log2_hashmap_size=6, base_resolution=2,
                         per_level_scale=2.0, start_levels=3, init_scale=1.0)
    _, fused = _pair(cfg, torch.float64)
    x = (torch.rand(10, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.9 + 0.05)
    table = fused.table.detach().clone().requires_grad_(True)

    def fn(xx, tt):
        return torch.func.functional_call(fused, {"table": tt}, (xx,))

    xx = x.clone().requires_grad_(True)
    first = torch.autograd.gradcheck(fn, (xx, table), eps=1e-6, atol=1e-6, fast_mode=True)
    second = torch.autograd.gradgradcheck(fn, (xx, table), eps=1e-6, atol=1e-5, fast_mode=True)
    return {"gradcheck": bool(first), "gradgradcheck": bool(second)}


def fields(n: int) -> dict:
    """Analytic normals / SDF gradients of the fields, Triton vs PyTorch encoding."""
    out = {}
    grid = HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, start_levels=4, init_scale=0.05)
    for name, cls, method in (("density", DensityField, "normal"), ("sdf", SdfField, "gradient")):
        torch.manual_seed(6)
        ref = cls(FieldConfig(grid=HashGridConfig(**{**grid.__dict__, "implementation": "torch"}), hidden_dim=16,
                              n_feature_dims=3, normals="analytic"))
        # the SDF's last layer starts at zero (the field is then the sphere, whatever the table holds)
        torch.nn.init.normal_(ref.geometry_net[-1].weight, std=0.5)
        fused = copy.deepcopy(ref)
        fused.encoding.cfg = HashGridConfig(**{**grid.__dict__, "implementation": "triton"})
        x = (torch.rand(n, 3, generator=torch.Generator().manual_seed(7)) * 2 - 1) * 0.6
        a, b = getattr(ref, method)(x), getattr(fused, method)(x)
        u = torch.randn(a.shape, generator=torch.Generator().manual_seed(8))
        la, lb = (a * u).sum(), (b * u).sum()
        ga = torch.autograd.grad(la, ref.encoding.table)[0]
        gb = torch.autograd.grad(lb, fused.encoding.table)[0]
        out[name] = {"value": _rel(b, a), "dloss_dtable": _rel(gb, ga), "dloss_dtable_scale": float(ga.abs().max())}
    return out


def self_check() -> dict:
    """The check "auto" runs once per device before trusting the kernels, here through the interpreter."""
    from dreampolish.backend.geometry.hashgrid import _triton_self_check

    return {"f2": _triton_self_check(torch.device("cpu"), 2), "f3": _triton_self_check(torch.device("cpu"), 3)}


def compile_for_gpus() -> dict:
    """Compile the kernels for sm_90 (H100/H200) without a GPU: Triton's compiler and ptxas refuse what
    its interpreter accepts (constexpr rules, types). Run without TRITON_INTERPRET."""
    import triton
    import triton.language as tl
    from dreampolish.backend.geometry import hashgrid_triton as ht
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    scalars = {"n": "i32", "n_active": "i32", "out_stride": "i32", "go_stride": "i32", "p1": "i64", "p2": "i64",
               "res_ptr": "*i64", "size_ptr": "*i64", "off_ptr": "*i64", "dense_ptr": "*i64"}
    # the variants training launches: float32, 2 features; backward with and without the position
    # gradient; double backward with and without a gradient at grad_x / the points
    variants = [(ht._forward_kernel, {}), (ht._backward_kernel, {"NEED_X": False, "NEED_T": True}),
                (ht._backward_kernel, {"NEED_X": True, "NEED_T": True})]
    variants += [(ht._double_backward_kernel, {"HAS_GX": True, "HAS_GT": gt, "NEED_X": x, "NEED_T": True})
                 for gt in (True, False) for x in (True, False)]
    compiled = []
    for fn, extra in variants:
        consts = {"F": 2, "FP": 2, "BLOCK": 128, "ACC": tl.float32, **extra}
        sig = {a: "constexpr" if a in consts else scalars.get(a, "*fp32") for a in fn.arg_names}
        kernel = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32))
        compiled.append("cubin" in kernel.asm)
    return {"variants": len(compiled), "compiled": sum(compiled)}


def main() -> None:
    if sys.argv[1:] == ["compile"]:
        if os.environ.get("TRITON_INTERPRET") == "1":
            sys.exit("compile without TRITON_INTERPRET")
        os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated to silence it
        print(json.dumps({"compile": compile_for_gpus()}))
        return
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("run with TRITON_INTERPRET=1 (set before triton is imported)")
    torch.set_num_threads(1)
    which = sys.argv[1:] or ["mixed", "three", "double", "gradgradcheck", "fields", "self_check"]
    cases = {"mixed": lambda: first_order(MIXED, 3000), "three": lambda: first_order(THREE, 1000),
             "double": lambda: double_backward(MIXED, 2000), "gradgradcheck": gradgradcheck,
             "fields": lambda: fields(1000), "self_check": self_check}
    print(json.dumps({name: cases[name]() for name in which}))


if __name__ == "__main__":
    main()
