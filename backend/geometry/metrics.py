"""Geometry fidelity figures (reported by `dreampolish-backend fidelity`).

- chamfer_fraction: symmetric Chamfer distance between area-uniform surface samples,
  CD = (mean_a min_b |a - b| + mean_b min_a |a - b|) / 2 (distances, not squared),
  divided by the target's bounding-box diagonal.
- normal_consistency: mean cosine between each sample's face normal and the face normal
  of its nearest sample on the other surface, averaged over both directions (signed:
  1 = same orientation everywhere, -1 = inside out).
- silhouette_iou: intersection over union of the two meshes' coverage masks (> 0.5),
  pooled over a batch of cameras.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from .mesh import TriMesh


def sample_surface(mesh: TriMesh, n: int, generator: torch.Generator | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform samples: (points [n,3], unit face normals [n,3]) as float64 numpy arrays; none for a
    mesh without faces or without area."""
    v = mesh.vertices.detach().cpu().double()
    f = mesh.faces.detach().cpu()
    if f.shape[0] == 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    p = v[f]
    cross = torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    area = cross.norm(dim=-1)
    if not float(area.sum()) > 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    normals = cross / area.clamp(min=1e-20)[:, None]
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    face = torch.multinomial(area / area.sum(), n, replacement=True, generator=gen)
    u, w = torch.rand(n, generator=gen, dtype=torch.float64), torch.rand(n, generator=gen, dtype=torch.float64)
    # uniform point in a triangle: fold the unit square onto the lower triangle
    flip = u + w > 1
    u, w = torch.where(flip, 1 - u, u), torch.where(flip, 1 - w, w)
    pts = p[face, 0] + u[:, None] * (p[face, 1] - p[face, 0]) + w[:, None] * (p[face, 2] - p[face, 0])
    return pts.numpy(), normals[face].numpy()


def bbox_diagonal(mesh: TriMesh) -> float:
    lo, hi = mesh.bounds()
    return float((hi - lo).norm())


def chamfer_fraction(pred: TriMesh, target: TriMesh, n_samples: int = 20000, seed: int = 0) -> float:
    """Symmetric Chamfer distance as a fraction of the target's bbox diagonal (inf for an empty mesh)."""
    if pred.num_faces == 0:
        return float("inf")
    a, _ = sample_surface(pred, n_samples, torch.Generator().manual_seed(seed))
    b, _ = sample_surface(target, n_samples, torch.Generator().manual_seed(seed + 1))
    d_ab = cKDTree(b).query(a)[0]
    d_ba = cKDTree(a).query(b)[0]
    return float(0.5 * (d_ab.mean() + d_ba.mean()) / bbox_diagonal(target))


def normal_consistency(pred: TriMesh, target: TriMesh, n_samples: int = 20000, seed: int = 0) -> float:
    if pred.num_faces == 0:
        return -1.0
    a, na = sample_surface(pred, n_samples, torch.Generator().manual_seed(seed))
    b, nb = sample_surface(target, n_samples, torch.Generator().manual_seed(seed + 1))
    i_ab = cKDTree(b).query(a)[1]
    i_ba = cKDTree(a).query(b)[1]
    return float(0.5 * ((na * nb[i_ab]).sum(-1).mean() + (nb * na[i_ba]).sum(-1).mean()))


def mask_iou(mask_a: torch.Tensor, mask_b: torch.Tensor, threshold: float = 0.5) -> float:
    a, b = mask_a > threshold, mask_b > threshold
    union = (a | b).sum()
    return float((a & b).sum() / union) if int(union) > 0 else 1.0


def silhouette_iou(pred: TriMesh, target: TriMesh, cameras, rasterizer) -> float:
    """Pooled mask IoU over `cameras` (a CameraBatch), rendered with `rasterizer` (MeshRasterizer)."""
    with torch.no_grad():
        if pred.num_faces == 0:
            return 0.0
        mp = rasterizer.rasterize(pred, cameras).mask
        mt = rasterizer.rasterize(target, cameras).mask
    return mask_iou(mp, mt)
