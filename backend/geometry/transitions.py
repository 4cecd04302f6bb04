"""Hand-over between representations (each stage starts from the previous one's geometry).

- NeRF -> NeuS: the density field is thresholded on a lattice into an occupancy
  volume (largest connected component only, so that floaters are dropped), turned
  into a signed distance volume by two Euclidean distance transforms, and the SDF
  field is fitted to it by regression (plus the NeRF's albedo at the same points).
- NeuS -> DMTet: the tet-grid vertices take the SDF field's values; deformations
  start at zero (the linear zero crossings along the edges already locate the surface).
- Mesh -> DMTet (refining a user's mesh): signed distance of the mesh at the grid
  vertices. |d| is the exact point-triangle distance to candidate triangles found
  through a k-d tree of dense surface samples; the sign comes from the generalised
  winding number (Jacobson et al. 2013), w(p) = sum_f Omega_f(p) / 4 pi with the
  triangle solid angle of Van Oosterom & Strackee, inside where w > 1/2. The winding
  number stays meaningful for meshes with holes or several pieces, where ray parity fails. Its
  sign is found in memory bounded whatever the face count, at a cost near points x sqrt(faces)
  (winding.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial import cKDTree
from torch import Tensor

from . import winding
from .fields import ColorField, DensityField, SdfField, evaluate_on_grid, grid_points
from .mesh import TriMesh
from .metrics import sample_surface

log = logging.getLogger(__name__)


# -- mesh signed distance --------------------------------------------------------------------


def point_triangle_distance(p: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Euclidean distance from points p [N,3] to triangles (a, b, c) [N,3] each (broadcastable)."""
    ab, ac = b - a, c - a
    n = torch.linalg.cross(ab, ac)
    n_len = n.norm(dim=-1, keepdim=True)
    n_hat = n / n_len.clamp(min=1e-20)
    plane = ((p - a) * n_hat).sum(-1)
    q = p - plane[..., None] * n_hat
    # q is inside when it is on the inner side of all three edges
    e0 = (torch.linalg.cross(b - a, q - a) * n).sum(-1)
    e1 = (torch.linalg.cross(c - b, q - b) * n).sum(-1)
    e2 = (torch.linalg.cross(a - c, q - c) * n).sum(-1)
    inside = (e0 >= 0) & (e1 >= 0) & (e2 >= 0) & (n_len[..., 0] > 1e-20)

    def seg(x0: Tensor, x1: Tensor) -> Tensor:
        d = x1 - x0
        t = (((p - x0) * d).sum(-1) / (d * d).sum(-1).clamp(min=1e-20)).clamp(0, 1)
        return (p - (x0 + t[..., None] * d)).norm(dim=-1)

    edge = torch.minimum(torch.minimum(seg(a, b), seg(b, c)), seg(c, a))
    return torch.where(inside, plane.abs(), edge)


def winding_number(points: Tensor, mesh: TriMesh) -> Tensor:
    """Generalised winding number of `mesh` at points [N,3] -> [N] (about 1 inside, 0 outside); exact,
    in memory bounded whatever the face count (winding.py)."""
    return winding.winding_number(points, mesh.vertices[mesh.faces].to(points))


def inside_mesh(points: Tensor, mesh: TriMesh) -> Tensor:
    """Winding number above 1/2 at points [N,3] -> bool [N]: the exact sign, at a cost near
    O(points x sqrt(faces)) (winding.py: Barill et al. 2018's far-field expansion, bounded error)."""
    return winding.inside_mesh(points, mesh.vertices[mesh.faces].to(points))


MAX_SURFACE_SAMPLES = 2_000_000
"""Most area-uniform surface samples for the distance's candidate search. Every triangle is a candidate
through its centroid; the samples find large triangles near their corners, and by area they go to
the large ones. 8 per face would be 16M samples at 2M faces (some 2 GB of arrays and trees) for
triangles whose centroids are already denser than any grid."""


def mesh_unsigned_distance(mesh: TriMesh, points: Tensor, k: int = 8, samples_per_face: int = 8,
                           chunk: int = 4096) -> Tensor:
    """Distance of points [N,3] to the surface of `mesh` -> [N] (on the points' device)."""
    m = mesh.to("cpu")
    n_samples = max(min(samples_per_face * m.num_faces, MAX_SURFACE_SAMPLES), 20000)
    samples, _ = sample_surface(m, n_samples, torch.Generator().manual_seed(0))
    # each surface sample remembers its triangle; centroids are added so small triangles are never missed
    tri = m.vertices[m.faces].double().numpy()
    pts_all = np.concatenate([samples, tri.mean(1)])
    face_all = np.concatenate([_faces_of_samples(tri, samples), np.arange(m.num_faces)])
    q = points.detach().cpu().double().numpy()
    _, nn = cKDTree(pts_all).query(q, k=k)
    cand = torch.as_tensor(face_all[nn])  # [N,k]
    tri_t = torch.as_tensor(tri, dtype=torch.float32)
    p_all = torch.as_tensor(q, dtype=torch.float32)
    dist = []
    for i in range(0, q.shape[0], chunk):
        t = tri_t[cand[i:i + chunk]]  # [n,k,3,3]
        d = point_triangle_distance(p_all[i:i + chunk, None, :], t[..., 0, :], t[..., 1, :], t[..., 2, :])
        dist.append(d.amin(dim=-1))
    return torch.cat(dist).float().to(points.device)


def mesh_signed_distance(mesh: TriMesh, points: Tensor, lattice_resolution: int | None = None,
                         spacing: float | None = None) -> Tensor:
    """Signed distance of points [N,3] to `mesh` (negative inside) -> [N].

    When the points are a lattice (grid_points / make_tet_grid order, `lattice_resolution`
    points per axis, `spacing` apart), the winding number is evaluated exactly only within
    1.5 cells of the surface; every 6-connected region of the remaining lattice lies on one
    side of the surface (a lattice edge that crosses the surface has both ends within one cell
    of it), so it takes the majority sign of a few of its points, or exact signs everywhere
    when those disagree (open meshes whose inside leaks out through a hole)."""
    unsigned = mesh_unsigned_distance(mesh, points)
    pts = points.detach().float()
    mesh_d = mesh.to(points.device)
    if lattice_resolution is None or spacing is None:
        inside = inside_mesh(pts, mesh_d)
        return torch.where(inside, -unsigned, unsigned)
    r = lattice_resolution
    inside = torch.zeros(pts.shape[0], dtype=torch.bool, device=points.device)
    band = unsigned <= 1.5 * spacing
    if band.any():
        inside[band] = inside_mesh(pts[band], mesh_d)
    labels, n = ndimage.label((~band).reshape(r, r, r).cpu().numpy())
    labels = torch.as_tensor(labels.reshape(-1), device=points.device)
    gen = torch.Generator().manual_seed(0)
    for comp in range(1, n + 1):
        idx = (labels == comp).nonzero().squeeze(-1)
        probe = idx[torch.randperm(idx.numel(), generator=gen)[:32].to(idx.device)]
        votes = inside_mesh(pts[probe], mesh_d)
        agreement = float(votes.float().mean())
        if agreement in (0.0, 1.0):
            inside[idx] = bool(agreement == 1.0)
        else:
            inside[idx] = inside_mesh(pts[idx], mesh_d)
    return torch.where(inside, -unsigned, unsigned)


def _faces_of_samples(tri: np.ndarray, samples: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """The triangle each surface sample lies on (nearest centroid among the 16 closest, by exact distance),
    in blocks of `chunk` samples (all at once took [8 F, 16, 3, 3] float64: 18 GB at 2M triangles)."""
    centroids = tri.mean(1)
    tree = cKDTree(centroids)
    tri_t = torch.as_tensor(tri)
    out = np.empty(len(samples), dtype=np.int64)
    for i in range(0, len(samples), chunk):
        s = samples[i:i + chunk]
        _, cand = tree.query(s, k=min(16, len(centroids)))
        cand = cand.reshape(len(s), -1)
        t = tri_t[torch.as_tensor(cand)]
        d = point_triangle_distance(torch.as_tensor(s)[:, None], t[..., 0, :], t[..., 1, :], t[..., 2, :])
        out[i:i + chunk] = cand[np.arange(len(s)), d.argmin(-1).numpy()]
    return out


# -- NeRF -> NeuS ----------------------------------------------------------------------------


def occupancy_to_sdf(occupied: np.ndarray, spacing: float) -> np.ndarray:
    """Boolean volume -> signed distance volume (negative inside), in world units, largest component only."""
    labels, n = ndimage.label(occupied)
    if n > 1:
        sizes = ndimage.sum(occupied, labels, index=np.arange(1, n + 1))
        occupied = labels == (1 + int(np.argmax(sizes)))
    outside = ndimage.distance_transform_edt(~occupied)
    inside = ndimage.distance_transform_edt(occupied)
    # the surface lies half a cell between an occupied and an empty cell centre
    return ((outside - inside) * spacing - np.where(occupied, -0.5, 0.5) * spacing).astype(np.float32)


def density_to_sdf_volume(density: DensityField, threshold: float, resolution: int, device
                          ) -> tuple[np.ndarray, float]:
    """(sdf volume [R,R,R] on grid_points(bound, R), its spacing) from a thresholded density field."""
    bound = density.bound
    values = evaluate_on_grid(density.density, bound, resolution, device).cpu().numpy()
    occupied = values > threshold
    if not occupied.any():
        log.warning("density field is empty at threshold %.3g; NeuS starts from its initial sphere", threshold)
    spacing = 2 * bound / (resolution - 1)
    return occupancy_to_sdf(occupied, spacing), spacing


def sample_volume(volume: Tensor, bound: float, points: Tensor) -> Tensor:
    """Trilinear lookup of a [R,R,R] lattice volume (grid_points layout) at world points [N,3] -> [N]."""
    # grid_sample wants (x->W, y->H, z->D) in [-1,1]; our volume is indexed (x, y, z) = (D, H, W)
    g = (points / bound).flip(-1)[None, None, None]  # [1,1,1,N,3]
    return F.grid_sample(volume[None, None], g, align_corners=True, padding_mode="border").reshape(-1)


def fit_sdf_field(
    sdf_field: SdfField,
    target_sdf: Callable[[Tensor], Tensor],
    target_color: Callable[[Tensor], Tensor] | None,
    *,
    steps: int,
    batch: int,
    lr: float,
    generator: torch.Generator,
    device,
    surface_band: float = 0.05,
) -> float:
    """Regress the SDF field (and its albedo) onto target functions; returns the final SDF L1 error.
    Half of each batch is uniform in the box, half near the target's surface (|sdf| < band), where
    accuracy matters most."""
    opt = torch.optim.Adam(sdf_field.parameters(), lr=lr)
    bound = sdf_field.bound
    err = float("nan")
    pool = (torch.rand(batch * 8, 3, generator=generator) * 2 - 1).to(device) * bound
    with torch.no_grad():
        near = pool[target_sdf(pool).abs() < surface_band]
    for _ in range(steps):
        x = (torch.rand(batch, 3, generator=generator) * 2 - 1).to(device) * bound
        if near.shape[0] > 0:
            pick = torch.randint(0, near.shape[0], (batch,), generator=generator).to(device)
            jitter = (torch.rand(batch, 3, generator=generator).to(device) - 0.5) * surface_band
            x = torch.cat([x, near[pick] + jitter])
        with torch.no_grad():
            tgt = target_sdf(x)
            tgt_rgb = target_color(x) if target_color is not None else None
        pred, rgb = sdf_field(x)
        loss = F.l1_loss(pred, tgt)
        err = loss.item()
        if tgt_rgb is not None:
            loss = loss + F.mse_loss(rgb, tgt_rgb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return err


def sdf_field_from_density(
    density: DensityField,
    sdf_field: SdfField,
    *,
    threshold: float,
    resolution: int,
    steps: int,
    batch: int,
    lr: float,
    generator: torch.Generator,
    device,
) -> float:
    """NeRF -> NeuS: fit `sdf_field` to the thresholded density's signed distance and albedo."""
    volume, _ = density_to_sdf_volume(density, threshold, resolution, device)
    vol = torch.as_tensor(volume, device=device)
    bound = density.bound
    err = fit_sdf_field(
        sdf_field, lambda x: sample_volume(vol, bound, x), density.color,
        steps=steps, batch=batch, lr=lr, generator=generator, device=device,
        surface_band=3 * 2 * bound / resolution,
    )
    log.info("NeuS initialised from the density field: mean |sdf error| %.4f", err)
    return err


def sdf_field_from_mesh(
    mesh: TriMesh,
    sdf_field: SdfField,
    *,
    resolution: int,
    steps: int,
    batch: int,
    lr: float,
    generator: torch.Generator,
    device,
) -> float:
    """Mesh -> NeuS (an artist's edit arriving after the NeRF stage): fit `sdf_field` to the mesh's
    signed distance, sampled once on a lattice, and its vertex colours."""
    bound = sdf_field.bound
    points = grid_points(bound, resolution, device).reshape(-1, 3)
    spacing = 2 * bound / (resolution - 1)
    volume = mesh_signed_distance(mesh.to(device), points, lattice_resolution=resolution, spacing=spacing)
    vol = volume.reshape(resolution, resolution, resolution)
    err = fit_sdf_field(
        sdf_field, lambda x: sample_volume(vol, bound, x), vertex_color_function(mesh),
        steps=steps, batch=batch, lr=lr, generator=generator, device=device, surface_band=3 * spacing,
    )
    log.info("NeuS initialised from a mesh (%d faces): mean |sdf error| %.4f", mesh.num_faces, err)
    return err


# -- -> DMTet ----------------------------------------------------------------------------------


@torch.no_grad()
def grid_sdf_from_field(sdf_fn: Callable[[Tensor], Tensor], vertices: Tensor, chunk: int = 65536) -> Tensor:
    """SDF values at tet-grid vertices [V,3] -> [V]."""
    return torch.cat([sdf_fn(vertices[i:i + chunk]) for i in range(0, vertices.shape[0], chunk)])


def fit_color_field(
    color_field: ColorField,
    target_color: Callable[[Tensor], Tensor],
    surface_points: Tensor,
    *,
    steps: int,
    batch: int,
    lr: float,
    generator: torch.Generator,
) -> None:
    """Regress a colour field onto target albedo at (jittered) surface points [N,3]."""
    opt = torch.optim.Adam(color_field.parameters(), lr=lr)
    if surface_points.shape[0] == 0:
        return
    for _ in range(steps):
        pick = torch.randint(0, surface_points.shape[0], (batch,), generator=generator).to(surface_points.device)
        x = surface_points[pick]
        with torch.no_grad():
            tgt = target_color(x)
        loss = F.mse_loss(color_field.color(x), tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def vertex_color_function(mesh: TriMesh) -> Callable[[Tensor], Tensor]:
    """Albedo of the nearest vertex of `mesh` (grey where the mesh has no colours)."""
    if mesh.vertex_colors is None:
        return lambda x: torch.full_like(x, 0.7)
    tree = cKDTree(mesh.vertices.detach().cpu().numpy())
    colors = mesh.vertex_colors

    def fn(x: Tensor) -> Tensor:
        idx = tree.query(x.detach().cpu().numpy())[1]
        return colors[torch.as_tensor(idx)].to(x)

    return fn
