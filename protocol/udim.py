"""UDIM tiles: UVs beyond the 0-1 square, one texture image per unit square (a tile).

Tile numbers follow the UDIM convention Blender uses: the square [u, u + 1) x [v, v + 1) (u in 0..9, v >= 0)
is tile 1001 + u + 10 v. A texture-only refine whose request declares `udim_tiles` gets one base-colour map
per declared tile (TexturePayload.tile), each covering its tile's square; every face's UVs must lie inside
one declared tile. Pure numpy: the add-on declares the tiles of a mesh with `face_tiles` before sending.
"""

from __future__ import annotations

import numpy as np

from .errors import ValidationError

FIRST_TILE = 1001
LAST_TILE = 1100
"""Tiles 1001..1100: ten columns (u 0..9) and ten rows (v 0..9)."""
EDGE_TOLERANCE = 1e-5
"""How far (in UV units) a corner may lie past its tile's edge: a corner on the edge belongs to both."""


def check_tile(tile: object, label: str) -> int:
    if isinstance(tile, bool) or not isinstance(tile, int) or not FIRST_TILE <= tile <= LAST_TILE:
        raise ValidationError(f"{label} must be a UDIM tile number in [{FIRST_TILE}, {LAST_TILE}], got {tile!r}")
    return tile


def tile_offset(tile: int) -> tuple[int, int]:
    """(u, v) of the tile's lower-left corner."""
    index = tile - FIRST_TILE
    return index % 10, index // 10


def face_tiles(uvs: np.ndarray) -> np.ndarray:
    """int64 [F]: the tile of every face of per-corner UVs [F,3,2] (ValidationError naming the first face
    that lies in no tile, or crosses from one tile into another)."""
    centre = uvs.astype(np.float64).mean(1)
    col, row = np.floor(centre[:, 0]).astype(np.int64), np.floor(centre[:, 1]).astype(np.int64)
    outside = (col < 0) | (col > 9) | (row < 0) | (row > 9)
    if outside.any():
        f = int(np.flatnonzero(outside)[0])
        raise ValidationError(f"face {f}'s UVs lie at {np.round(centre[f], 3).tolist()}, in no UDIM tile (u 0-10, "
                              "v 0-10): move them into a tile")
    low = np.stack([col, row], -1)[:, None, :]
    crosses = ((uvs < low - EDGE_TOLERANCE) | (uvs > low + 1 + EDGE_TOLERANCE)).any(axis=(1, 2))
    if crosses.any():
        f = int(np.flatnonzero(crosses)[0])
        raise ValidationError(f"face {f} crosses the edge of UDIM tile {FIRST_TILE + col[f] + 10 * row[f]}: keep "
                              "each face's UVs inside one tile")
    return FIRST_TILE + col + 10 * row


def check_udim_tiles(mode: str, tiles: list[int], uvs: np.ndarray | None, masked: bool) -> None:
    """A request's udim_tiles (validate_spec): valid numbers, on a texture-only refine of a mesh with UVs, and
    every face of it in a declared tile."""
    if not tiles:
        return
    if not isinstance(tiles, list) or len(tiles) > LAST_TILE - FIRST_TILE + 1:
        raise ValidationError("udim_tiles must be a list of at most 100 tile numbers")
    for tile in tiles:
        check_tile(tile, "udim_tiles[]")
    if len(set(tiles)) != len(tiles):
        raise ValidationError(f"udim_tiles names a tile twice: {tiles}")
    if mode != "texture" or uvs is None:
        raise ValidationError("UDIM tiles are for texture-only refines of a mesh with UVs (mode 'texture', "
                              "input_mesh.uvs): its UVs are kept, one image per tile")
    if masked:
        raise ValidationError("a masked refine repaints one base-colour map: it does not take udim_tiles yet; "
                              "refine without the mask, or without the tiles")
    present = sorted(set(face_tiles(uvs).tolist()))
    missing = [t for t in present if t not in tiles]
    if missing:
        raise ValidationError(f"input_mesh has UVs in UDIM tile {', '.join(map(str, missing))}, which the request "
                              f"does not declare (it declares {', '.join(map(str, sorted(tiles)))}): add the tile, "
                              "or move those UVs into a declared tile")
