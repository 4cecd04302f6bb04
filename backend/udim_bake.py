"""A texture-only refine on UDIM tiles (the request's udim_tiles, protocol/udim.py): the colour field baked once
per declared tile, on the faces whose UVs lie in it, into a map of its own covering the tile's square."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from dreampolish.protocol.scene import TexturePayload
from dreampolish.protocol.udim import face_tiles, tile_offset

from . import bake

logger = logging.getLogger(__name__)


def bake_tiles(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, tiles: list[int],
               colors_at: Callable[[np.ndarray], np.ndarray], size: int, padding: int | None) -> list[TexturePayload]:
    """One base-colour TexturePayload per declared tile that has faces, in tile order: the field's colours at
    the surface point of every texel of the tile (its faces' UVs moved to the 0-1 square), charts dilated as
    the one-atlas bake does (bake.bake_color). vertices [V,3] in the frame the colours are asked in."""
    of_face = face_tiles(uvs)
    maps = []
    for tile in sorted(tiles):
        on_tile = of_face == tile
        if not on_tile.any():
            logger.info("UDIM tile %d: no face, no map", tile)
            continue
        u0, v0 = tile_offset(tile)
        local = (uvs[on_tile] - np.array([u0, v0], np.float32)).astype(np.float32)
        image = bake.bake_color(vertices, faces[on_tile], local, colors_at, size, padding)
        maps.append(TexturePayload("base_color", png=bake.encode_png(image), tile=tile))
        logger.info("UDIM tile %d: %d faces", tile, int(on_tile.sum()))
    return maps
