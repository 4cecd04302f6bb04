"""A textured box and a half of it as a refine mask, and, worked out here without the backend's code, which of
its vertices and texels lie outside the mask and its border (where a masked refine must return the input)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import trimesh
from dreampolish.protocol.refine_mask import RefineMask
from dreampolish.protocol.scene import MeshPayload, TexturePayload
from PIL import Image, ImageDraw
from scipy import ndimage

TEXTURE_SIDE = 128


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def texels(payload: MeshPayload) -> np.ndarray:
    """The base-colour map's bytes [H,W,C] uint8."""
    with Image.open(io.BytesIO(payload.texture("base_color").png)) as im:
        return np.array(im)


def grid_uvs(faces: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Per-corner UVs [F,3,2]: each face in a cell of its own on a square grid, inset by 2 texels at
    TEXTURE_SIDE (a UV layout with no overlap, made without xatlas)."""
    n = int(np.ceil(np.sqrt(len(faces) / 2)))
    cell = 1.0 / n
    inset = 2.0 / TEXTURE_SIDE
    uvs = np.zeros((len(faces), 3, 2), np.float32)
    for f in range(len(faces)):
        i, half = divmod(f, 2)
        col, row = i % n, i // n
        lo = np.array([col * cell, row * cell]) + inset
        hi = lo + cell - 2 * inset
        corners = [(lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1])] if half == 0 else \
            [(lo[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1])]
        uvs[f] = corners
    return uvs


@dataclass
class MaskedBox:
    payload: MeshPayload
    mask: RefineMask
    kept_vertices: np.ndarray
    """[V] bool: vertices farther than the border from every face that touches a weighted vertex."""
    kept_texels: np.ndarray
    """[H,W] bool: texels inside those vertices' faces, 3 texels clear of every other face's UV triangle."""
    masked_texels: np.ndarray
    """[H,W] bool: texels inside faces all of whose vertices have weight 1, 3 texels clear of other faces."""


def masked_box(colour=(200, 30, 30), feather: float = 0.1, offset=(2.0, 0.0, 1.0), prompt: str = "",
               subdivisions: int = 2, noise: bool = True) -> MaskedBox:
    """A 1 m box at `offset` in the world, its +X half (x above the centre) weighted 1, its base-colour map
    `colour` (with noise, so that any change of a texel shows)."""
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    for _ in range(subdivisions):
        box = box.subdivide()
    vertices = (np.asarray(box.vertices) + offset).astype(np.float32)
    faces = np.asarray(box.faces, np.uint32)
    rng = np.random.default_rng(5)
    pixels = np.broadcast_to(np.array(colour, np.int16), (TEXTURE_SIDE, TEXTURE_SIDE, 3)).copy()
    if noise:
        pixels += rng.integers(-12, 13, pixels.shape, dtype=np.int16)
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    uvs = grid_uvs(faces, vertices)
    payload = MeshPayload(vertices, faces, uvs=uvs, textures=[TexturePayload("base_color", png=png(pixels))])
    return half_masked(payload, offset[0], feather, prompt)


def half_masked(payload: MeshPayload, centre_x: float, feather: float, prompt: str = "") -> MaskedBox:
    """`payload` (a box with UVs) with the vertices above x = centre_x weighted 1, and what must be kept."""
    vertices, faces, uvs = payload.vertices, payload.faces, payload.uvs
    weights = (vertices[:, 0] > centre_x + 1e-4).astype(np.float32)
    mask = RefineMask(weights, feather=feather, prompt=prompt)
    touched = (weights[faces] > 0).any(1)
    region = vertices[np.unique(faces[touched])]
    # every point of the touched faces has x >= the least x of their vertices: a vertex whose x is more than
    # the border below that is farther than the border from the weighted surface
    kept_v = vertices[:, 0] < region[:, 0].min() - feather - 1e-4
    kept_faces = kept_v[faces].all(1)
    full_faces = (weights[faces] == 1).all(1)
    return MaskedBox(payload, mask, kept_v, _texels(uvs, kept_faces), _texels(uvs, full_faces))


def _draw(uvs: np.ndarray, which: np.ndarray) -> np.ndarray:
    image = Image.new("L", (TEXTURE_SIDE, TEXTURE_SIDE), 0)
    draw = ImageDraw.Draw(image)
    for tri in uvs[which]:
        draw.polygon([(u * TEXTURE_SIDE - 0.5, (1 - v) * TEXTURE_SIDE - 0.5) for u, v in tri], fill=1)
    return np.array(image).astype(bool)


def _texels(uvs: np.ndarray, which: np.ndarray) -> np.ndarray:
    others = ndimage.binary_dilation(_draw(uvs, ~which), iterations=3)
    return _draw(uvs, which) & ~others
