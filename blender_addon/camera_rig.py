"""The scene's cameras as the protocol's CameraSpec list.

The active scene camera is the reference view (index 0); the cameras of a chosen collection follow.
A scene with no camera gets a default orbit around the origin. Matrices are camera-to-world in
Blender's camera convention (looks down local -Z, +Y up), with any object scale removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import bpy
import numpy as np
from mathutils import Matrix, Vector

from .protocol.errors import ValidationError
from .protocol.limits import LIMITS
from .protocol.scene import CameraSpec


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


def placement_point(scene: bpy.types.Scene, placement: str = "CAMERA") -> Vector:
    """Where a generated object goes: on the active camera's view axis at its focus distance (its
    focus object, if set), or at the 3D cursor ("CURSOR", and always when there is no camera)."""
    cam = scene.camera
    if placement == "CURSOR" or cam is None or cam.type != "CAMERA":
        return scene.cursor.location.copy()
    dof = cam.data.dof
    if dof.focus_object is not None:
        return dof.focus_object.matrix_world.translation.copy()
    forward = cam.matrix_world.to_quaternion() @ Vector((0.0, 0.0, -1.0))  # cameras look down local -Z
    return cam.matrix_world.translation + forward * dof.focus_distance


def rig_about(specs: list[CameraSpec], point: Vector) -> list[CameraSpec]:
    """The rig in a frame whose origin is `point`: the backend makes a generated object at its frame's
    origin, sized by the reference camera's distance to it, so the object lands at `point`."""
    offset = np.array(point, dtype=np.float32)
    for spec in specs:
        spec.matrix_world = spec.matrix_world.copy()
        spec.matrix_world[:3, 3] -= offset
    return specs


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
