"""A Texture Only refine of a mesh whose UV map spans UDIM tiles: the tiles its faces lie in are declared with
the request (protocol/udim.py), and the result arrives as one tiled image (one file per tile)."""

from __future__ import annotations

import numpy as np

from .protocol.scene import MeshPayload
from .protocol.udim import face_tiles


def request_tiles(mesh: MeshPayload, mode: str) -> list[int]:
    """The UDIM tiles to declare for a refine of `mesh`: [] unless a Texture Only refine's UVs leave the 0-1
    square. ValidationError names a face that crosses a tile's edge or lies in no tile."""
    if mode != "texture" or mesh.uvs is None or ((mesh.uvs >= 0).all() and (mesh.uvs <= 1).all()):
        return []
    return sorted({int(t) for t in np.unique(face_tiles(mesh.uvs))})
