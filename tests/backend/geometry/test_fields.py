"""Neural fields: initial shapes, gradients, colour ranges."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from dreampolish.backend.geometry.fields import (
    ColorField,
    DensityField,
    FieldConfig,
    SdfField,
    evaluate_on_grid,
)
from dreampolish.backend.geometry.hashgrid import HashGridConfig

SMALL = FieldConfig(grid=HashGridConfig(n_levels=4, log2_hashmap_size=14, base_resolution=8, start_levels=4),
                    hidden_dim=16, n_feature_dims=4)


def test_sdf_field_starts_as_the_init_sphere_with_unit_gradients():
    torch.manual_seed(0)
    f = SdfField(SMALL)
    x = (torch.rand(512, 3) * 2 - 1) * 0.6
    torch.testing.assert_close(f.sdf(x), x.norm(dim=-1) - SMALL.init_radius)
    g = f.gradient(x[x.norm(dim=-1) > 0.1])
    assert ((g.norm(dim=-1) - 1).abs() < 0.05).all()
    rgb = f.color(x)
    assert rgb.shape == (512, 3) and rgb.min() >= 0 and rgb.max() <= 1


def test_density_blob_is_dense_inside_and_empty_outside_with_outward_normals():
    torch.manual_seed(0)
    f = DensityField(SMALL)
    inside = torch.tensor([[0.0, 0.0, 0.05], [0.1, -0.1, 0.0]])
    outside = torch.tensor([[0.68, 0.0, 0.0], [0.0, 0.66, 0.3]])
    assert (f.density(inside) > 5).all() and (f.density(outside) < 0.5).all()
    p = torch.tensor([[0.3, 0.0, 0.0], [0.0, 0.0, -0.3]])
    n = f.normal(p)
    assert ((n * torch.nn.functional.normalize(p, dim=-1)).sum(-1) > 0.9).all()


def test_fields_train_and_color_field_fits_a_target():
    torch.manual_seed(0)
    f = ColorField(SMALL)
    opt = torch.optim.Adam(f.parameters(), lr=1e-2)
    x = (torch.rand(512, 3) * 2 - 1) * 0.5
    target = (x > 0).float()
    first = None
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(f.color(x), target)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.3 * first


def test_evaluate_on_grid_matches_the_function_on_the_lattice():
    vals = evaluate_on_grid(lambda p: p[:, 0] + 2 * p[:, 1] + 3 * p[:, 2], 1.0, 5, "cpu", chunk=7)
    assert vals.shape == (5, 5, 5)
    assert float(vals[4, 0, 0]) == 1.0 - 2.0 - 3.0 and float(vals[0, 4, 4]) == -1.0 + 2.0 + 3.0


def _textured(cls, normals: str, eps: float = 0.004):
    """A field whose gradient is not just the initial sphere's: a random table and MLP, in float64."""
    torch.manual_seed(1)
    cfg = FieldConfig(grid=HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, start_levels=4,
                                          init_scale=0.2), hidden_dim=16, n_feature_dims=3, normals=normals,
                      normal_eps=eps)
    f = cls(cfg).double()
    for p in f.parameters():
        if p.ndim == 2 and p.shape[0] > 1 and p is not f.encoding.table:
            torch.nn.init.normal_(p, std=0.5)
    torch.nn.init.normal_(f.geometry_net[-1].weight, std=0.5)
    return f


def _central_differences(fn, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return torch.stack([(fn(x + eps * e) - fn(x - eps * e)) / (2 * eps) for e in torch.eye(3, dtype=x.dtype)], -1)


def _relative(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).detach()


def test_analytic_normals_agree_with_finite_differences():
    x = ((torch.rand(256, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1) * 0.6).double()
    for cls, method, value in ((SdfField, "gradient", "sdf"), (DensityField, "normal", "density")):
        analytic = _textured(cls, "analytic")
        a = getattr(analytic, method)(x)
        # per-axis central differences of the field itself: second-order accurate inside a grid cell
        cd = _central_differences(getattr(analytic, value), x)
        if method == "normal":
            cd = torch.nn.functional.normalize(-cd, dim=-1)
        err = _relative(a, cd)
        assert float(err.median()) < 1e-7 and float((err < 1e-5).float().mean()) > 0.99, (cls, err.max())
        # the finite-difference option at a tiny step; the tetrahedral stencil is first-order accurate
        # (its error is eps times the field's mixed second derivatives), so the match is looser
        fine = getattr(_textured(cls, "finite_difference", eps=1e-7), method)(x)
        err = _relative(a, fine)
        assert float(err.median()) < 1e-5 and float((err < 1e-4).float().mean()) > 0.99, (cls, err.max())
        # at the default step the stencil smooths over ~one fine cell but points the same way
        coarse = getattr(_textured(cls, "finite_difference"), method)(x)
        cos = torch.nn.functional.cosine_similarity(a, coarse, dim=-1)
        assert float(cos.median()) > 0.95, cls


def test_finite_difference_stencils_are_their_formulas():
    f = _textured(SdfField, "finite_difference", eps=0.01)
    x = torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64)
    k = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]],
                     dtype=torch.float64)
    expected = sum(kk * f.sdf(x + 0.01 * kk)[:, None] for kk in k) / (4 * 0.01)
    torch.testing.assert_close(f.gradient(x), expected)  # the default stencil: tetrahedral
    e = torch.eye(3, dtype=torch.float64)
    f.cfg.normal_stencil = "central"
    central = torch.stack([(f.sdf(x + 0.01 * ei) - f.sdf(x - 0.01 * ei)) / 0.02 for ei in e], dim=-1)
    torch.testing.assert_close(f.gradient(x), central)
    f.cfg.normal_stencil = "forward"
    forward = torch.stack([(f.sdf(x + 0.01 * ei) - f.sdf(x)) / 0.01 for ei in e], dim=-1)
    torch.testing.assert_close(f.gradient(x), forward)
    torch.testing.assert_close(f.forward_with_gradient(x)[2], forward)


class _SmoothDensity(DensityField):
    """A smooth analytic density (the blob plus waves), so that differences and derivatives can be compared
    without the hash grid's cell-wise trilinear kinks."""

    def _raw(self, x):
        wave = torch.sin(4 * x[:, 0]) * torch.cos(3 * x[:, 1]) + 0.5 * torch.sin(5 * x[:, 2])
        return torch.nn.functional.softplus(self._blob(x) - 1.0 + wave), x.new_zeros(x.shape[0], self.cfg.n_feature_dims)


@pytest.mark.parametrize("stencil", ["tetrahedral", "central", "forward"])
def test_finite_difference_normals_agree_with_analytic_normals_on_a_smooth_density(stencil):
    # at DreamCraft3D's step (0.01 world units) every stencil points where the analytic gradient does
    x = torch.rand(2048, 3, generator=torch.Generator().manual_seed(4)) * 2 - 1
    x = x[(x.norm(dim=-1) > 0.15) & (x.norm(dim=-1) < 0.65)]
    analytic = _SmoothDensity(replace(SMALL, normals="analytic")).normal(x)
    fd_field = _SmoothDensity(replace(SMALL, normals="finite_difference", normal_stencil=stencil, normal_eps=0.01))
    fd = fd_field.normal(x)
    cos = torch.nn.functional.cosine_similarity(analytic, fd, dim=-1)
    assert float(cos.min()) > 0.99, (stencil, float(cos.min()))
    torch.testing.assert_close(fd_field.forward_with_normals(x)[2], fd)
    if stencil == "central":  # second-order accurate: far closer than the first-order stencils
        assert float((1 - cos).max()) < 1e-4


def test_finite_difference_normals_train_the_hash_grid_without_a_double_backward():
    torch.manual_seed(0)
    f = DensityField(replace(SMALL, normals="finite_difference", normal_stencil="forward", normal_eps=0.01))
    torch.nn.init.normal_(f.geometry_net[-1].weight, std=0.5)
    inputs_need_grad = []
    f.encoding.register_forward_hook(lambda _m, args, _out: inputs_need_grad.append(args[0].requires_grad))
    x = (torch.rand(256, 3) * 2 - 1) * 0.5
    _, _, normals = f.forward_with_normals(x)
    view = torch.nn.functional.normalize(torch.ones(3), dim=0)
    penalty = torch.relu((normals * view).sum(-1)).square().sum()  # an orientation-style loss on the normals
    table_grad, weight_grad = torch.autograd.grad(penalty, [f.encoding.table, f.geometry_net[0].weight])
    assert torch.isfinite(table_grad).all() and table_grad.abs().sum() > 0
    assert weight_grad.abs().sum() > 0
    # no encoding input carries a graph to the positions: nothing is differentiated twice
    assert inputs_need_grad and not any(inputs_need_grad)


class _GradientOf(torch.nn.Module):
    """module(x) = field.gradient(x), so that torch.func.functional_call can swap the field's parameters."""

    def __init__(self, field):
        super().__init__()
        self.field = field

    def forward(self, x):
        return self.field.gradient(x)


def test_analytic_gradient_trains_the_field_through_a_double_backward():
    f = _textured(SdfField, "analytic")
    x = ((torch.rand(64, 3, generator=torch.Generator().manual_seed(3)) * 2 - 1) * 0.6).double()
    g = f.gradient(x)
    assert g.requires_grad and not x.requires_grad
    module = _GradientOf(f)
    names = ["field.encoding.table", "field.geometry_net.0.weight"]
    params = dict(module.named_parameters())

    def eikonal(table, weight):
        grad = torch.func.functional_call(module, {names[0]: table, names[1]: weight}, (x,), strict=False)
        return ((grad.norm(dim=-1) - 1) ** 2).mean()

    inputs = tuple(params[n].detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(eikonal, inputs, eps=1e-6, atol=1e-6, fast_mode=True)
    with torch.no_grad():
        detached = f.gradient(x)
    assert not detached.requires_grad
    torch.testing.assert_close(detached, g.detach())


def _small_field_config(normals: str, stencil: str = "tetrahedral") -> FieldConfig:
    return FieldConfig(grid=HashGridConfig(n_levels=4, log2_hashmap_size=10, start_levels=4), hidden_dim=16,
                       normals=normals, normal_stencil=stencil)


@pytest.mark.parametrize(("normals", "stencil", "extra_points"), [
    ("analytic", "tetrahedral", 0), ("finite_difference", "tetrahedral", 4), ("finite_difference", "central", 6),
    ("finite_difference", "forward", 3)])
def test_value_and_gradient_together_equal_the_separate_calls_from_one_evaluation(normals, stencil, extra_points):
    torch.manual_seed(0)
    # float64: a difference quotient's table gradients cancel by 1/eps, which float32 rounding would dominate
    x = (torch.rand(256, 3) - 0.5).double()
    for field, together, separate in (
        (nerf := DensityField(_small_field_config(normals, stencil)).double(), nerf.forward_with_normals,
         lambda p: (*nerf(p), nerf.normal(p))),
        (neus := SdfField(_small_field_config(normals, stencil)).double(), neus.forward_with_gradient,
         lambda p: (*neus(p), neus.gradient(p))),
    ):
        torch.nn.init.normal_(field.geometry_net[-1].weight, std=0.5)  # a field with some shape
        calls = []
        hook = field.encoding.register_forward_hook(lambda _m, args, _out, calls=calls: calls.append(len(args[0])))
        got = together(x)
        evaluations = len(calls)
        hook.remove()
        # the sample itself, then the stencil's points in one batch (the forward stencil reuses the sample's value)
        assert calls == [len(x)] + ([extra_points * len(x)] if extra_points else []), (type(field).__name__, calls)
        want = separate(x)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
        # The training loss flows through either form identically.
        params = [p for p in field.parameters() if p.requires_grad]
        grads_together = torch.autograd.grad(sum(t.square().sum() for t in together(x)), params)
        grads_separate = torch.autograd.grad(sum(t.square().sum() for t in separate(x)), params)
        for g, w in zip(grads_together, grads_separate):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
        with torch.no_grad():
            assert all(not t.requires_grad for t in together(x))
        # Analytic: one evaluation of the encoding (the gradient is a backward through it); a stencil
        # evaluates its points besides the sample itself.
        assert evaluations == (1 if normals == "analytic" else 2), (type(field).__name__, evaluations)
