"""The scene's cameras as the protocol's CameraSpec list.

The active scene camera is the reference view (index 0); the cameras of a chosen collection follow.
A scene with no camera gets a default orbit around the origin. Matrices are camera-to-world in
Blender's camera convention (looks down local -Z, +Y up), with any object scale removed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import bpy
import numpy as np
from mathutils import Matrix, Vector

from .protocol.errors import ValidationError
from .protocol.limits import LIMITS
from .protocol.scene import CameraSpec, MeshPayload


@dataclass
class OrbitSettings:
    """The default rig used when the scene has no camera."""

    views: int = 4
    """Cameras evenly spaced in azimuth."""
    elevation_deg: float = 15.0
    """Elevation above the XY plane, towards +Z."""
    distance: float = 3.0
    """Distance from the origin in metres (fits an object about 1.5 m across at 50 mm)."""
    lens_mm: float = 50.0
    sensor_width_mm: float = 36.0


def render_resolution(scene: bpy.types.Scene) -> tuple[int, int]:
    """Render size in pixels after the render percentage, as Blender renders it."""
    r = scene.render
    pct = r.resolution_percentage / 100.0
    return max(1, int(r.resolution_x * pct)), max(1, int(r.resolution_y * pct))


def rigid_matrix(m: Matrix) -> np.ndarray:
    """float32 (4,4) of an object's world matrix with scale removed (camera-to-world is rigid)."""
    loc, rot, _scale = m.decompose()
    return np.array(Matrix.LocRotScale(loc, rot, None), dtype=np.float32)


def camera_spec(cam_obj: bpy.types.Object, scene: bpy.types.Scene) -> CameraSpec:
    """One Blender camera object as a CameraSpec. Only perspective cameras can be sent."""
    cam = cam_obj.data
    if cam.type != "PERSP":
        raise ValidationError(f"camera {cam_obj.name!r} is {cam.type.lower()}; only perspective cameras are supported")
    return CameraSpec(
        matrix_world=rigid_matrix(cam_obj.matrix_world),
        lens_mm=float(cam.lens),
        sensor_width_mm=float(cam.sensor_width),
        sensor_height_mm=float(cam.sensor_height),
        sensor_fit=cam.sensor_fit,
        resolution=render_resolution(scene),
        shift=(float(cam.shift_x), float(cam.shift_y)),
        name=cam_obj.name,
    ).validate()


def look_at(position: Vector, target: Vector) -> Matrix:
    """Camera-to-world matrix for a camera at `position` looking at `target` with world +Z up."""
    rot = (target - position).to_track_quat("-Z", "Y")
    return Matrix.LocRotScale(position, rot, None)


def default_orbit(scene: bpy.types.Scene, orbit: OrbitSettings | None = None) -> list[CameraSpec]:
    """Cameras on a circle around the origin: position = d (cos el cos az, cos el sin az, sin el)."""
    orbit = orbit or OrbitSettings()
    el = math.radians(orbit.elevation_deg)
    specs = []
    for i in range(orbit.views):
        az = 2.0 * math.pi * i / orbit.views - math.pi / 2.0  # first view looks along +Y, from the front
        pos = Vector((math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))) * orbit.distance
        specs.append(CameraSpec(
            matrix_world=np.array(look_at(pos, Vector((0.0, 0.0, 0.0))), dtype=np.float32),
            lens_mm=orbit.lens_mm,
            sensor_width_mm=orbit.sensor_width_mm,
            sensor_height_mm=orbit.sensor_width_mm * 2.0 / 3.0,
            sensor_fit="AUTO",
            resolution=render_resolution(scene),
            name=f"orbit_{i:02d}",
        ).validate())
    return specs


def scene_rig(
    scene: bpy.types.Scene,
    collection: bpy.types.Collection | None = None,
    orbit: OrbitSettings | None = None,
) -> list[CameraSpec]:
    """The active camera first (the reference view), then the collection's cameras; an orbit if none."""
    objects: list[bpy.types.Object] = []
    if scene.camera is not None and scene.camera.type == "CAMERA":
        objects.append(scene.camera)
    if collection is not None:
        objects += sorted(
            (o for o in collection.all_objects if o.type == "CAMERA" and o not in objects),
            key=lambda o: o.name,
        )
    if not objects:
        return default_orbit(scene, orbit)
    if len(objects) > LIMITS.max_cameras:
        raise ValidationError(f"{len(objects)} cameras in the rig; the backend accepts at most {LIMITS.max_cameras}")
    return [camera_spec(o, scene) for o in objects]


FILL_MARGIN = 1.15
"""Frame-to-object size ratio of a size that fills the view: the backend's ReferenceStageConfig.fill_margin
(the object's sphere spans the frame's shorter side over it)."""
FALLBACK_DISTANCE = 4.0
"""Metres down the view axis when the view centre meets nothing (an empty scene)."""
SIZE_OPTION = "reference.object_size"
"""The request option that sets a generated object's size in metres (backend ReferenceStageConfig)."""


def _view_centre_ray(cam: bpy.types.Object, scene: bpy.types.Scene) -> tuple[Vector, Vector]:
    """(origin, unit direction) in the world of the ray through the centre of the camera's frame (shift
    moves it off the optical axis)."""
    left, right, bottom, top = view_tangents(camera_spec(cam, scene))
    local = Vector(((left + right) / 2, (bottom + top) / 2, -1.0))  # cameras look down local -Z
    return cam.matrix_world.translation.copy(), (cam.matrix_world.to_quaternion() @ local).normalized()


def _first_hit(scene: bpy.types.Scene, origin: Vector, direction: Vector) -> Vector | None:
    hit, location, *_ = scene.ray_cast(bpy.context.evaluated_depsgraph_get(), origin, direction)
    return location if hit else None


def _aimed_point(cam: bpy.types.Object, scene: bpy.types.Scene) -> Vector:
    """Where the camera looks: its focus object or focus distance when depth of field is on (the artist
    set them), else what the centre of its view meets in the scene."""
    dof = cam.data.dof
    origin, direction = _view_centre_ray(cam, scene)
    if dof.use_dof:
        if dof.focus_object is not None:
            return dof.focus_object.matrix_world.translation.copy()
        return origin + direction * dof.focus_distance
    hit = _first_hit(scene, origin, direction)
    return hit if hit is not None else origin + direction * FALLBACK_DISTANCE


def object_size(scene: bpy.types.Scene, point: Vector) -> float:
    """A generated object's size in metres (its sphere's diameter): the artist's, or as large as fills the
    active camera's frame at `point` (an object 2 r across fills it at distance d when
    r = d sin(atan(tan(fov/2) / FILL_MARGIN)), the backend's own rule)."""
    s = scene.dreampolish
    cam = scene.camera
    if s.size_mode == "SET":
        return float(s.object_size)
    if cam is None or cam.type != "CAMERA":
        spec, distance = default_orbit(scene)[0], OrbitSettings().distance
    else:
        spec, distance = camera_spec(cam, scene), (point - cam.matrix_world.translation).length
    half = math.radians(min(field_of_view_deg(spec))) / 2
    return 2.0 * distance * math.sin(math.atan(math.tan(half) / FILL_MARGIN))


def resting_point(scene: bpy.types.Scene, point: Vector) -> Vector:
    """The object's centre standing on the surface below `point` (a ray cast straight down from just
    above it): its sphere's lowest point on the surface, so nothing of it is under it. `point` itself
    where there is no surface below."""
    lift = Vector((0.0, 0.0, 1e-4 * max(1.0, abs(point.z))))
    floor = _first_hit(scene, point + lift, Vector((0.0, 0.0, -1.0)))
    if floor is None:
        return point.copy()
    centre = floor.copy()
    for _ in range(4):  # the size (filling the view) depends on the distance to the centre: settle it
        centre = floor + Vector((0.0, 0.0, object_size(scene, centre) / 2.0))
    return centre


def placement_point(scene: bpy.types.Scene, placement: str = "CAMERA") -> Vector:
    """Where a generated object's centre goes: where the active camera looks ("CAMERA": _aimed_point) or
    at the 3D cursor ("CURSOR", and always when there is no camera); standing on the surface below it
    when the panel's Rest on Surface is on."""
    cam = scene.camera
    if placement == "CURSOR" or cam is None or cam.type != "CAMERA":
        point = scene.cursor.location.copy()
    else:
        point = _aimed_point(cam, scene)
    return resting_point(scene, point) if scene.dreampolish.rest_on_surface else point


def placement_options(scene: bpy.types.Scene, point: Vector) -> dict[str, float]:
    """The request options that make the object at `point` the size the panel says."""
    return {SIZE_OPTION: round(object_size(scene, point), 6)}


def rig_about(specs: list[CameraSpec], point: Vector) -> list[CameraSpec]:
    """The rig in a frame whose origin is `point`: the backend makes a generated object at its frame's
    origin (of the size placement_options sends), seen by the reference camera turned towards it, so the
    object lands at `point` looking as the reference shows it."""
    offset = np.array(point, dtype=np.float32)
    for spec in specs:
        spec.matrix_world = spec.matrix_world.copy()
        spec.matrix_world[:3, 3] -= offset
    return specs


def scale_applied(mesh: MeshPayload) -> MeshPayload:
    """A generated object's stage mesh with its frame's scale (and any rotation) in its vertices and only
    the translation left in its transform, as Blender's Apply Scale leaves an object: the object's scale
    reads 1 and its size is in its mesh. An edit sent back with Resume is in this frame (the cached
    transform), which the backend takes into the job's frame."""
    linear = np.eye(4, dtype=np.float32)
    linear[:3, :3] = np.asarray(mesh.transform, np.float32)[:3, :3]
    baked = dataclasses.replace(mesh, transform=linear).in_world()
    baked.transform = np.eye(4, dtype=np.float32)
    baked.transform[:3, 3] = np.asarray(mesh.transform, np.float32)[:3, 3]
    return baked


def view_tangents(spec: CameraSpec) -> tuple[float, float, float, float]:
    """Image-plane bounds (left, right, bottom, top) at unit distance in front of the camera.

    Blender's rule (BKE_camera_params_compute_viewplane): the fitted sensor side spans
    sensor/lens; AUTO fits the sensor width to the larger image side; shift is a fraction
    of the fitted side.
    """
    w, h = spec.resolution
    fit = spec.sensor_fit
    if fit == "AUTO":
        sensor = spec.sensor_width_mm
        fit = "HORIZONTAL" if w >= h else "VERTICAL"
    else:
        sensor = spec.sensor_width_mm if fit == "HORIZONTAL" else spec.sensor_height_mm
    span = sensor / spec.lens_mm
    if fit == "HORIZONTAL":
        sx, sy = span, span * h / w
    else:
        sx, sy = span * w / h, span
    cx, cy = spec.shift[0] * span, spec.shift[1] * span
    return cx - sx / 2, cx + sx / 2, cy - sy / 2, cy + sy / 2


def field_of_view_deg(spec: CameraSpec) -> tuple[float, float]:
    """Horizontal and vertical field of view in degrees (without shift)."""
    left, right, bottom, top = view_tangents(spec)
    return (math.degrees(2 * math.atan((right - left) / 2)), math.degrees(2 * math.atan((top - bottom) / 2)))
