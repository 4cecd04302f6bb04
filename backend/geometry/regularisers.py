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
Both skip the padding faces of fixed-size buffers (degenerate, all corners one vertex: real_faces) by
weighting them 0, and index by no mask, so that an optimisation step never waits for the GPU (issue 28).
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


def real_faces(faces: Tensor) -> Tensor:
    """[F] bool: the faces that are triangles, not the padding of a fixed-size face buffer
    (marching.PaddedSurface), whose three corners are one vertex."""
    return (faces[:, 0] != faces[:, 1]) | (faces[:, 1] != faces[:, 2])


def _face_edges(faces: Tensor) -> Tensor:
    """[3F,2] the edges (0,1), (1,2), (2,0) of every face, all first edges first. Written with slices, not a
    list index, which would copy the list to the device and wait there."""
    return torch.cat([faces[:, :2], faces[:, 1:], torch.stack([faces[:, 2], faces[:, 0]], dim=-1)])


def _adjacent_face_pairs(faces: Tensor, n_vertices: int) -> tuple[Tensor, Tensor]:
    """(pairs [3F-1,2] of face ids, weight [3F-1]): the faces whose edges are neighbours in the sorted edge
    list, with weight 1 where the two share an edge and both are real (real_faces), else 0. A manifold
    edge gives one pair; an edge of k faces gives k-1. Fixed-size, so it never waits for the device."""
    f = faces.shape[0]
    edges = torch.sort(_face_edges(faces), dim=1).values
    keys = edges[:, 0] * n_vertices + edges[:, 1]
    face_ids = torch.arange(f, device=faces.device).repeat(3)
    keys, order = torch.sort(keys)
    face_ids = face_ids[order]
    real = real_faces(faces)
    same = (keys[1:] == keys[:-1]) & real[face_ids[:-1]] & real[face_ids[1:]]
    return torch.stack([face_ids[:-1], face_ids[1:]], dim=-1), same


def mesh_normal_consistency(vertices: Tensor, faces: Tensor) -> Tensor:
    """Mean (1 - cos) over pairs of real faces sharing an edge (0 without any)."""
    if faces.shape[0] == 0:
        return vertices.sum() * 0
    p = vertices[faces]
    n = F.normalize(torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), dim=-1)
    pairs, weight = _adjacent_face_pairs(faces, vertices.shape[0])
    weight = weight.to(n.dtype)
    per_pair = 1 - (n[pairs[:, 0]] * n[pairs[:, 1]]).sum(-1)
    return (per_pair * weight).sum() / weight.sum().clamp_min(1.0)


def mesh_laplacian(vertices: Tensor, faces: Tensor) -> Tensor:
    """Mean over the vertices of real faces of |v - mean of its neighbours|^2 (0 without any)."""
    if faces.shape[0] == 0:
        return vertices.sum() * 0
    v = vertices.shape[0]
    edges = _face_edges(faces)
    edges = torch.cat([edges, edges.flip(1)])
    weight = real_faces(faces).to(vertices.dtype).repeat(6)  # per edge, in _face_edges' order, twice
    nbr_sum = torch.zeros_like(vertices).index_add(0, edges[:, 0], vertices[edges[:, 1]] * weight[:, None])
    degree = torch.zeros(v, device=vertices.device, dtype=vertices.dtype).index_add(0, edges[:, 0], weight)
    used = (degree > 0).to(vertices.dtype)
    lap = vertices - nbr_sum / degree.clamp_min(1.0)[:, None]
    return ((lap**2).sum(-1) * used).sum() / used.sum().clamp_min(1.0)
