"""Scene payloads carried by messages: cameras, meshes and textures.

Pure Python + numpy (works under numpy 1.26 and 2.x), no msgpack here: the codec
turns these into header fields and binary frames. Conventions (see README.md):

- World: Blender's — right-handed, Z up, metres.
- Camera: 4x4 camera-to-world in Blender's camera convention (looks down local
  -Z, +Y up) plus Blender intrinsics (lens and sensor in mm, sensor fit,
  resolution in pixels, shift as a fraction of the fitted image side (the width for
  HORIZONTAL, the height for VERTICAL, the larger side for AUTO), as Blender does).
- Mesh: vertices float32 (N,3), triangles uint32 (M,3), optional per-corner UVs
  float32 (M,3,2), optional per-vertex normals float32 (N,3) and colours
  float32 (N,3|4) in linear RGB, an object-to-world transform float32 (4,4).
- Polygons (optional): Blender's own face data, a corner count per face uint32 (P,) and the vertex
  of every corner uint32 (L,), faces in order. A polygon mesh's `faces` are then its fan
  triangulation (`fan_triangulation`: face p's triangles are (c0, c[j+1], c[j+2])), and its UVs are
  per corner of those triangles as for any mesh, equal where a face's triangles share a corner.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .errors import ValidationError
from .limits import LIMITS
from .udim import check_tile
from .wire_types import wire_type

SensorFit = Literal["AUTO", "HORIZONTAL", "VERTICAL"]
SENSOR_FITS: tuple[str, ...] = ("AUTO", "HORIZONTAL", "VERTICAL")
TEXTURE_ROLES: tuple[str, ...] = ("base_color", "normal", "roughness_metallic")


def _finite(name: str, a: np.ndarray) -> None:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValidationError(f"{name} contains NaN or infinite values")


def _check_array(name: str, a: object, dtype: str, shape: tuple[int | None, ...]) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise ValidationError(f"{name} must be an array, got {wire_type(a)}")
    if a.dtype != np.dtype(dtype):
        raise ValidationError(f"{name} must be {dtype}, got {a.dtype}")
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValidationError(f"{name} must have shape {want}, got {a.shape}")
    return a


@dataclass
class CameraSpec:
    """One Blender camera, as the add-on reads it from the scene."""

    matrix_world: np.ndarray
    """float32 (4,4) camera-to-world, Blender camera convention (-Z forward, +Y up)."""
    lens_mm: float = 50.0
    """Focal length in millimetres."""
    sensor_width_mm: float = 36.0
    sensor_height_mm: float = 24.0
    sensor_fit: SensorFit = "AUTO"
    """Which sensor side the lens maps onto, as in Blender's camera data."""
    resolution: tuple[int, int] = (512, 512)
    """Render resolution (width, height) in pixels, after the render percentage."""
    shift: tuple[float, float] = (0.0, 0.0)
    """Lens shift (x, y) as a fraction of the fitted image side (the width for HORIZONTAL, the height for
    VERTICAL, the larger side for AUTO), as in Blender."""
    name: str = ""

    def validate(self) -> CameraSpec:
        m = _check_array("camera.matrix_world", self.matrix_world, "float32", (4, 4))
        _finite("camera.matrix_world", m)
        # Rows, not columns: matrix_world[i][j] is row i, column j, the translation in the last column and
        # [0, 0, 0, 1] as the last row (Blender's Matrix). A column-major matrix (three.js, glm) has the
        # translation in its last row: refused here rather than read as another view.
        if not np.allclose(m[3], (0.0, 0.0, 0.0, 1.0), atol=1e-6):
            likely = (" (it looks transposed: the translation is in the last row; send the matrix row by row, "
                      "the translation in the last column)" if np.allclose(m[:3, 3], 0.0, atol=1e-6) else "")
            raise ValidationError(f"camera.matrix_world's last row must be [0, 0, 0, 1], got "
                                  f"{[round(float(v), 4) for v in m[3]]}{likely}")
        # A camera whose rotation-scale part cannot be inverted has no view (its world-to-camera
        # matrix would be NaN or infinite further on): say so here, by name.
        if abs(float(np.linalg.det(m[:3, :3].astype(np.float64)))) < 1e-12:
            raise ValidationError(
                "camera.matrix_world is singular (a zero scale or collapsed axes): give the camera an "
                "invertible transform (apply a scale of 1 to it in Blender)"
            )
        if not (0.1 <= float(self.lens_mm) <= 5000.0):
            raise ValidationError(f"camera.lens_mm must be in [0.1, 5000], got {self.lens_mm}")
        for nm, v in (("sensor_width_mm", self.sensor_width_mm), ("sensor_height_mm", self.sensor_height_mm)):
            if not (0.1 <= float(v) <= 1000.0):
                raise ValidationError(f"camera.{nm} must be in [0.1, 1000], got {v}")
        if self.sensor_fit not in SENSOR_FITS:
            raise ValidationError(f"camera.sensor_fit must be one of {SENSOR_FITS}, got {self.sensor_fit!r}")
        w, h = self.resolution
        if not (1 <= int(w) <= LIMITS.max_image_side and 1 <= int(h) <= LIMITS.max_image_side):
            raise ValidationError(
                f"camera.resolution must be within 1..{LIMITS.max_image_side} per side, got {self.resolution}"
            )
        if not all(np.isfinite(s) and abs(s) <= 10 for s in self.shift):
            raise ValidationError(f"camera.shift must be finite and |shift| <= 10, got {self.shift}")
        return self


@dataclass
class TexturePayload:
    """A texture map: PNG bytes (8-bit, sRGB for colour) or a raw float array."""

    role: str
    """One of TEXTURE_ROLES: base_color, normal (tangent space, OpenGL +Y), roughness_metallic."""
    png: bytes | None = None
    array: np.ndarray | None = None
    """float16/float32 (H,W,C) in linear values, where precision matters (normal maps)."""
    tile: int = 0
    """0: the map covers the UV square 0-1; 1001..1100: the UDIM tile it covers (udim.py)."""

    def validate(self) -> TexturePayload:
        if self.role not in TEXTURE_ROLES:
            raise ValidationError(f"texture role must be one of {TEXTURE_ROLES}, got {self.role!r}")
        if self.tile != 0:
            check_tile(self.tile, f"texture {self.role!r} tile")
        if (self.png is None) == (self.array is None):
            raise ValidationError(f"texture {self.role!r} needs exactly one of png or array")
        if self.png is not None:
            if not isinstance(self.png, (bytes, bytearray, memoryview)):
                raise ValidationError(f"texture {self.role!r} png must be bytes")
            if bytes(self.png[:8]) != b"\x89PNG\r\n\x1a\n":
                raise ValidationError(f"texture {self.role!r} is not a PNG file")
            if len(self.png) > LIMITS.max_frame_bytes:
                raise ValidationError(f"texture {self.role!r} is larger than {LIMITS.max_frame_bytes} bytes")
        else:
            a = self.array
            if not isinstance(a, np.ndarray) or a.dtype not in (np.float16, np.float32) or a.ndim != 3:
                raise ValidationError(f"texture {self.role!r} array must be float16/float32 (H,W,C)")
            if a.shape[2] not in (1, 2, 3, 4) or max(a.shape[:2]) > LIMITS.max_texture_side:
                raise ValidationError(
                    f"texture {self.role!r} must have 1-4 channels and sides <= {LIMITS.max_texture_side}"
                )
            _finite(f"texture {self.role!r}", a)
        return self


def object_to_world(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """float64 (N,3) world positions of object-space points (N,3) under a 4x4 object-to-world
    transform M: x_world = M[:3,:3] x + M[:3,3] (in float64, so that an overflow of float32 shows)."""
    m = np.asarray(transform, np.float64)
    return np.asarray(points, np.float64) @ m[:3, :3].T + m[:3, 3]


def mirrors(transform: np.ndarray) -> bool:
    """The transform mirrors the object (negative determinant): its faces' winding must flip in the
    world, so that they keep pointing outward."""
    return bool(np.linalg.det(np.asarray(transform, np.float64)[:3, :3]) < 0)


def polygon_starts(sizes: np.ndarray) -> np.ndarray:
    """int64 (P,) index of every polygon's first corner in the corner array."""
    sizes = np.asarray(sizes, np.int64)
    return np.cumsum(sizes) - sizes


def fan_triangulation(sizes: np.ndarray) -> np.ndarray:
    """int64 (M,3) corner indices (into the polygons' corner array) of the fan triangulation of polygons
    of `sizes` corners, M = sum(sizes - 2): polygon p with corners c0..c(n-1) gives the triangles
    (c0, c[j+1], c[j+2]), j = 0..n-3, in order, keeping its winding. glTF and every triangle consumer
    read a polygon mesh so."""
    sizes = np.asarray(sizes, np.int64)
    per = sizes - 2
    polygon = np.repeat(np.arange(sizes.shape[0]), per)
    j = np.arange(polygon.shape[0]) - np.repeat(np.cumsum(per) - per, per)
    start = polygon_starts(sizes)[polygon]
    return np.stack([start, start + j + 1, start + j + 2], 1)


def triangle_corner_of_polygon_corner(sizes: np.ndarray) -> np.ndarray:
    """int64 (L,) flat index (triangle * 3 + slot) into the fan triangulation's corners of each polygon
    corner: corners 0 and 1 are slots 0 and 1 of the polygon's first triangle, corner k >= 2 slot 2 of
    its triangle k - 2."""
    sizes = np.asarray(sizes, np.int64)
    first_triangle = np.cumsum(sizes - 2) - (sizes - 2)
    polygon = np.repeat(np.arange(sizes.shape[0]), sizes)
    k = np.arange(polygon.shape[0]) - np.repeat(polygon_starts(sizes), sizes)
    triangle = first_triangle[polygon] + np.maximum(k - 2, 0)
    return triangle * 3 + np.minimum(k, 2)


def check_polygons(sizes: object, corners: object, n_vertices: int) -> None:
    """Polygons as Blender stores them: 3..max corners each, corners summing up, vertices in range, and
    no face that uses one vertex twice (degenerate: Blender refuses it, glTF would get a sliver)."""
    s = _check_array("mesh.face_sizes", sizes, "uint32", (None,))
    c = _check_array("mesh.face_corners", corners, "uint32", (None,))
    if s.size and (int(s.min()) < 3 or int(s.max()) > MAX_POLYGON_CORNERS):
        bad = int(np.flatnonzero((s < 3) | (s > MAX_POLYGON_CORNERS))[0])
        raise ValidationError(f"mesh.face_sizes[{bad}] is {int(s[bad])}; a face has 3 to {MAX_POLYGON_CORNERS} "
                              "corners")
    if int(s.sum(dtype=np.int64)) != c.shape[0]:
        raise ValidationError(f"mesh.face_sizes add up to {int(s.sum(dtype=np.int64))} corners but "
                              f"mesh.face_corners has {c.shape[0]}")
    if c.size and int(c.max()) >= n_vertices:
        raise ValidationError(f"mesh.face_corners index vertex {int(c.max())} but there are only {n_vertices}")
    polygon = np.repeat(np.arange(s.shape[0], dtype=np.int64), s.astype(np.int64))
    key = np.sort(polygon * max(n_vertices, 1) + c.astype(np.int64))
    repeated = np.flatnonzero(np.diff(key) == 0)
    if repeated.size:
        raise ValidationError(f"mesh face {int(key[repeated[0]] // max(n_vertices, 1))} uses vertex "
                              f"{int(key[repeated[0]] % max(n_vertices, 1))} twice (a degenerate face)")


MAX_LODS = 3
"""Most levels of detail one mesh carries (LOD1-LOD3)."""
MAX_POLYGON_CORNERS = 64
"""Most corners of one polygon on the wire (an n-gon beyond it is no game mesh's face)."""


@dataclass
class MeshPayload:
    """A triangle mesh in Blender's world convention (see module docstring), optionally with the polygons
    its triangles come from (`face_sizes`, `face_corners`; `from_polygons` builds one)."""

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray | None = None
    normals: np.ndarray | None = None
    colors: np.ndarray | None = None
    transform: np.ndarray = field(default_factory=lambda: np.eye(4, dtype=np.float32))
    textures: list[TexturePayload] = field(default_factory=list)
    face_sizes: np.ndarray | None = None
    """uint32 (P,) corners of every polygon, or None for a triangle mesh; `faces` is then their fan."""
    face_corners: np.ndarray | None = None
    """uint32 (L,) the vertex of every polygon corner, polygon after polygon (Blender's corner_verts)."""
    lods: list[MeshPayload] = field(default_factory=list)
    """Levels of detail (LOD1, LOD2, ...): meshes of fewer faces in the same frame (this mesh's transform),
    each with its own UVs and textures; never nested (at most MAX_LODS)."""

    @classmethod
    def from_polygons(cls, vertices: np.ndarray, face_sizes: np.ndarray, face_corners: np.ndarray,
                      corner_uvs: np.ndarray | None = None, **fields: object) -> MeshPayload:
        """A polygon mesh: `faces` (and per-triangle-corner UVs from `corner_uvs`, float32 (L,2) one per
        polygon corner) made by the fan triangulation. Other fields are passed on."""
        sizes = np.ascontiguousarray(face_sizes, np.uint32)
        corners = np.ascontiguousarray(face_corners, np.uint32)
        fan = fan_triangulation(sizes) if sizes.size else np.zeros((0, 3), np.int64)
        if fan.size and int(fan.max()) >= corners.shape[0]:
            raise ValidationError(f"mesh.face_sizes add up to more corners than mesh.face_corners has "
                                  f"({corners.shape[0]})")
        uvs = None
        if corner_uvs is not None:
            uvs = np.ascontiguousarray(np.asarray(corner_uvs, np.float32).reshape(-1, 2)[fan])
        return cls(vertices=vertices, faces=np.ascontiguousarray(corners[fan], np.uint32), uvs=uvs,
                   face_sizes=sizes, face_corners=corners, **fields)  # type: ignore[arg-type]

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        """Triangles (the fan triangulation of a polygon mesh)."""
        return int(self.faces.shape[0])

    @property
    def num_polygons(self) -> int:
        """Faces as Blender counts them: polygons, or triangles for a triangle mesh."""
        return self.num_faces if self.face_sizes is None else int(self.face_sizes.shape[0])

    @property
    def has_polygons(self) -> bool:
        return self.face_sizes is not None

    def corner_uvs(self) -> np.ndarray | None:
        """float32 (L,2) UVs per polygon corner (polygon meshes), read from the fan's triangle corners."""
        if self.uvs is None or self.face_sizes is None:
            return None
        return np.ascontiguousarray(self.uvs.reshape(-1, 2)[triangle_corner_of_polygon_corner(self.face_sizes)])

    def _check_polygon_uvs(self) -> None:
        """A polygon has one UV per corner: its fan's triangles agree on the corners they share."""
        per_corner = self.uvs.reshape(-1, 2)[triangle_corner_of_polygon_corner(self.face_sizes)]
        differs = np.flatnonzero(np.any(per_corner[fan_triangulation(self.face_sizes)] != self.uvs, axis=(1, 2)))
        if differs.size:
            polygon = int(np.searchsorted(np.cumsum(self.face_sizes.astype(np.int64) - 2), differs[0], side="right"))
            raise ValidationError(f"mesh face {polygon} has two UVs at one corner: a face's triangles must agree "
                                  "on the UVs of the corners they share (one UV per face corner)")

    def _winding_flipped(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(faces, uvs, face_corners) with every face's corners in reverse order (a mirroring transform);
        a polygon keeps its first corner first, so that its fan stays the fan of the reversed polygon."""
        if self.face_sizes is None:
            uvs = None if self.uvs is None else np.ascontiguousarray(self.uvs[:, ::-1])
            return np.ascontiguousarray(self.faces[:, ::-1]), uvs, None
        sizes = self.face_sizes.astype(np.int64)
        start = np.repeat(polygon_starts(sizes), sizes)
        k = np.arange(start.shape[0]) - start
        order = start + (np.repeat(sizes, sizes) - k) % np.repeat(sizes, sizes)
        corner_uvs = self.corner_uvs()
        flipped = MeshPayload.from_polygons(self.vertices, self.face_sizes, self.face_corners[order],
                                            None if corner_uvs is None else corner_uvs[order])
        return flipped.faces, flipped.uvs, flipped.face_corners

    def texture(self, role: str) -> TexturePayload | None:
        return next((t for t in self.textures if t.role == role), None)

    def in_world(self) -> MeshPayload:
        """The same mesh with its transform applied and an identity transform: the one object-to-world
        rule, used wherever a mesh is placed in the world (the add-on sending a selected object, the
        backend reading an input mesh or writing a file of world positions). Vertices by
        object_to_world; normals by the inverse transpose of the linear part (dropped when it has no
        inverse); a mirroring transform flips the winding and the per-corner UVs with it."""
        linear = np.asarray(self.transform, np.float64)[:3, :3]
        normals = None
        if self.normals is not None:
            try:
                n = self.normals.astype(np.float64) @ np.linalg.inv(linear)
            except np.linalg.LinAlgError:
                n = None
            if n is not None:
                normals = (n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        faces, uvs, corners = self.faces, self.uvs, self.face_corners
        if mirrors(self.transform):
            faces, uvs, corners = self._winding_flipped()
        return MeshPayload(vertices=object_to_world(self.vertices, self.transform).astype(np.float32), faces=faces,
                           uvs=uvs, normals=normals, colors=self.colors, transform=np.eye(4, dtype=np.float32),
                           textures=list(self.textures), face_sizes=self.face_sizes, face_corners=corners,
                           lods=[dataclasses.replace(lod, transform=self.transform).in_world() for lod in self.lods])

    def in_frame(self, transform: np.ndarray) -> MeshPayload:
        """The same mesh with its vertices in the frame that `transform` (object-to-world, invertible) maps
        to the world, and `transform` as its transform: the receiver's side of "every mesh on the wire is
        vertices plus their object-to-world transform" (the backend takes an edited mesh into its job's
        frame with it). The mesh is placed in the world first (in_world), then taken into the frame by the
        inverse transform; normals by the inverse transpose, and a mirroring frame flips the winding back."""
        world = self.in_world()
        m = np.asarray(transform, np.float64)
        vertices = object_to_world(world.vertices, np.linalg.inv(m)).astype(np.float32)
        normals = None
        if world.normals is not None:  # the inverse transpose of inv(M)'s linear part is M's transpose
            n = world.normals.astype(np.float64) @ m[:3, :3]
            normals = (n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        faces, uvs, corners = world.faces, world.uvs, world.face_corners
        if mirrors(m):
            faces, uvs, corners = world._winding_flipped()
        return MeshPayload(vertices=vertices, faces=faces, uvs=uvs, normals=normals, colors=world.colors,
                           transform=m.astype(np.float32), textures=list(world.textures),
                           face_sizes=world.face_sizes, face_corners=corners,
                           lods=[lod.in_frame(transform) for lod in world.lods])

    def validate(self, *, require_faces: bool = True) -> MeshPayload:
        v = _check_array("mesh.vertices", self.vertices, "float32", (None, 3))
        f = _check_array("mesh.faces", self.faces, "uint32", (None, 3))
        if v.shape[0] > LIMITS.max_vertices:
            raise ValidationError(f"mesh has {v.shape[0]} vertices; the limit is {LIMITS.max_vertices}")
        if f.shape[0] > LIMITS.max_faces:
            raise ValidationError(f"mesh has {f.shape[0]} faces; the limit is {LIMITS.max_faces}")
        if require_faces and f.shape[0] == 0:
            raise ValidationError("mesh has no faces")
        _finite("mesh.vertices", v)
        if f.size and int(f.max()) >= v.shape[0]:
            raise ValidationError(f"mesh.faces index vertex {int(f.max())} but there are only {v.shape[0]}")
        if (self.face_sizes is None) != (self.face_corners is None):
            raise ValidationError("mesh.face_sizes and mesh.face_corners come together (a polygon mesh has both)")
        if self.face_sizes is not None:
            check_polygons(self.face_sizes, self.face_corners, v.shape[0])
            fan = fan_triangulation(self.face_sizes)
            if fan.shape != f.shape or not np.array_equal(self.face_corners[fan], f):
                raise ValidationError("mesh.faces are not the fan triangulation of the polygons "
                                      "(MeshPayload.from_polygons makes them)")
        if self.uvs is not None:
            _finite("mesh.uvs", _check_array("mesh.uvs", self.uvs, "float32", (f.shape[0], 3, 2)))
            if self.face_sizes is not None:
                self._check_polygon_uvs()
        if self.normals is not None:
            _finite("mesh.normals", _check_array("mesh.normals", self.normals, "float32", (v.shape[0], 3)))
        if self.colors is not None:
            c = _check_array("mesh.colors", self.colors, "float32", (v.shape[0], None))
            if c.shape[1] not in (3, 4):
                raise ValidationError(f"mesh.colors must have 3 or 4 channels, got {c.shape[1]}")
            _finite("mesh.colors", c)
        _finite("mesh.transform", _check_array("mesh.transform", self.transform, "float32", (4, 4)))
        for t in self.textures:
            t.validate()
        if len(self.lods) > MAX_LODS:
            raise ValidationError(f"mesh has {len(self.lods)} levels of detail; the most is {MAX_LODS}")
        for i, lod in enumerate(self.lods):
            if lod.lods:
                raise ValidationError(f"mesh.lods[{i}] has levels of detail of its own (they are not nested)")
            lod.validate()
        return self
