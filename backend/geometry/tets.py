"""Tetrahedral grids generated in code, for any resolution (no grid files to download).

The cube [-bound, bound]^3 is split into res^3 cells, and each cell into the 6
tetrahedra of the Kuhn (Freudenthal) subdivision: tet_pi = (v0, v0+e_pi0,
v0+e_pi0+e_pi1, v0+1) for the 6 permutations pi of the axes. Every cell uses the
same main diagonal, so neighbouring cells share faces exactly: the grid is
conforming, and marching tetrahedra on it gives watertight surfaces.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TetGrid:
    vertices: Tensor
    """[V,3] float32 rest positions, V = (res+1)^3."""
    tets: Tensor
    """[T,4] int64 vertex indices, T = 6 res^3."""
    resolution: int
    """Cells per axis."""
    bound: float
    """Half-size of the covered cube."""

    @property
    def spacing(self) -> float:
        """Edge length of one cell."""
        return 2 * self.bound / self.resolution

    def to(self, device: torch.device | str) -> TetGrid:
        return TetGrid(self.vertices.to(device), self.tets.to(device), self.resolution, self.bound)


def make_tet_grid(resolution: int, bound: float, device: torch.device | str = "cpu") -> TetGrid:
    """Kuhn-subdivided cube lattice with `resolution` cells per axis over [-bound, bound]^3."""
    if resolution < 1:
        raise ValueError(f"tet grid resolution must be >= 1, got {resolution}")
    n = resolution + 1
    t = torch.linspace(-bound, bound, n, device=device)
    vertices = torch.stack(torch.meshgrid(t, t, t, indexing="ij"), dim=-1).reshape(-1, 3)

    def vid(i: Tensor, j: Tensor, k: Tensor) -> Tensor:
        return (i * n + j) * n + k

    c = torch.arange(resolution, device=device)
    ci, cj, ck = (a.reshape(-1) for a in torch.meshgrid(c, c, c, indexing="ij"))
    tets = []
    for perm in itertools.permutations(range(3)):
        path = [vid(ci, cj, ck)]
        offs = [0, 0, 0]
        for axis in perm:
            offs[axis] = 1
            path.append(vid(ci + offs[0], cj + offs[1], ck + offs[2]))
        tets.append(torch.stack(path, dim=-1))
    return TetGrid(vertices, torch.cat(tets, dim=0), resolution, bound)
