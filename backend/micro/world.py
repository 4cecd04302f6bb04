"""The micro priors' world: procedural objects, their renders, and a caption for each render.

A vocabulary of shapes (primitives and a few compound objects) times colours.
Every object is built in numpy, put in the pipeline's object frame (bounding-box
centre at the origin, bounding-sphere radius 0.5, Z up; geometry/mesh.py
normalize_to_unit) with a fixed front (the +X side, azimuth 0, which the
reference camera defines in the pipeline), and rendered with the project's own
rasteriser from random orbits at the prior views' framing (distance 3.8,
fovy 20°: render/cameras.py ViewSampler's defaults, Zero123's camera).

A render is the object's colour under a soft headlight (`shade`), over white;
with it come the coverage mask, camera depth and camera-frame normals (+X
right, +Y up, +Z towards the viewer, as Marigold's normals). Captions are
"a {colour} {shape}, {direction} view", the direction picked by the very rule
the pipeline's view prompts use (guidance/text_prior.py view_directions), so
that the words the priors learn are the words the pipeline sends.

Everything is seeded: the same `WorldConfig` renders the same images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..geometry.mesh import TriMesh, normalize_to_unit
from ..guidance.text_prior import VIEW_DIRECTIONS, ViewPromptConfig, view_directions, view_prompt
from ..render.cameras import CameraBatch, orbit_cameras
from ..render.rasterize import MeshRasterizer

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.82, 0.12, 0.10),
    "green": (0.14, 0.62, 0.18),
    "blue": (0.12, 0.28, 0.86),
    "yellow": (0.95, 0.84, 0.12),
    "white": (0.86, 0.86, 0.84),
    "black": (0.10, 0.10, 0.11),
    "orange": (0.96, 0.50, 0.10),
    "purple": (0.52, 0.16, 0.70),
}
"""Colour words and their display (sRGB) albedo. White is a little grey, so that it shows on white."""

HELD_OUT: tuple[tuple[str, str], ...] = (("green", "torus"), ("red", "cone"), ("blue", "mug"), ("yellow", "cube"))
"""(colour, shape) pairs never rendered for training: the quality test generates these."""

VIEW_DISTANCE = 3.8
VIEW_FOVY_DEG = 20.0
"""The prior views' camera (render/cameras.py ViewSampler defaults; Zero123's fixed fovy)."""

BACKGROUND = 1.0


def view_cameras(elevation_deg: Tensor, azimuth_deg: Tensor, size: int) -> CameraBatch:
    """Square cameras of side `size` on the prior views' orbit (VIEW_DISTANCE, VIEW_FOVY_DEG), elevations and
    azimuths [B] in degrees."""
    n = elevation_deg.shape[0]
    return orbit_cameras(elevation_deg, azimuth_deg, torch.full((n,), VIEW_DISTANCE), torch.full((n,), VIEW_FOVY_DEG),
                         size, size)


# -- meshes ------------------------------------------------------------------------------------------------


@dataclass
class _Parts:
    """Vertices and faces gathered from several pieces (each piece keeps its own vertices, so that the
    rasteriser's smooth normals stay sharp at the pieces' edges)."""

    vertices: list[np.ndarray] = field(default_factory=list)
    faces: list[np.ndarray] = field(default_factory=list)

    def add(self, v: np.ndarray, f: np.ndarray) -> _Parts:
        offset = sum(len(x) for x in self.vertices)
        self.vertices.append(np.asarray(v, np.float32))
        self.faces.append(np.asarray(f, np.int64) + offset)
        return self

    def mesh(self) -> TriMesh:
        v = torch.from_numpy(np.concatenate(self.vertices))
        f = torch.from_numpy(np.concatenate(self.faces))
        return TriMesh(v, f)


def _grid_faces(rows: int, cols: int, wrap_cols: bool) -> np.ndarray:
    """Two counter-clockwise triangles per cell of a rows x cols vertex grid (index r * cols + c)."""
    faces = []
    last = cols if wrap_cols else cols - 1
    for r in range(rows - 1):
        for c in range(last):
            c1 = (c + 1) % cols
            a, b, d, e = r * cols + c, r * cols + c1, (r + 1) * cols + c, (r + 1) * cols + c1
            faces += [(a, b, e), (a, e, d)]
    return np.array(faces, np.int64)


def _surface_of_revolution(profile: list[tuple[float, float]], segments: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A surface turning the (radius, z) profile (listed bottom to top) about +Z, outward facing."""
    phi = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    v = np.array([(r * np.cos(p), r * np.sin(p), z) for r, z in profile for p in phi], np.float32)
    return v, _grid_faces(len(profile), segments, wrap_cols=True)


def _disk(radius: float, z: float, up: bool, segments: int = 32) -> tuple[np.ndarray, np.ndarray]:
    phi = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    v = np.concatenate([[[0, 0, z]], np.stack([radius * np.cos(phi), radius * np.sin(phi), np.full_like(phi, z)], 1)])
    f = np.array([(0, 1 + i, 1 + (i + 1) % segments) for i in range(segments)], np.int64)
    return v, (f if up else f[:, ::-1])


def _cylinder(parts: _Parts, radius: float, z0: float, z1: float, segments: int = 32) -> _Parts:
    parts.add(*_surface_of_revolution([(radius, z0), (radius, z1)], segments))
    parts.add(*_disk(radius, z1, up=True, segments=segments))
    return parts.add(*_disk(radius, z0, up=False, segments=segments))


def _box(parts: _Parts, lo: tuple[float, float, float], hi: tuple[float, float, float]) -> _Parts:
    lo_, hi_ = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
    for axis in range(3):
        for side in (0, 1):
            u, w = (axis + 1) % 3, (axis + 2) % 3
            corners = []
            for a, b in ((0, 0), (1, 0), (1, 1), (0, 1)):
                p = np.empty(3, np.float32)
                p[axis] = hi_[axis] if side else lo_[axis]
                p[u] = hi_[u] if a else lo_[u]
                p[w] = hi_[w] if b else lo_[w]
                corners.append(p)
            f = np.array([(0, 1, 2), (0, 2, 3)])
            parts.add(np.stack(corners), f if side else f[:, ::-1])
    return parts


def _sphere(parts: _Parts, radius: float = 1.0, rings: int = 16, segments: int = 32) -> _Parts:
    theta = np.linspace(0, np.pi, rings + 1)
    return parts.add(*_surface_of_revolution([(radius * math.sin(t), -radius * math.cos(t)) for t in theta], segments))


def _torus(parts: _Parts, major: float, minor: float, rings: int = 20, segments: int = 40) -> _Parts:
    """A ring torus about +Z."""
    u = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    w = np.linspace(0, 2 * np.pi, rings, endpoint=False)
    pts = [((major + minor * math.cos(b)) * math.cos(a), (major + minor * math.cos(b)) * math.sin(a), minor * math.sin(b))
           for a in u for b in w]
    # rows: around the ring (wrapping too), columns: around the tube
    faces = []
    for i in range(segments):
        for j in range(rings):
            a, b = i * rings + j, i * rings + (j + 1) % rings
            c, d = ((i + 1) % segments) * rings + j, ((i + 1) % segments) * rings + (j + 1) % rings
            faces += [(a, c, d), (a, d, b)]
    return parts.add(np.array(pts, np.float32), np.array(faces, np.int64))


def _cube() -> _Parts:
    return _box(_Parts(), (-1, -1, -1), (1, 1, 1))


def _cone() -> _Parts:
    parts = _Parts().add(*_surface_of_revolution([(1.0, -1.0), (0.5, 0.0), (0.0, 1.0)], 48))
    return parts.add(*_disk(1.0, -1.0, up=False, segments=48))


def _mug() -> _Parts:
    parts = _cylinder(_Parts(), 0.6, -0.8, 0.8, 40)
    # The handle faces the side (+Y), so that the front view shows the body and the side views the handle.
    return _handle(parts)


def _handle(parts: _Parts) -> _Parts:
    """A half ring standing out of the mug's +Y side, in the YZ plane."""
    segments, rings, major, minor = 24, 12, 0.42, 0.1
    u = np.linspace(-np.pi / 2, np.pi / 2, segments)
    w = np.linspace(0, 2 * np.pi, rings, endpoint=False)
    pts = []
    for a in u:
        centre = np.array([0.0, 0.55 + major * math.cos(a), major * math.sin(a)])
        radial = np.array([0.0, math.cos(a), math.sin(a)])
        for b in w:
            pts.append(centre + minor * (math.cos(b) * radial + math.sin(b) * np.array([1.0, 0.0, 0.0])))
    faces = _grid_faces(segments, rings, wrap_cols=True)[:, ::-1]  # this grid order turns inwards: flip
    return parts.add(np.array(pts, np.float32), faces)


def _table() -> _Parts:
    parts = _box(_Parts(), (-1.0, -0.7, 0.3), (1.0, 0.7, 0.42))
    for x in (-0.85, 0.85):
        for y in (-0.55, 0.55):
            _box(parts, (x - 0.07, y - 0.07, -0.6), (x + 0.07, y + 0.07, 0.3))
    return parts


def _lamp() -> _Parts:
    parts = _cylinder(_Parts(), 0.45, -1.0, -0.88, 32)
    _cylinder(parts, 0.06, -0.88, 0.25, 16)
    parts.add(*_surface_of_revolution([(0.6, 0.15), (0.3, 0.75)], 40))
    return parts.add(*_disk(0.3, 0.75, up=True, segments=40))


SHAPES: dict[str, Callable[[], _Parts]] = {
    "cube": _cube,
    "sphere": lambda: _sphere(_Parts()),
    "torus": lambda: _torus(_Parts(), 0.7, 0.3),
    "cone": _cone,
    "cylinder": lambda: _cylinder(_Parts(), 0.7, -1.0, 1.0, 40),
    "mug": _mug,
    "table": _table,
    "lamp": _lamp,
}
"""Shape words and their builders (any scale: shape_mesh normalises)."""


def shape_mesh(shape: str) -> TriMesh:
    """The shape in the object frame (bounding-box centre at the origin, bounding-sphere radius 0.5)."""
    if shape not in SHAPES:
        raise KeyError(f"unknown shape {shape!r}; known: {sorted(SHAPES)}")
    mesh, _ = normalize_to_unit(SHAPES[shape]().mesh())
    return mesh


def coloured_mesh(colour: str, shape: str) -> TriMesh:
    """The shape with every vertex in the colour's albedo."""
    mesh = shape_mesh(shape)
    rgb = torch.tensor(COLOURS[colour], dtype=torch.float32).expand(mesh.num_vertices, 3).clone()
    return TriMesh(mesh.vertices, mesh.faces, vertex_colors=rgb)


def object_prompt(colour: str, shape: str) -> str:
    """The object's words, as a prompt: "a green torus"."""
    return f"a {colour} {shape}"


def parse_prompt(prompt: str) -> tuple[str, str] | None:
    """(colour, shape) named by a prompt of the vocabulary ("a green torus"), else None."""
    words = prompt.lower().replace(",", " ").split()
    colours = [w for w in words if w in COLOURS]
    shapes = [w for w in words if w in SHAPES]
    return (colours[0], shapes[0]) if colours and shapes else None


def vocabulary_words() -> list[str]:
    """Every word a caption can hold (the micro tokenizer gives each its own token)."""
    words = {"a", "view", "isolated", "on", "plain", "white", "background"}
    words |= set(COLOURS) | set(SHAPES) | set(VIEW_DIRECTIONS)
    return sorted(words)


# -- renders -----------------------------------------------------------------------------------------------


@dataclass
class Renders:
    """A batch of renders of one object."""

    rgb: Tensor
    """[B,H,W,3] display colour over white."""
    mask: Tensor
    """[B,H,W,1] antialiased coverage."""
    depth: Tensor
    """[B,H,W,1] camera depth (0 on the background)."""
    normal: Tensor
    """[B,H,W,3] unit camera-frame normals (+X right, +Y up, +Z towards the viewer), 0 on the background."""
    cameras: CameraBatch


def shade(albedo: Tensor, normal_cam: Tensor, ambient: float = 0.72) -> Tensor:
    """Albedo under a soft headlight from above the camera: ambient + (1 − ambient)·max(0, n·l)."""
    light = torch.nn.functional.normalize(torch.tensor([0.3, 0.5, 1.0]), dim=0).to(normal_cam)
    diffuse = (normal_cam * light).sum(-1, keepdim=True).clamp_min(0)
    return albedo * (ambient + (1 - ambient) * diffuse)


@torch.no_grad()
def render_object(mesh: TriMesh, cameras: CameraBatch, rasterizer: MeshRasterizer | None = None) -> Renders:
    rasterizer = rasterizer or MeshRasterizer("torch")
    out = rasterizer.rasterize(mesh, cameras)
    fg = out.foreground.to(out.mask.dtype)
    w2c = cameras.w2c[:, :3, :3].to(out.normal)
    normal = torch.nn.functional.normalize(torch.einsum("bij,bhwj->bhwi", w2c, out.normal), dim=-1) * fg
    albedo = rasterizer.interpolate(mesh.vertex_colors, out, mesh.faces) if mesh.vertex_colors is not None \
        else torch.full_like(out.world_pos, 0.7)
    colour = rasterizer.antialias(shade(albedo, normal) * fg + BACKGROUND * (1 - fg), out, mesh, cameras)
    return Renders(colour.clamp(0, 1), out.mask, out.depth, normal, cameras)


def silhouette_spans(size: int = 256) -> dict[str, float]:
    """Per shape, the mean over views from azimuths 0, 45, 90, 180 at elevations 0, 15, 30 of the silhouette's
    bounding box's longer side over the bounding sphere's projected diameter. The micro preset frames an artist's
    picture to the least of these (presets.py MICRO_SILHOUETTE_SPAN), the size the micro priors know."""
    cams = view_cameras(torch.tensor([0.0, 15.0, 30.0]).repeat(4),
                        torch.tensor([0.0, 45.0, 90.0, 180.0]).repeat_interleave(3), size)
    sphere_px = size * math.tan(math.asin(0.5 / VIEW_DISTANCE)) / math.tan(math.radians(VIEW_FOVY_DEG) / 2)
    rasterizer = MeshRasterizer("torch")
    spans = {}
    for shape in SHAPES:
        per_view = []
        for mask in rasterizer.rasterize(shape_mesh(shape), cams).mask[..., 0] > 0.5:
            ys, xs = torch.nonzero(mask, as_tuple=True)
            per_view.append(max(int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1) / sphere_px)
        spans[shape] = float(np.mean(per_view))
    return spans


def caption(colour: str, shape: str, elevation_deg: Tensor, azimuth_deg: Tensor,
            config: ViewPromptConfig | None = None) -> list[str]:
    """One caption per view, with the view word the pipeline's view prompts would give that camera."""
    index = view_directions(elevation_deg, azimuth_deg, config or ViewPromptConfig())
    return [view_prompt(object_prompt(colour, shape), VIEW_DIRECTIONS[int(i)]) for i in index]


@dataclass(frozen=True)
class WorldConfig:
    """Which objects are rendered, from how many views, at what size."""

    seed: int = 0
    views_per_object: int = 48
    """Random orbit views of each (colour, shape)."""
    size: int = 64
    """Square render side in pixels."""
    elevation_range: tuple[float, float] = (-15.0, 65.0)
    """Wider than the pipeline's prior views (−10°…45°), so that its overhead views are in the data too."""
    held_out: tuple[tuple[str, str], ...] = HELD_OUT


def training_objects(config: WorldConfig) -> list[tuple[str, str]]:
    """Every (colour, shape) of the vocabulary but the held-out pairs."""
    held = set(config.held_out)
    return [(c, s) for s in SHAPES for c in COLOURS if (c, s) not in held]


def sample_views(n: int, config: WorldConfig, generator: torch.Generator) -> CameraBatch:
    el = config.elevation_range[0] + (config.elevation_range[1] - config.elevation_range[0]) * torch.rand(n, generator=generator)
    az = -180.0 + 360.0 * torch.rand(n, generator=generator)
    return view_cameras(el, az, config.size)


@dataclass
class ObjectViews:
    colour: str
    shape: str
    renders: Renders
    captions: list[str]


def render_world(config: WorldConfig | None = None) -> Iterator[ObjectViews]:
    """Every training object's renders and captions, in a fixed order, from seeded random orbits."""
    config = config or WorldConfig()
    generator = torch.Generator().manual_seed(config.seed)
    rasterizer = MeshRasterizer("torch")
    for colour, shape in training_objects(config):
        cams = sample_views(config.views_per_object, config, generator)
        renders = render_object(coloured_mesh(colour, shape), cams, rasterizer)
        yield ObjectViews(colour, shape, renders, caption(colour, shape, cams.elevation_deg, cams.azimuth_deg))
