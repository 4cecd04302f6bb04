"""Neural fields over the object's box [-bound, bound]^3 (world = object frame, Blender Z up).

- DensityField (NeRF stage): hash grid -> small MLP -> density sigma >= 0 and albedo.
- SdfField (NeuS stage): hash grid -> small MLP -> signed distance (negative inside) and albedo.
- ColorField (DMTet, texture): hash grid -> small MLP -> albedo only, for a surface given elsewhere.

Albedo is view-independent (the texture stage bakes it). Normals come from the field's
gradient, computed one of two ways (FieldConfig.normals):
- "analytic" (default): grad f(x) by autograd through the MLP and the hash-grid encoding, one
  backward pass over one evaluation (threestudio's `normal_type: "analytic"` in
  models/geometry/implicit_sdf.py and implicit_volume.py). When grad mode is on the gradient keeps
  its graph (create_graph), so losses on normals or on the eikonal term train the field through a
  double backward; both encodings (PyTorch and the fused Triton kernels) support it.
- "finite_difference": differences of f at points eps away (FieldConfig.normal_stencil), no
  second-order autograd; the losses on normals train the field through the extra evaluations' own
  first-order backward. They also smooth the gradient over eps.
  - "tetrahedral": grad f(x) ~ sum_k k f(x + eps k) / (4 eps),
    k in {(1,-1,-1), (-1,-1,1), (-1,1,-1), (1,1,1)}: 4 extra evaluations, first-order accurate.
  - "central": grad_i f(x) ~ (f(x + eps e_i) - f(x - eps e_i)) / (2 eps): 6 extra evaluations,
    second-order accurate (threestudio's `normal_type: "finite_difference"` in
    models/geometry/implicit_volume.py; DreamCraft3D's copy calls it "finite_difference_laplacian").
  - "forward": grad_i f(x) ~ (f(x + eps e_i) - f(x)) / eps: 3 extra evaluations beside the sample's own,
    first-order accurate (DreamCraft3D's `normal_type: "finite_difference"` in its
    threestudio/models/geometry/implicit_volume.py, which configs/dreamcraft3d-coarse-nerf.yaml uses,
    with finite_difference_normal_eps 0.01 in world units).

Both geometry fields start as a ball of radius `init_radius` (the "blob" of
Magic3D/threestudio for density, a sphere SDF bias for NeuS), so that the first
renders cover the object's place in the frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..config_fields import ranged
from ..device import to_device
from .hashgrid import HashGridConfig, HashGridEncoding

_STENCILS = {
    "tetrahedral": torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]]),
    "central": torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0],
                             [0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]),
    "forward": torch.eye(3),
}
"""Offsets k (in units of eps) of each finite-difference stencil; see the module docstring."""
_STENCIL_NORMS = {"tetrahedral": 4.0, "central": 2.0}
"""m in sum_k k k^T = m I for the symmetric stencils."""
_STENCIL_CACHE: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}


def _stencil_offsets(stencil: str, device: torch.device, dtype: torch.dtype) -> Tensor:
    """_STENCILS[stencil] on `device`, copied there once."""
    key = (stencil, device, dtype)
    if key not in _STENCIL_CACHE:
        _STENCIL_CACHE[key] = to_device(_STENCILS[stencil], device, dtype)
    return _STENCIL_CACHE[key]


@dataclass
class FieldConfig:
    bound: float = ranged(0.7, 0.1, 10)
    """Half-size of the cube the field covers; the object lives within the radius-0.5 ball."""
    grid: HashGridConfig = field(default_factory=HashGridConfig)
    """Hash-grid encoding of positions."""
    hidden_dim: int = ranged(64, 1, 1024)
    """Width of the MLP layers."""
    n_hidden_layers: int = ranged(1, 0, 16)
    """Hidden layers in the geometry MLP (and in the colour MLP)."""
    n_feature_dims: int = ranged(15, 1, 256)
    """Geometry features passed from the geometry MLP to the colour head."""
    init_radius: float = ranged(0.5, 0, 10)
    """Radius of the ball the geometry starts as."""
    density_blob_scale: float = ranged(10.0, 0, 1000)
    """Density bias at the centre of the initial blob: bias(x) = scale * (1 - |x| / init_radius)."""
    normals: Literal["analytic", "finite_difference"] = "analytic"
    """How field gradients and normals are computed (see the module docstring): autograd through the
    encoding and the MLP (a double backward when a loss uses them), or finite differences on
    normal_stencil with step normal_eps."""
    normal_stencil: Literal["tetrahedral", "central", "forward"] = "tetrahedral"
    """Finite-difference stencil for normals="finite_difference": 4, 6 or 3 extra evaluations per point."""
    normal_eps: float = ranged(0.004, 1e-06, 0.1)
    """Finite-difference step (world units) for normals="finite_difference". threestudio and DreamCraft3D
    step 0.01 world units (finite_difference_normal_eps) in a world of our scale (camera 3.8 from the
    object, 20 degree field of view)."""


def _mlp(n_in: int, n_out: int, hidden: int, n_hidden: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(n_hidden):
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class _EncodedField(nn.Module):
    """Shared machinery: world points -> unit cube -> hash-grid features."""

    def __init__(self, cfg: FieldConfig):
        super().__init__()
        self.cfg = cfg
        self.encoding = HashGridEncoding(cfg.grid)

    @property
    def bound(self) -> float:
        return self.cfg.bound

    def encode(self, x: Tensor) -> Tensor:
        return self.encoding((x + self.cfg.bound) / (2 * self.cfg.bound))

    def update_progress(self, progress: float) -> None:
        """Coarse-to-fine levels of the encoding at `progress` (schedules.stage_progress) through the stage."""
        self.encoding.update_progress(progress)

    def _gradient(self, fn, x: Tensor) -> Tensor:
        """grad fn(x) [N,3] for fn: [N,3] -> [N], by the configured method."""
        if self.cfg.normals == "finite_difference":
            return self._stencil_gradient(fn, x)
        if self.cfg.normals != "analytic":
            raise ValueError(f"unknown normals method {self.cfg.normals!r}: 'analytic' or 'finite_difference'")
        return self._analytic_gradient(fn, x)

    @staticmethod
    def _analytic_gradient(fn, x: Tensor) -> Tensor:
        return _EncodedField._with_analytic_gradient(lambda p: (fn(p),), x)[-1]

    @staticmethod
    def _with_analytic_gradient(fn, x: Tensor) -> tuple[Tensor, ...]:
        """fn(x) -> (value [N], *more): (value, *more, grad value [N,3]) from one evaluation of fn and
        one backward through it. Under grad mode all stay differentiable w.r.t. the parameters (and x,
        when x has a graph of its own); under no_grad (previews, export) they are computed and detached."""
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x if create_graph and x.requires_grad else x.detach().requires_grad_(True)
            outputs = fn(xg)
            (grad,) = torch.autograd.grad(outputs[0].sum(), xg, create_graph=create_graph)
        results = (*outputs, grad)
        return results if create_graph else tuple(t.detach() for t in results)

    def _raw_with_gradient(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(value [N], features [N,F], grad value [N,3]) from ONE evaluation of the encoding and the
        geometry net when normals are analytic (the gradient is one backward through it); finite
        differences evaluate their stencil's points besides, in one batch."""
        if self.cfg.normals != "analytic":
            value, feat = self._raw(x)
            if self.cfg.normals != "finite_difference":
                raise ValueError(f"unknown normals method {self.cfg.normals!r}: 'analytic' or 'finite_difference'")
            return value, feat, self._stencil_gradient(lambda p: self._raw(p)[0], x, value)
        return self._with_analytic_gradient(self._raw, x)

    def _stencil_gradient(self, fn, x: Tensor, value: Tensor | None = None) -> Tensor:
        """Finite differences of fn around x [N,3] on cfg.normal_stencil; `value`: fn(x) when the caller has
        it (the forward stencil needs it)."""
        eps = self.cfg.normal_eps
        stencil = self.cfg.normal_stencil
        if stencil not in _STENCILS:
            raise ValueError(f"unknown normal_stencil {stencil!r}: one of {sorted(_STENCILS)}")
        k = _stencil_offsets(stencil, x.device, x.dtype)
        pts = (x[:, None, :] + eps * k[None]).reshape(-1, 3)
        if stencil == "forward":
            value = fn(x) if value is None else value
            return (fn(pts).reshape(-1, 3) - value[:, None]) / eps
        # symmetric stencils: sum_k k k^T = m I, so grad f ~ sum_k k f(x + eps k) / (m eps)
        m = _STENCIL_NORMS[stencil]
        values = fn(pts).reshape(-1, k.shape[0])
        return (values[..., None] * k[None]).sum(dim=1) / (m * eps)


class DensityField(_EncodedField):
    """NeRF geometry: sigma(x) = softplus(raw(x) + blob(x) - 1) (threestudio's shifted softplus)."""

    def __init__(self, cfg: FieldConfig):
        super().__init__(cfg)
        self.geometry_net = _mlp(self.encoding.n_output_dims, 1 + cfg.n_feature_dims, cfg.hidden_dim,
                                 cfg.n_hidden_layers)
        self.color_net = _mlp(cfg.n_feature_dims, 3, cfg.hidden_dim, cfg.n_hidden_layers)

    def _blob(self, x: Tensor) -> Tensor:
        return self.cfg.density_blob_scale * (1 - x.norm(dim=-1) / self.cfg.init_radius)

    def _raw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.geometry_net(self.encode(x))
        sigma = F.softplus(h[:, 0] + self._blob(x) - 1.0)
        return sigma, h[:, 1:]

    def density(self, x: Tensor) -> Tensor:
        """x [N,3] -> sigma [N]."""
        return self._raw(x)[0]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [N,3] -> (sigma [N], albedo [N,3] in [0,1])."""
        sigma, feat = self._raw(x)
        return sigma, torch.sigmoid(self.color_net(feat))

    def color(self, x: Tensor) -> Tensor:
        return self.forward(x)[1]

    def normal(self, x: Tensor) -> Tensor:
        """Outward unit normals -grad sigma / |grad sigma|, [N,3]."""
        return F.normalize(-self._gradient(self.density, x), dim=-1)

    def forward_with_normals(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """forward() and normal() together, from one evaluation of the field (analytic normals)."""
        sigma, feat, grad = self._raw_with_gradient(x)
        return sigma, torch.sigmoid(self.color_net(feat)), F.normalize(-grad, dim=-1)


class SdfField(_EncodedField):
    """NeuS geometry: sdf(x) = raw(x) + (|x| - init_radius), negative inside."""

    def __init__(self, cfg: FieldConfig):
        super().__init__(cfg)
        self.geometry_net = _mlp(self.encoding.n_output_dims, 1 + cfg.n_feature_dims, cfg.hidden_dim,
                                 cfg.n_hidden_layers)
        self.color_net = _mlp(cfg.n_feature_dims, 3, cfg.hidden_dim, cfg.n_hidden_layers)
        # the last layer starts at zero so that the initial field is exactly the sphere
        nn.init.zeros_(self.geometry_net[-1].weight)
        nn.init.zeros_(self.geometry_net[-1].bias)

    def _raw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.geometry_net(self.encode(x))
        return h[:, 0] + (x.norm(dim=-1) - self.cfg.init_radius), h[:, 1:]

    def sdf(self, x: Tensor) -> Tensor:
        """x [N,3] -> signed distance [N]."""
        return self._raw(x)[0]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [N,3] -> (sdf [N], albedo [N,3])."""
        s, feat = self._raw(x)
        return s, torch.sigmoid(self.color_net(feat))

    def color(self, x: Tensor) -> Tensor:
        return self.forward(x)[1]

    def gradient(self, x: Tensor) -> Tensor:
        """grad sdf [N,3] (FieldConfig.normals; differentiable w.r.t. the parameters)."""
        return self._gradient(self.sdf, x)

    def forward_with_gradient(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """forward() and gradient() together, from one evaluation of the field (analytic normals)."""
        s, feat, grad = self._raw_with_gradient(x)
        return s, torch.sigmoid(self.color_net(feat)), grad


class ColorField(_EncodedField):
    """Albedo on a surface defined elsewhere (DMTet, texture stage): x [N,3] -> rgb [N,3]."""

    def __init__(self, cfg: FieldConfig):
        super().__init__(cfg)
        self.color_net = _mlp(self.encoding.n_output_dims, 3, cfg.hidden_dim, cfg.n_hidden_layers)

    def color(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.color_net(self.encode(x)))

    def color_in_chunks(self, x: Tensor, chunk: int) -> Tensor:
        """color(x) [N,3], `chunk` points at a time when gradients are on and N > chunk, each chunk's activations
        dropped and recomputed in the backward pass (activation checkpointing, as the volume renderer's
        recompute_chunks): the same values and gradients, and what waits for the backward pass is x and the
        colours, not the encoding's activations (PyTorch hash grid: about 3 kB a point with 16 levels)."""
        if not torch.is_grad_enabled() or x.shape[0] <= chunk:
            return self.color(x)
        return torch.cat([checkpoint(self.color, x[i:i + chunk], use_reentrant=False)
                          for i in range(0, x.shape[0], chunk)])

    def forward(self, x: Tensor) -> Tensor:
        return self.color(x)


def grid_points(bound: float, resolution: int, device: torch.device | str = "cpu") -> Tensor:
    """Cell-vertex lattice of [-bound, bound]^3, [R,R,R,3] indexed (x, y, z)."""
    t = torch.linspace(-bound, bound, resolution, device=device)
    return torch.stack(torch.meshgrid(t, t, t, indexing="ij"), dim=-1)


@torch.no_grad()
def evaluate_on_grid(fn, bound: float, resolution: int, device: torch.device | str,
                     chunk: int = 65536) -> Tensor:
    """fn: [N,3] -> [N]; returns values on grid_points(bound, resolution), [R,R,R]."""
    pts = grid_points(bound, resolution, device).reshape(-1, 3)
    vals = torch.cat([fn(pts[i:i + chunk]) for i in range(0, pts.shape[0], chunk)])
    return vals.reshape(resolution, resolution, resolution)
