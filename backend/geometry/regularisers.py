"""Regularisers used by the geometry stages (each returns a scalar tensor).

Volume (NeRF/NeuS):
- orientation (Ref-NeRF, Verbin et al. 2022): sum_i w_i max(0, n_i . d)^2 per ray, penalising
  normals that face away from the camera; computed by the volume renderer per ray
  (out["orientation"]) and averaged here.
- sparsity: mean sqrt(opacity^2 + 0.01), pulling empty space to zero opacity.
- opacity: binary entropy of the opacity, pushing every pixel to fully empty or fully covered.
- eikonal (Gropp et al. 2020): mean (|grad f| - 1)^2 at sample points of an SDF.
Mesh (DMTet):
- normal consistency: mean (1 - cos) between the normals of faces sharing an edge.
- Laplacian: mean squared distance of each vertex to the centroid of its neighbours (uniform weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def orientation_loss(per_ray_orientation: Tensor, opacity: Tensor) -> Tensor:
    """per_ray_orientation [...,1] from the volume renderer; averaged over covered pixels."""
    return (per_ray_orientation.sum() / opacity.detach().sum().clamp(min=1.0))


def sparsity_loss(opacity: Tensor) -> Tensor:
    return torch.sqrt(opacity**2 + 0.01).mean()


def opacity_entropy_loss(opacity: Tensor, eps: float = 1e-5) -> Tensor:
    o = opacity.clamp(eps, 1 - eps)
    return -(o * torch.log(o) + (1 - o) * torch.log(1 - o)).mean()


def eikonal_loss(gradients: Tensor) -> Tensor:
    """gradients [N,3] of an SDF."""
    return ((gradients.norm(dim=-1) - 1.0) ** 2).mean()


def _interior_edge_faces(faces: Tensor) -> Tensor:
    """[E,2] pairs of faces sharing an edge (edges used by exactly two faces)."""
    f = faces.shape[0]
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = torch.sort(edges, dim=1).values
    n_v = int(faces.max()) + 1 if f else 1
    keys = edges[:, 0] * n_v + edges[:, 1]
    face_ids = torch.arange(f, device=faces.device).repeat(3)
    order = torch.argsort(keys)
    keys, face_ids = keys[order], face_ids[order]
    same = keys[1:] == keys[:-1]
    return torch.stack([face_ids[:-1][same], face_ids[1:][same]], dim=-1)


def mesh_normal_consistency(vertices: Tensor, faces: Tensor) -> Tensor:
    if faces.shape[0] == 0:
        return vertices.sum() * 0
    p = vertices[faces]
    n = F.normalize(torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), dim=-1)
    pairs = _interior_edge_faces(faces)
    if pairs.shape[0] == 0:
        return vertices.sum() * 0
    return (1 - (n[pairs[:, 0]] * n[pairs[:, 1]]).sum(-1)).mean()


def mesh_laplacian(vertices: Tensor, faces: Tensor) -> Tensor:
    if faces.shape[0] == 0:
        return vertices.sum() * 0
    v = vertices.shape[0]
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = torch.cat([edges, edges.flip(1)])
    nbr_sum = torch.zeros_like(vertices).index_add(0, edges[:, 0], vertices[edges[:, 1]])
    degree = torch.zeros(v, device=vertices.device).index_add(
        0, edges[:, 0], torch.ones(edges.shape[0], device=vertices.device))
    used = degree > 0
    lap = vertices[used] - nbr_sum[used] / degree[used, None]
    return (lap**2).sum(-1).mean()
