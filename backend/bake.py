"""UV unwrap and texture baking into a UV atlas.

UV convention: Blender's (and the protocol's) — per-corner UVs, (0, 0) at the
BOTTOM-left of the image. Image row 0 is the TOP row of the PNG, so texel
(row r, col c) has its centre at u = (c + 0.5) / W, v = 1 - (r + 0.5) / H.
protocol/gltf.py's .glb writer takes UVs in this convention and flips v itself.

Baked colour maps hold display (sRGB) values, as PNG base-colour textures do
(glTF 2.0: baseColorTexture is sRGB-encoded). Meshes here are in Blender's
world (Z up); .glb files are written by protocol/gltf.py, the one place that
converts to glTF's Y up.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

logger = logging.getLogger(__name__)

ColorFunction = Callable[[np.ndarray], np.ndarray]
"""points [N,3] float32 (mesh frame) -> colours [N,3] in [0,1] (display/sRGB values)."""


@dataclass
class UnwrapConfig:
    resolution: int = 1024
    """Atlas side in texels that xatlas packs the charts for."""
    padding: int = 4
    """Gap between charts in texels (room for the dilation that hides seams)."""


@dataclass
class TexelCoverage:
    """Which surface point every texel of an atlas shows."""

    face_id: np.ndarray
    """[H,W] int64 face whose surface point the texel shows, -1 for none."""
    bary: np.ndarray
    """[H,W,3] float32 barycentric coordinates of that point in the face (0 where empty)."""
    inside: np.ndarray
    """[H,W] bool: the texel centre lies inside a UV triangle. Texels with a face but not inside form
    the border ring: they show the nearest point of the neighbouring chart triangle, so that bilinear
    fetches along a chart's edge read the surface's own colours."""

    @property
    def filled(self) -> np.ndarray:
        """[H,W] bool: texels that show a surface point (inside a chart or in its border ring)."""
        return self.face_id >= 0

    @property
    def size(self) -> tuple[int, int]:
        return int(self.face_id.shape[1]), int(self.face_id.shape[0])


_GRID_CHARTS: ContextVar[bool] = ContextVar("grid_charts", default=False)


@contextlib.contextmanager
def grid_charts() -> Iterator[None]:
    """unwrap_uv lays every face out as half a cell of a square grid instead of calling xatlas: the dry run's
    charts (commands/dryrun.py). xatlas is host work that holds no GPU memory, and took more than 22 minutes
    of one core on the draft preset's DMTet mesh; what the bake holds on the GPU does not depend on the
    charts (the colour field is evaluated on the covered texels in chunks of a fixed size, bake_color; the
    materials are decomposed from renders of the mesh). Never set in a job."""
    token = _GRID_CHARTS.set(True)
    try:
        yield
    finally:
        _GRID_CHARTS.reset(token)


def grid_uv(n_faces: int) -> np.ndarray:
    """Per-corner UVs [F,3,2] float32, face 2k and 2k+1 the two halves of cell k of a square grid over [0,1]²."""
    side = max(1, int(np.ceil(np.sqrt((n_faces + 1) // 2))))
    cell = np.arange(n_faces) // 2
    x0, y0 = (cell % side) / side, (cell // side) / side
    corners = np.array([[[0, 0], [1, 0], [0, 1]], [[1, 1], [0, 1], [1, 0]]], dtype=np.float64) / side
    uvs = corners[np.arange(n_faces) % 2] + np.stack([x0, y0], -1)[:, None, :]
    return np.ascontiguousarray(uvs, dtype=np.float32)


def unwrap_uv(vertices: np.ndarray, faces: np.ndarray, cfg: UnwrapConfig | None = None) -> np.ndarray:
    """xatlas charts for a mesh, returned as per-corner UVs [F,3,2] float32 of the SAME faces (the
    mesh's vertices and faces are kept; seams live only in the per-corner UVs). In the dry run, grid charts
    of the same shape (grid_charts)."""
    if _GRID_CHARTS.get():
        return grid_uv(len(faces))
    import xatlas

    cfg = cfg or UnwrapConfig()
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(cfg.resolution)
    pack.padding = int(cfg.padding)
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, indices, uvs = atlas[0]
    if indices.shape[0] != faces.shape[0] or not np.array_equal(vmapping[indices], faces):
        # xatlas keeps face order for a single mesh; anything else would scramble the texture.
        raise RuntimeError("xatlas changed the face order of the mesh it unwrapped")
    return np.ascontiguousarray(uvs[indices], dtype=np.float32)


def _barycentric(px: np.ndarray, py: np.ndarray, fid: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Barycentric coordinates [N,3] of points (xs, ys) in triangles fid with corners (px, py) [F,3]."""
    ax, ay = px[fid, 0], py[fid, 0]
    bx, by = px[fid, 1], py[fid, 1]
    cx, cy = px[fid, 2], py[fid, 2]
    det = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy)
    det = np.where(np.abs(det) > 1e-12, det, np.inf)  # a degenerate triangle contains nothing
    l0 = ((by - cy) * (xs - cx) + (cx - bx) * (ys - cy)) / det
    l1 = ((cy - ay) * (xs - cx) + (ax - cx) * (ys - cy)) / det
    return np.stack([l0, l1, 1.0 - l0 - l1], -1)


def rasterize_uv(uvs: np.ndarray, width: int, height: int, border: int = 2) -> TexelCoverage:
    """Rasterise per-corner UV triangles [F,3,2] into texel space: face id and barycentrics per texel
    centre, vectorised over a ragged list of each triangle's bounding-box texels. Texels up to `border`
    texels outside the charts get the nearest chart texel's face, with barycentrics clamped onto it."""
    face_id = np.full((height, width), -1, dtype=np.int64)
    bary_img = np.zeros((height, width, 3), dtype=np.float32)
    if uvs.shape[0] == 0:
        return TexelCoverage(face_id, bary_img, face_id >= 0)
    # Continuous texel coordinates: x = u*W - 0.5 so that integer x is a texel centre; y likewise with v flipped.
    px = uvs[..., 0].astype(np.float64) * width - 0.5
    py = (1.0 - uvs[..., 1].astype(np.float64)) * height - 0.5
    x0 = np.clip(np.ceil(px.min(1)), 0, width - 1).astype(np.int64)
    x1 = np.clip(np.floor(px.max(1)), 0, width - 1).astype(np.int64)
    y0 = np.clip(np.ceil(py.min(1)), 0, height - 1).astype(np.int64)
    y1 = np.clip(np.floor(py.max(1)), 0, height - 1).astype(np.int64)
    bw = np.maximum(x1 - x0 + 1, 0)
    bh = np.maximum(y1 - y0 + 1, 0)
    # Faces entirely between texel centres have an empty box (bw or bh 0) and cover nothing.
    counts = bw * bh
    chunk_faces = max(1, int(4_000_000 // max(1, int(counts.mean() if counts.size else 1))))
    for start in range(0, uvs.shape[0], chunk_faces):
        sl = slice(start, start + chunk_faces)
        c = counts[sl]
        total = int(c.sum())
        if total == 0:
            continue
        fid = np.repeat(np.arange(start, start + c.shape[0]), c)
        local = np.arange(total) - np.repeat(np.cumsum(c) - c, c)
        w = bw[fid]
        xs = x0[fid] + local % np.maximum(w, 1)
        ys = y0[fid] + local // np.maximum(w, 1)
        lam = _barycentric(px, py, fid, xs, ys)
        inside = (lam >= -1e-7).all(-1)
        face_id[ys[inside], xs[inside]] = fid[inside]
        bary_img[ys[inside], xs[inside]] = lam[inside].astype(np.float32)
    inside_mask = face_id >= 0
    if border > 0 and inside_mask.any():
        dist, (iy, ix) = ndimage.distance_transform_edt(~inside_mask, return_indices=True)
        ring_y, ring_x = np.nonzero((dist > 0) & (dist <= border))
        fid = face_id[iy[ring_y, ring_x], ix[ring_y, ring_x]]
        lam = _barycentric(px, py, fid, ring_x.astype(np.float64), ring_y.astype(np.float64))
        # Clamp onto the triangle: drop negative weights and renormalise (a point on its nearest edge).
        lam = np.clip(np.nan_to_num(lam), 0.0, None)
        lam /= np.maximum(lam.sum(-1, keepdims=True), 1e-12)
        face_id[ring_y, ring_x] = fid
        bary_img[ring_y, ring_x] = lam.astype(np.float32)
    return TexelCoverage(face_id, bary_img, inside_mask)


def texel_attribute(coverage: TexelCoverage, faces: np.ndarray, vertex_attr: np.ndarray) -> np.ndarray:
    """Interpolate a per-vertex attribute [V,C] at the filled texels -> [N,C] (row-major order of
    coverage.filled)."""
    fid = coverage.face_id[coverage.filled]
    bary = coverage.bary[coverage.filled]
    corners = vertex_attr[faces[fid]]  # [N,3,C]
    return np.einsum("nk,nkc->nc", bary, corners).astype(np.float32)


def dilate(image: np.ndarray, filled: np.ndarray, padding: int | None = None) -> np.ndarray:
    """Copy each empty texel from its nearest filled texel (Euclidean), so that bilinear filtering and
    mipmaps near a chart border only ever read the chart's own colours. `padding` limits how far (in
    texels) the fill reaches; beyond it empty texels take the mean colour. None fills everything."""
    if filled.all():
        return image
    out = image.copy()
    if not filled.any():
        return out
    dist, (iy, ix) = ndimage.distance_transform_edt(~filled, return_indices=True)
    reach = ~filled if padding is None else (~filled) & (dist <= padding)
    out[reach] = image[iy[reach], ix[reach]]
    if padding is not None:
        far = ~filled & ~reach
        out[far] = image[filled].mean(0)
    return out


def bake_color(
    vertices: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray,
    color_fn: ColorFunction,
    size: int,
    padding: int | None = None,
    chunk: int = 262_144,
) -> np.ndarray:
    """Evaluate a colour field at the surface point of every texel of the atlas and dilate the charts.
    Returns [size,size,3] float32 in [0,1]."""
    coverage = rasterize_uv(uvs, size, size)
    points = texel_attribute(coverage, faces, vertices.astype(np.float32))
    colors = np.empty((points.shape[0], 3), dtype=np.float32)
    for s in range(0, points.shape[0], chunk):
        colors[s : s + chunk] = color_fn(points[s : s + chunk])
    image = np.zeros((size, size, 3), dtype=np.float32)
    image[coverage.filled] = np.clip(colors, 0.0, 1.0)
    logger.debug("baked %d of %d texels", int(coverage.filled.sum()), size * size)
    return dilate(image, coverage.filled, padding)


def face_tangent_frames(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-face tangent T and bitangent B [F,3] (directions of +u and +v on the surface), the frame
    that a tangent-space normal map (OpenGL, +Y = +v) is expressed in."""
    p = vertices[faces].astype(np.float64)
    t = uvs.astype(np.float64)
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    d1, d2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    det = np.where(np.abs(det) < 1e-20, 1e-20, det)
    tangent = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) / det[:, None]
    bitangent = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) / det[:, None]
    return tangent.astype(np.float32), bitangent.astype(np.float32)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals [V,3]."""
    p = vertices[faces].astype(np.float64)
    fn = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    vn = np.zeros_like(vertices, dtype=np.float64)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return (vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _nearest_vertex_normals(points: np.ndarray, detail_vertices: np.ndarray, detail_normals: np.ndarray,
                            neighbours: int) -> np.ndarray:
    """The inverse-distance blend of the normals of each point's `neighbours` nearest detail vertices."""
    from scipy.spatial import cKDTree

    k = min(neighbours, detail_vertices.shape[0])
    dist, idx = cKDTree(detail_vertices.astype(np.float64)).query(points.astype(np.float64), k=k)
    dist, idx = dist.reshape(points.shape[0], k), idx.reshape(points.shape[0], k)
    wts = 1.0 / np.maximum(dist, 1e-9)
    return np.einsum("nk,nkc->nc", wts, detail_normals[idx]) / wts.sum(1, keepdims=True)


def ray_cast(points: np.ndarray, directions: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
             max_distance: float, candidates: int = 24, chunk: int = 32768) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The surface (vertices, faces) found along each point's direction, either way, within `max_distance` (the
    cage): (face [N] int64, barycentrics [N,3] of the nearest hit, hit [N] bool). The triangles tried are the
    `candidates` whose centroids lie nearest the point (Moller-Trumbore on each)."""
    from scipy.spatial import cKDTree

    tri = vertices[faces].astype(np.float64)
    tree = cKDTree(tri.mean(1))
    k = min(candidates, tri.shape[0])
    face = np.zeros(points.shape[0], np.int64)
    bary = np.zeros((points.shape[0], 3), np.float64)
    hit_any = np.zeros(points.shape[0], bool)
    for s in range(0, points.shape[0], chunk):
        o = points[s:s + chunk].astype(np.float64)
        d = directions[s:s + chunk].astype(np.float64)
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
        idx = tree.query(o, k=k)[1].reshape(o.shape[0], k)
        v0, v1, v2 = tri[idx, 0], tri[idx, 1], tri[idx, 2]
        e1, e2 = v1 - v0, v2 - v0
        pvec = np.cross(d[:, None], e2)
        det = np.sum(e1 * pvec, -1)
        inv = np.where(np.abs(det) > 1e-14, 1.0 / np.where(det == 0, 1.0, det), 0.0)
        tvec = o[:, None] - v0
        u = np.sum(tvec * pvec, -1) * inv
        qvec = np.cross(tvec, e1)
        v = np.sum(d[:, None] * qvec, -1) * inv
        t = np.sum(e2 * qvec, -1) * inv
        hit = (inv != 0) & (u >= -1e-9) & (v >= -1e-9) & (u + v <= 1 + 1e-9) & (np.abs(t) <= max_distance)
        best = np.argmin(np.where(hit, np.abs(t), np.inf), 1)
        rows = np.arange(o.shape[0])
        face[s:s + chunk] = idx[rows, best]
        bary[s:s + chunk] = np.stack([1 - u[rows, best] - v[rows, best], u[rows, best], v[rows, best]], -1)
        hit_any[s:s + chunk] = hit[rows, best]
    return face, bary, hit_any


def ray_cast_normals(points: np.ndarray, directions: np.ndarray, detail_vertices: np.ndarray,
                     detail_faces: np.ndarray, detail_normals: np.ndarray, max_distance: float,
                     candidates: int = 24, chunk: int = 32768) -> tuple[np.ndarray, np.ndarray]:
    """The detail surface found along each point's direction (the low mesh's normal), either way, within
    `max_distance` (the cage, `ray_cast`): the nearest hit's smooth normal (the detail's vertex normals
    interpolated at the hit), and a mask of the points that hit."""
    face, bary, hit = ray_cast(points, directions, detail_vertices, detail_faces, max_distance, candidates, chunk)
    normals = np.einsum("nk,nkc->nc", bary, detail_normals[detail_faces[face]].astype(np.float64))
    normals[~hit] = 0.0
    return normals, hit


def nearest_on_faces(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                     candidates: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """About the nearest point of the surface to each point: (face [N], barycentrics [N,3]), each point projected
    onto the planes of the `candidates` triangles whose centroids lie nearest, its barycentrics clamped onto the
    triangle, the nearest of those kept."""
    from scipy.spatial import cKDTree

    tri = vertices[faces].astype(np.float64)
    k = min(candidates, tri.shape[0])
    idx = cKDTree(tri.mean(1)).query(points.astype(np.float64), k=k)[1].reshape(points.shape[0], k)
    a, b, c = tri[idx, 0], tri[idx, 1], tri[idx, 2]
    e1, e2, w = b - a, c - a, points[:, None].astype(np.float64) - a
    d11, d12, d22 = np.sum(e1 * e1, -1), np.sum(e1 * e2, -1), np.sum(e2 * e2, -1)
    w1, w2 = np.sum(w * e1, -1), np.sum(w * e2, -1)
    det = np.where(np.abs(d11 * d22 - d12 * d12) > 1e-30, d11 * d22 - d12 * d12, 1e-30)
    lam = np.stack([(d22 * w1 - d12 * w2) / det, (d11 * w2 - d12 * w1) / det], -1)
    bary = np.clip(np.concatenate([1 - lam.sum(-1, keepdims=True), lam], -1), 0.0, None)
    bary /= np.maximum(bary.sum(-1, keepdims=True), 1e-12)
    near = np.einsum("nkj,nkjc->nkc", bary, tri[idx])
    best = np.argmin(np.linalg.norm(near - points[:, None], axis=-1), 1)
    rows = np.arange(points.shape[0])
    return idx[rows, best], bary[rows, best]


def sample_bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """image [H,W,C] read bilinearly at UVs [N,2] (texel centres at u = (c + 0.5) / W, v = 1 - (r + 0.5) / H;
    clamped at the borders) -> [N,C]."""
    h, w = image.shape[:2]
    x = np.clip(uv[:, 0].astype(np.float64) * w - 0.5, 0, w - 1)
    y = np.clip((1.0 - uv[:, 1].astype(np.float64)) * h - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def transfer_maps(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, source_vertices: np.ndarray,
                  source_faces: np.ndarray, source_uvs: np.ndarray, maps: list[np.ndarray], size: int,
                  padding: int | None = None, ray_distance: float = 0.03) -> list[np.ndarray]:
    """Maps of a source mesh carried onto another mesh of the same surface (an LOD from the finished mesh):
    every texel's surface point is found on the source along the mesh's interpolated normal, either way,
    within `ray_distance` (the cage, `ray_cast`), else at about its nearest source point (`nearest_on_faces`),
    and each source map [S,S,C] is read there bilinearly at the source's UV. Returns the maps [size,size,C],
    dilated as the bakes dilate them."""
    coverage = rasterize_uv(uvs, size, size)
    points = texel_attribute(coverage, faces, vertices.astype(np.float32))
    normals = texel_attribute(coverage, faces, vertex_normals(vertices, faces))
    face, bary, hit = ray_cast(points, normals, source_vertices, source_faces, ray_distance)
    if (~hit).any():
        face[~hit], bary[~hit] = nearest_on_faces(points[~hit], source_vertices, source_faces)
    logger.info("map transfer: %d of %d texels found the source within %.4g along the normal", int(hit.sum()),
                int(hit.shape[0]), ray_distance)
    at = np.einsum("nk,nkc->nc", bary, source_uvs[face].astype(np.float64))
    out = []
    for source in maps:
        image = np.zeros((size, size, source.shape[-1]), np.float32)
        image[coverage.filled] = sample_bilinear(source, at)
        out.append(dilate(image, coverage.filled, padding))
    return out


def bake_normal_map(
    vertices: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray,
    detail_vertices: np.ndarray,
    detail_faces: np.ndarray,
    size: int,
    padding: int | None = None,
    neighbours: int = 4,
    ray_distance: float | None = None,
) -> np.ndarray:
    """Tangent-space normal map (OpenGL convention, +Y along +v) that gives the exported mesh the
    shading normals of a more detailed mesh covering the same surface (the DMTet/polish mesh).

    With `ray_distance` (a low mesh far from its detail: the finish stage's), the detail normal of each texel
    is the polished surface's smooth normal where the low mesh's interpolated normal through the texel's
    surface point meets it, the nearest hit either way within `ray_distance` (the cage, as bakers do it:
    ray_cast_normals); a texel whose ray meets nothing within it takes the blend of its `neighbours` nearest
    detail vertices' normals, as every texel does without `ray_distance` (a mesh on its detail's vertices).
    Returns [size,size,3] float32 unit vectors in [-1,1]; empty texels hold +Z (flat)."""
    coverage = rasterize_uv(uvs, size, size)
    points = texel_attribute(coverage, faces, vertices.astype(np.float32))
    low_n = texel_attribute(coverage, faces, vertex_normals(vertices, faces))
    dn = vertex_normals(detail_vertices, detail_faces)
    target = _nearest_vertex_normals(points, detail_vertices, dn, neighbours)
    if ray_distance is not None and points.shape[0]:
        cast, hit = ray_cast_normals(points, low_n, detail_vertices, detail_faces, dn, ray_distance)
        target[hit] = cast[hit]
        logger.info("normal map: %d of %d texels found the detail within %.4g along the normal",
                    int(hit.sum()), int(hit.shape[0]), ray_distance)

    tangent, bitangent = face_tangent_frames(vertices, faces, uvs)
    fid = coverage.face_id[coverage.filled]
    n = low_n / np.maximum(np.linalg.norm(low_n, axis=1, keepdims=True), 1e-12)
    # Gram-Schmidt the face tangent against the interpolated normal; the bitangent keeps the UV handedness.
    t = tangent[fid] - n * np.sum(tangent[fid] * n, 1, keepdims=True)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    handed = np.sign(np.sum(np.cross(n, t) * bitangent[fid], 1, keepdims=True))
    b = np.cross(n, t) * np.where(handed == 0, 1.0, handed)
    local = np.stack([np.sum(target * t, 1), np.sum(target * b, 1), np.sum(target * n, 1)], -1)
    local /= np.maximum(np.linalg.norm(local, axis=1, keepdims=True), 1e-12)
    image = np.zeros((size, size, 3), dtype=np.float32)
    image[..., 2] = 1.0
    image[coverage.filled] = local.astype(np.float32)
    return dilate(image, coverage.filled, padding)


@dataclass
class ViewSamples:
    """Per-pixel values seen from a batch of cameras, with the surface each pixel shows (what
    `fuse_views` projects the atlas's texels into)."""

    c2w: torch.Tensor
    """[B,4,4] camera-to-world (Blender camera convention)."""
    mvp: torch.Tensor
    """[B,4,4] world -> clip."""
    focal_px: torch.Tensor
    """[B] vertical focal length in pixels (for the size of a pixel on the surface)."""
    world_pos: torch.Tensor
    """[B,H,W,3] surface point per pixel."""
    foreground: torch.Tensor
    """[B,H,W] bool: pixel centres on the surface."""
    values: torch.Tensor
    """[B,H,W,C] what each pixel shows (e.g. albedo, roughness, metallic)."""


@dataclass
class FusedTexels:
    """Per-view estimates fused into the atlas."""

    coverage: TexelCoverage
    values: np.ndarray
    """[H,W,C] float32 weighted mean over the views at the texels they see, 0 elsewhere."""
    weight: np.ndarray
    """[H,W] float32 total weight; 0 where no view sees the texel."""

    @property
    def seen(self) -> np.ndarray:
        return self.weight > 0


def _view_weights(points: torch.Tensor, normals: torch.Tensor, views: ViewSamples, b: int, power: float,
                  tolerance_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [N], grid [N,2]) of texel surface points seen from view b: cos(n, to-camera)^power where the
    pixel the point projects to shows that same point (within `tolerance_px` pixels' worth of surface,
    so occluded texels get 0), and grid_sample coordinates of that pixel."""
    _, h, w, _ = views.world_pos.shape
    homo = torch.cat([points, torch.ones_like(points[:, :1])], -1)
    clip = homo @ views.mvp[b].T
    in_front = clip[:, 3] > 1e-6
    ndc = clip[:, :2] / clip[:, 3:4].clamp_min(1e-6)
    x = (ndc[:, 0] + 1.0) * 0.5 * w  # pixel coordinates, y down, as render/cameras.project_to_pixels
    y = (1.0 - ndc[:, 1]) * 0.5 * h
    col, row = x.floor().long(), y.floor().long()
    inside = in_front & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    col, row = col.clamp(0, w - 1), row.clamp(0, h - 1)
    surface = views.world_pos[b, row, col]
    to_camera = views.c2w[b, :3, 3] - points
    dist = to_camera.norm(dim=-1).clamp_min(1e-9)
    cos = (normals * to_camera).sum(-1) / dist
    # A pixel covers depth / focal_px of surface facing the camera; a texel is visible from the view when
    # the pixel it falls in shows a point within a few of those (else something nearer hides it).
    footprint = clip[:, 3].clamp_min(1e-6) / views.focal_px[b]
    visible = inside & views.foreground[b, row, col] & ((surface - points).norm(dim=-1) <= tolerance_px * footprint)
    weight = torch.where(visible & (cos > 0), cos.clamp_min(0) ** power, torch.zeros_like(cos))
    grid = torch.stack([x / w * 2 - 1, y / h * 2 - 1], -1)
    return weight, grid


@torch.no_grad()
def fuse_views(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, size: int, views: ViewSamples,
               power: float = 2.0, tolerance_px: float = 2.5) -> FusedTexels:
    """Fuse per-view, per-pixel estimates into the UV atlas: every texel's surface point is projected into
    each view, and the views that see it (not occluded, facing it) are averaged with weights
    cos(normal, to-camera)^power, so the views that see the texel most squarely count most.

        value(texel) = sum_b w_b v_b(pixel_b) / sum_b w_b,   w_b = visible_b cos_b^power

    Values are sampled bilinearly over the foreground pixels only (background pixels carry no estimate).
    Returns the fused values before dilation; callers dilate them like the base colour."""
    coverage = rasterize_uv(uvs, size, size)
    device = views.values.device
    points = torch.as_tensor(texel_attribute(coverage, faces, vertices.astype(np.float32)), device=device)
    normals = torch.as_tensor(texel_attribute(coverage, faces, vertex_normals(vertices, faces)), device=device)
    normals = torch.nn.functional.normalize(normals, dim=-1)
    channels = views.values.shape[-1]
    acc = torch.zeros(points.shape[0], channels, device=device)
    wsum = torch.zeros(points.shape[0], device=device)
    fg = views.foreground.unsqueeze(1).float()  # [B,1,H,W]
    masked = views.values.permute(0, 3, 1, 2).float() * fg
    for b in range(views.values.shape[0]):
        weight, grid = _view_weights(points, normals, views, b, power, tolerance_px)
        keep = weight > 0
        if not bool(keep.any()):
            continue
        g = grid[keep][None, None]  # [1,1,M,2]
        sampled = torch.nn.functional.grid_sample(masked[b:b + 1], g, mode="bilinear", align_corners=False)[0, :, 0].T
        cover = torch.nn.functional.grid_sample(fg[b:b + 1], g, mode="bilinear", align_corners=False)[0, 0, 0]
        value = sampled / cover.clamp_min(1e-6)[:, None]
        wk = weight[keep] * (cover > 1e-6)
        acc[keep] += wk[:, None] * value
        wsum[keep] += wk
    fused = (acc / wsum.clamp_min(1e-12)[:, None]).cpu().numpy()
    image = np.zeros((size, size, channels), np.float32)
    weight_img = np.zeros((size, size), np.float32)
    image[coverage.filled] = np.where(wsum.cpu().numpy()[:, None] > 0, fused, 0.0)
    weight_img[coverage.filled] = wsum.cpu().numpy()
    return FusedTexels(coverage, image, weight_img)


def encode_png(image: np.ndarray) -> bytes:
    """[H,W,3|4] float in [0,1] -> 8-bit PNG bytes."""
    arr = np.clip(np.round(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> [H,W,3] float32 in [0,1]."""
    with Image.open(io.BytesIO(bytes(data))) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
