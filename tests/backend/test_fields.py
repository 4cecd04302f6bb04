"""Neural fields: initial shapes, gradients, colour ranges."""

from __future__ import annotations

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
