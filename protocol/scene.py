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
"""

from __future__ import annotations

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


@dataclass
class MeshPayload:
    """A triangle mesh in Blender's world convention (see module docstring)."""

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray | None = None
    normals: np.ndarray | None = None
    colors: np.ndarray | None = None
    transform: np.ndarray = field(default_factory=lambda: np.eye(4, dtype=np.float32))
    textures: list[TexturePayload] = field(default_factory=list)

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

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
        faces, uvs = self.faces, self.uvs
        if mirrors(self.transform):
            faces = np.ascontiguousarray(faces[:, ::-1])
            uvs = None if uvs is None else np.ascontiguousarray(uvs[:, ::-1])
        return MeshPayload(vertices=object_to_world(self.vertices, self.transform).astype(np.float32), faces=faces,
                           uvs=uvs, normals=normals, colors=self.colors, transform=np.eye(4, dtype=np.float32),
                           textures=list(self.textures))

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
        faces, uvs = world.faces, world.uvs
        if mirrors(m):
            faces = np.ascontiguousarray(faces[:, ::-1])
            uvs = None if uvs is None else np.ascontiguousarray(uvs[:, ::-1])
        return MeshPayload(vertices=vertices, faces=faces, uvs=uvs, normals=normals, colors=world.colors,
                           transform=m.astype(np.float32), textures=list(world.textures))

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
        if self.uvs is not None:
            _finite("mesh.uvs", _check_array("mesh.uvs", self.uvs, "float32", (f.shape[0], 3, 2)))
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
        return self
