"""A textured box and a half of it as a refine mask, and, worked out here without the backend's code, which of
its vertices and texels lie outside the mask and its border (where a masked refine must return the input).
numpy only at import: the add-on's tests use it inside Blender too (the payload helpers import the protocol
and PIL when called)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TEXTURE_SIDE = 128


def box_mesh(cells: int = 4, offset=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """(vertices float32 [V,3], faces uint32 [F,3]): a 1 m cube centred on `offset`, each side a grid of
    cells x cells squares of two triangles, vertices shared along the edges, faces wound outward."""
    t = np.linspace(-0.5, 0.5, cells + 1)
    points, quads = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            a, b = [i for i in range(3) if i != axis]
            grid = np.zeros((cells + 1, cells + 1, 3))
            grid[..., axis] = 0.5 * sign
            grid[..., a], grid[..., b] = np.meshgrid(t, t, indexing="ij")
            base = sum(len(p) for p in points)
            points.append(grid.reshape(-1, 3))
            idx = base + np.arange((cells + 1) ** 2).reshape(cells + 1, cells + 1)
            for i in range(cells):
                for j in range(cells):
                    quads.append((idx[i, j], idx[i + 1, j], idx[i + 1, j + 1], idx[i, j + 1]))
    raw = np.concatenate(points)
    unique, inverse = np.unique(np.round(raw, 6), axis=0, return_inverse=True)
    faces = []
    for q in np.asarray(quads):
        q = inverse.reshape(-1)[q]
        for tri in ((q[0], q[1], q[2]), (q[0], q[2], q[3])):
            p = unique[list(tri)]
            if np.dot(np.cross(p[1] - p[0], p[2] - p[0]), p.mean(0)) < 0:
                tri = (tri[0], tri[2], tri[1])
            faces.append(tri)
    return (unique + np.asarray(offset)).astype(np.float32), np.asarray(faces, np.uint32)


def grid_uvs(num_faces: int) -> np.ndarray:
    """Per-corner UVs [F,3,2]: each pair of faces in a cell of its own on a square grid, inset by 2 texels at
    TEXTURE_SIDE (a UV layout with no overlap, made without xatlas)."""
    n = int(np.ceil(np.sqrt(num_faces / 2)))
    cell = 1.0 / n
    inset = 2.0 / TEXTURE_SIDE
    uvs = np.zeros((num_faces, 3, 2), np.float32)
    for f in range(num_faces):
        i, half = divmod(f, 2)
        lo = np.array([(i % n) * cell, (i // n) * cell]) + inset
        hi = lo + cell - 2 * inset
        uvs[f] = [(lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1])] if half == 0 else \
            [(lo[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1])]
    return uvs


def colour_texels(colour, noise: bool = True) -> np.ndarray:
    """uint8 [S,S,3] of `colour` (0-255), with noise so that any change of a texel shows."""
    pixels = np.broadcast_to(np.array(colour, np.int16), (TEXTURE_SIDE, TEXTURE_SIDE, 3)).copy()
    if noise:
        pixels += np.random.default_rng(5).integers(-12, 13, pixels.shape, dtype=np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8)


@dataclass
class MaskRegions:
    weights: np.ndarray
    """float32 [V]: 1 above x = centre, else 0."""
    kept_vertices: np.ndarray
    """[V] bool: vertices farther than the border from every face that touches a weighted vertex."""
    kept_texels: np.ndarray
    """[H,W] bool: texels inside those vertices' faces, 3 texels clear of every other face's UV triangle."""
    masked_texels: np.ndarray
    """[H,W] bool: texels inside faces all of whose vertices have weight 1, 3 texels clear of other faces."""


def half_regions(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, centre_x: float,
                 feather: float) -> MaskRegions:
    """The vertices above x = centre_x weighted 1, and what a masked refine must keep."""
    weights = (vertices[:, 0] > centre_x + 1e-4).astype(np.float32)
    touched = (weights[faces] > 0).any(1)
    region = vertices[np.unique(faces[touched])]
    # every point of the touched faces has x >= the least x of their vertices: a vertex whose x is more than
    # the border below that is farther than the border from the weighted surface
    kept_v = vertices[:, 0] < region[:, 0].min() - feather - 1e-4
    kept_faces = kept_v[faces].all(1)
    full_faces = (weights[faces] == 1).all(1)
    return MaskRegions(weights, kept_v, _clear_texels(uvs, kept_faces), _clear_texels(uvs, full_faces))


def _inside(uvs: np.ndarray, which: np.ndarray) -> np.ndarray:
    """[S,S] bool: texel centres inside the UV triangles `which` (row 0 at the top, v up)."""
    s = TEXTURE_SIDE
    ys, xs = np.mgrid[0:s, 0:s]
    u, v = (xs + 0.5) / s, 1.0 - (ys + 0.5) / s
    out = np.zeros((s, s), bool)
    for tri in uvs[which].astype(np.float64):
        (ax, ay), (bx, by), (cx, cy) = tri
        det = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy)
        if abs(det) < 1e-12:
            continue
        l0 = ((by - cy) * (u - cx) + (cx - bx) * (v - cy)) / det
        l1 = ((cy - ay) * (u - cx) + (ax - cx) * (v - cy)) / det
        out |= (l0 >= 0) & (l1 >= 0) & (1 - l0 - l1 >= 0)
    return out


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        out = grown
    return out


def _clear_texels(uvs: np.ndarray, which: np.ndarray) -> np.ndarray:
    return _inside(uvs, which) & ~_dilate(_inside(uvs, ~which), 3)


# -- as protocol payloads (backend tests) ----------------------------------------------------------------


@dataclass
class MaskedBox:
    payload: object
    """MeshPayload with UVs and a base-colour PNG."""
    mask: object
    """RefineMask of the +X half."""
    kept_vertices: np.ndarray
    kept_texels: np.ndarray
    masked_texels: np.ndarray


def png(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def texels(payload) -> np.ndarray:
    """The payload's base-colour map's bytes [H,W,C] uint8."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(payload.texture("base_color").png)) as im:
        return np.array(im)


def masked_box(colour=(200, 30, 30), feather: float = 0.1, offset=(2.0, 0.0, 1.0), prompt: str = "",
               noise: bool = True) -> MaskedBox:
    """The box at `offset` in the world, its +X half weighted 1, its base-colour map `colour`."""
    from dreampolish.protocol.scene import MeshPayload, TexturePayload

    vertices, faces = box_mesh(offset=offset)
    payload = MeshPayload(vertices, faces, uvs=grid_uvs(len(faces)),
                          textures=[TexturePayload("base_color", png=png(colour_texels(colour, noise)))])
    return half_masked(payload, offset[0], feather, prompt)


def half_masked(payload, centre_x: float, feather: float, prompt: str = "") -> MaskedBox:
    """`payload` (a box with UVs) with the vertices above x = centre_x weighted 1, and what must be kept."""
    from dreampolish.protocol.refine_mask import RefineMask

    r = half_regions(payload.vertices, payload.faces, payload.uvs, centre_x, feather)
    return MaskedBox(payload, RefineMask(r.weights, feather=feather, prompt=prompt), r.kept_vertices,
                     r.kept_texels, r.masked_texels)
