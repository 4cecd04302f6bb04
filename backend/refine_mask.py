"""A masked refine (the request's `mask`, protocol/refine_mask.py) on the backend: where the refine may change
the input, and the result that changes only there.

Weight of a surface point p (vertex or texel), with m(p) the mask's weights interpolated over the input's
faces and d(p) the distance from p to the weighted surface (the points where m > 0):
    w(p) = max(m(p), m(q) · (1 − smoothstep(d(p) / feather)))
q being the weighted point nearest p: the weight fades from the mask's edge to 0 at `feather` away (a
Euclidean distance, in the object; the weighted surface is represented by points on its faces spaced at most
a quarter of the feather apart). w(p) = 0 wherever m(p) = 0 and d(p) >= feather: there the result is the
input itself, copied, not recomputed.

- Geometry (polish): the vertex offsets are scaled by w per vertex, so a vertex of weight 0 does not move;
  the result carries the input's own vertex array with only the weighted rows replaced (mapped back from the
  job's frame into the input's object space). The chain skips DMTet, which would re-mesh the object.
- Texture: the colour field is baked at the texels of the input's own base-colour map (its size, its UVs), and
  composited over it with w: texels of weight 0 are the input's bytes. The input's other maps go back as
  they came.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Callable

import numpy as np
import torch
from dreampolish.protocol.gltf import png_file
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import MeshPayload, TexturePayload, object_to_world
from PIL import Image
from scipy.spatial import cKDTree

from . import bake
from .geometry.mesh import TriMesh
from .png_samples import png_header, png_samples

logger = logging.getLogger(__name__)

MAX_SURFACE_SAMPLES = 2_000_000
"""Most points that stand for the weighted surface in the distance query (a finer feather on a large
region samples it more coarsely: the border then starts a little inside where it would)."""


def region_spec(spec: JobSpec) -> JobSpec:
    """The request as the guidance of a masked refine sees it: the region's own prompt and negative prompt
    where the mask has them."""
    if spec.mask is None:
        return spec
    return dataclasses.replace(spec, prompt=spec.mask.prompt.strip() or spec.prompt,
                               negative_prompt=spec.mask.negative_prompt.strip() or spec.negative_prompt)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


class MaskWeights:
    """The mask over the input's surface in the job's frame (module docstring)."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, weights: np.ndarray, feather: float):
        self.vertices = np.asarray(vertices, np.float64)
        self.faces = np.asarray(faces, np.int64)
        self.weights = np.asarray(weights, np.float64)
        self.feather = float(feather)
        self._tree: cKDTree | None = None
        self._sample_weights = np.zeros(0)
        if self.feather > 0:
            self._sample_surface()

    @classmethod
    def for_job(cls, spec: JobSpec, frame_transform: np.ndarray) -> MaskWeights:
        """The request's mask on its input mesh, placed in the job's frame (frame_transform: frame -> world,
        a uniform scale and a translation: pipeline/frame.py)."""
        assert spec.mask is not None and spec.input_mesh is not None
        source = spec.input_mesh
        world = object_to_world(source.vertices, source.transform)
        m = np.asarray(frame_transform, np.float64)
        scale = float(np.cbrt(abs(np.linalg.det(m[:3, :3]))))
        in_frame = object_to_world(world, np.linalg.inv(m))
        return cls(in_frame, source.faces, spec.mask.weights, spec.mask.feather / scale)

    def _sample_surface(self) -> None:
        touched = self.faces[(self.weights[self.faces] > 0).any(1)]
        corners = self.vertices[touched]
        longest = np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=-1).max(1)
        # subdivisions per face: spacing <= feather / 4, within the sample budget
        n = np.clip(np.ceil(longest / (self.feather / 4)), 1, 64).astype(np.int64)
        while int(((n + 1) * (n + 2) // 2).sum()) > MAX_SURFACE_SAMPLES and n.max() > 1:
            n = np.maximum(n // 2, 1)
        points, weights = [], []
        for k in np.unique(n):
            rows = touched[n == k]
            i, j = np.meshgrid(np.arange(k + 1), np.arange(k + 1), indexing="ij")
            keep = (i + j) <= k
            bary = np.stack([i[keep], j[keep], k - i[keep] - j[keep]], -1) / float(k)  # [S,3]
            points.append(np.einsum("sk,fkc->fsc", bary, self.vertices[rows]).reshape(-1, 3))
            weights.append(np.einsum("sk,fk->fs", bary, self.weights[rows]).reshape(-1))
        pts, w = np.concatenate(points), np.concatenate(weights)
        positive = w > 0
        self._tree = cKDTree(pts[positive])
        self._sample_weights = w[positive]

    def at(self, points: np.ndarray, interpolated: np.ndarray) -> np.ndarray:
        """w(p) [N] float32 of points [N,3] (frame) whose mask weight interpolated on their face is
        `interpolated` [N] (module docstring)."""
        w = np.asarray(interpolated, np.float64).copy()
        if self._tree is None or not len(w):
            return w.astype(np.float32)
        d, nearest = self._tree.query(np.asarray(points, np.float64), distance_upper_bound=self.feather)
        near = np.isfinite(d)
        fade = np.zeros_like(w)
        fade[near] = self._sample_weights[nearest[near]] * (1.0 - _smoothstep(d[near] / self.feather))
        return np.maximum(w, fade).astype(np.float32)

    def per_vertex(self) -> np.ndarray:
        """w at every vertex of the input [V] float32."""
        return self.at(self.vertices, self.weights)


def vertex_weights(spec: JobSpec, frame_transform: np.ndarray, device: torch.device | str) -> torch.Tensor | None:
    """[V] float32 how far each input vertex may move (None without a mask): polish's move_weights."""
    if spec.mask is None:
        return None
    w = MaskWeights.for_job(spec, frame_transform).per_vertex()
    logger.info("masked refine: %d of %d vertices may move", int((w > 0).sum()), w.shape[0])
    return torch.as_tensor(w, device=device)


def masked_vertices(spec: JobSpec, frame_transform: np.ndarray, mesh: TriMesh) -> tuple[np.ndarray, np.ndarray | None]:
    """(vertices, normals) of the result: the input's own arrays, with the rows of weighted vertices taken
    from `mesh` (the refined mesh in the job's frame, the input's vertex order) into the input's object
    space; those vertices' normals recomputed, when the input has normals."""
    source = spec.input_mesh
    assert source is not None and spec.mask is not None
    if spec.mode == "texture":  # nothing moved: the input's arrays, not a round trip through the frame
        return source.vertices, source.normals
    moved = MaskWeights.for_job(spec, frame_transform).per_vertex() > 0
    vertices = source.vertices.copy()
    frame_rows = mesh.vertices.detach().cpu().numpy().astype(np.float64)[moved]
    world = object_to_world(frame_rows, frame_transform)
    vertices[moved] = object_to_world(world, np.linalg.inv(np.asarray(source.transform, np.float64)))
    normals = None
    if source.normals is not None:
        normals = source.normals.copy()
        normals[moved] = bake.vertex_normals(vertices, source.faces.astype(np.int64))[moved]
    return vertices, normals


def repaints(spec: JobSpec) -> bool:
    """The masked refine repaints the input's base-colour map (it has UVs and that map)."""
    source = spec.input_mesh
    return (spec.mask is not None and source is not None and source.uvs is not None
            and source.texture("base_color") is not None)


def _read_map(texture: TexturePayload) -> np.ndarray:
    """The map's texels as they came: from an 8-bit PNG uint8 [H,W,C] (RGB or RGBA kept as is, other kinds
    converted to RGB(A)); from a 16-bit PNG uint16, every bit of every sample (backend/png_samples.py: Pillow
    would drop the low bytes), grey as RGB; or the array."""
    if texture.array is not None:
        return np.array(texture.array)
    png = bytes(texture.png)
    if png_header(png).bit_depth == 16:
        samples = png_samples(png)
        if samples.shape[2] <= 2:  # grey (+ alpha) as RGB(A), as Pillow's conversion below makes an 8-bit one
            samples = np.concatenate([np.repeat(samples[..., :1], 3, axis=-1), samples[..., 1:]], axis=-1)
        return samples
    with Image.open(io.BytesIO(png)) as im:
        if im.mode not in ("RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
        return np.array(im)


def _write_map(role: str, texels: np.ndarray, like: TexturePayload) -> TexturePayload:
    if like.array is not None:
        return TexturePayload(role=role, array=np.ascontiguousarray(texels.astype(like.array.dtype)))
    if texels.dtype == np.uint16:  # a 16-bit PNG in, a 16-bit PNG out (Pillow writes no 16-bit RGB)
        return TexturePayload(role=role, png=png_file(np.ascontiguousarray(texels)))
    buf = io.BytesIO()
    Image.fromarray(texels).save(buf, format="PNG")
    return TexturePayload(role=role, png=buf.getvalue())


def repainted_payload(spec: JobSpec, frame_transform: np.ndarray, mesh: TriMesh,
                      colors_at: Callable[[np.ndarray], np.ndarray]) -> MeshPayload:
    """The result of a masked refine that repaints (`repaints`): the input with its weighted vertices moved
    (masked_vertices) and its base-colour map composited with the colour field's `colors_at` (points in
    the frame -> display colours) where w > 0 (module docstring)."""
    source = spec.input_mesh
    assert source is not None and source.uvs is not None
    original = source.texture("base_color")
    old = _read_map(original)
    h, w = old.shape[:2]
    faces = source.faces.astype(np.int64)
    mask = MaskWeights.for_job(spec, frame_transform)
    coverage = bake.rasterize_uv(source.uvs, w, h)
    filled = coverage.filled
    weight = np.zeros((h, w), np.float32)
    weight[filled] = mask.at(bake.texel_attribute(coverage, faces, mask.vertices.astype(np.float32)),
                             bake.texel_attribute(coverage, faces, mask.weights[:, None].astype(np.float32))[:, 0])
    new = np.zeros((h, w, 3), np.float32)
    refined = mesh.vertices.detach().cpu().numpy().astype(np.float32)
    new[filled] = np.clip(colors_at(bake.texel_attribute(coverage, faces, refined)), 0.0, 1.0)
    # the gutter between charts follows its nearest chart, as the bake dilates it
    weight = bake.dilate(weight[..., None], filled)[..., 0]
    new = bake.dilate(new, filled)
    texels = old.copy()
    inside = weight > 0
    # a PNG's samples are integers of its bit depth: full scale 255 (8-bit) or 65535 (16-bit)
    scale = float(np.iinfo(old.dtype).max) if original.png is not None else 1.0
    alpha = weight[inside][:, None]
    mixed = alpha * new[inside] * scale + (1.0 - alpha) * old[inside][:, :3].astype(np.float64)
    texels[..., :3][inside] = np.clip(np.round(mixed), 0, scale) if original.png is not None else mixed
    logger.info("masked refine: %d of %d texels repainted", int(inside.sum()), h * w)
    vertices, normals = masked_vertices(spec, frame_transform, mesh)
    textures = [_write_map("base_color", texels, original) if t.role == "base_color" else t for t in source.textures]
    return MeshPayload(vertices=vertices, faces=source.faces, uvs=source.uvs, normals=normals, colors=source.colors,
                       transform=source.transform, textures=textures).validate()
