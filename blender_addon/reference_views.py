"""The reference source "Cameras" (issue 31): every camera of the panel's camera collection that has a
background image sends that picture, seen from that camera (the request's `views`). The active camera comes
first when it is one of them (the first picture is the object's front), the others by name.

Before anything is sent the panel names each picture that cannot go: a camera that is not a perspective
camera, a picture whose shape is not the render's (the backend takes a picture as its camera renders the
frame), and a camera that does not look at the object's region. That region is the point nearest every
picture camera's view-centre ray (least squares): where the cameras agree the object is. A camera that has it
behind it or outside its frame is named.
"""

from __future__ import annotations

import bpy
import numpy as np
from mathutils import Vector

from . import camera_rig, reference_image
from .protocol.errors import ValidationError
from .protocol.job import PictureView
from .protocol.limits import LIMITS, Limits

ASPECT_TOLERANCE = 0.02
"""How far a picture's width/height may be from the render's (the backend's own check: pipeline/views.py)."""
FRAME_MARGIN = 0.05
"""How far outside its frame, as a fraction of the frame, the region may project and still count as seen."""


def picture_cameras(scene: bpy.types.Scene) -> list[tuple[bpy.types.Object, bpy.types.Image]]:
    """(camera, its first background image) of every camera of the collection that has one, the active
    camera first when it is one of them, then by name."""
    collection = scene.dreampolish.camera_collection
    if collection is None:
        return []
    cameras = sorted((o for o in collection.all_objects if o.type == "CAMERA"),
                     key=lambda o: (o != scene.camera, o.name))
    out = []
    for cam in cameras:
        image = next((bg.image for bg in cam.data.background_images if bg.source == "IMAGE" and bg.image is not None),
                     None)
        if image is not None:
            out.append((cam, image))
    return out


def _centre_ray(cam: bpy.types.Object, scene: bpy.types.Scene) -> tuple[np.ndarray, np.ndarray]:
    left, right, bottom, top = camera_rig.view_tangents(camera_rig.camera_spec(cam, scene))
    local = Vector(((left + right) / 2, (bottom + top) / 2, -1.0))  # cameras look down local -Z
    direction = (cam.matrix_world.to_quaternion() @ local).normalized()
    return np.array(cam.matrix_world.translation, np.float64), np.array(direction, np.float64)


def object_region(scene: bpy.types.Scene, cameras: list[bpy.types.Object]) -> Vector | None:
    """The point nearest every camera's view-centre ray, or None when they are all parallel (one camera)."""
    if len(cameras) < 2:
        return None
    a, b = np.zeros((3, 3)), np.zeros(3)
    for cam in cameras:
        origin, d = _centre_ray(cam, scene)
        proj = np.eye(3) - np.outer(d, d)
        a += proj
        b += proj @ origin
    if np.linalg.cond(a) > 1e8:
        return None
    return Vector(np.linalg.solve(a, b).tolist())


def _sees(cam: bpy.types.Object, scene: bpy.types.Scene, point: Vector) -> bool:
    """The point lies in front of the camera and inside its frame (FRAME_MARGIN)."""
    local = cam.matrix_world.inverted() @ point
    if local.z >= 0:
        return False
    left, right, bottom, top = camera_rig.view_tangents(camera_rig.camera_spec(cam, scene))
    x, y = local.x / -local.z, local.y / -local.z
    mx, my = FRAME_MARGIN * (right - left), FRAME_MARGIN * (top - bottom)
    return left - mx <= x <= right + mx and bottom - my <= y <= top + my


def problems(scene: bpy.types.Scene) -> list[str]:
    """Why the pictures cannot be sent, one line each naming the camera; [] when they can."""
    s = scene.dreampolish
    if s.camera_collection is None:
        return ["Choose the collection of cameras (Rig Cameras)"]
    pairs = picture_cameras(scene)
    if not pairs:
        return [f"No camera in {s.camera_collection.name!r} has a background image"]
    if len(pairs) > LIMITS.max_reference_views:
        return [f"{len(pairs)} cameras have pictures; the backend takes at most {LIMITS.max_reference_views}"]
    out, perspective = [], []
    render_w, render_h = camera_rig.render_resolution(scene)
    for cam, image in pairs:
        if cam.data.type != "PERSP":
            out.append(f"{cam.name}: a {cam.data.type.lower()} camera; only perspective cameras can be sent")
            continue
        perspective.append(cam)
        w, h = image.size
        if w == 0 or h == 0:
            out.append(f"{cam.name}: its picture {image.name!r} has no pixels (is its file missing?)")
        elif abs((w / h) / (render_w / render_h) - 1.0) > ASPECT_TOLERANCE:
            out.append(f"{cam.name}: its picture is {w}x{h}, not the render's shape ({render_w}x{render_h})")
    region = object_region(scene, perspective)
    if region is not None:
        out += [f"{cam.name}: does not look at the object (where the other cameras look)"
                for cam in perspective if not _sees(cam, scene, region)]
    return out


def views_payload(scene: bpy.types.Scene, limits: Limits) -> list[PictureView]:
    """The pictures with their cameras as the request's views (ValidationError naming the first problem)."""
    found = problems(scene)
    if found:
        raise ValidationError(found[0])
    return [PictureView(reference_image.reference_payload(image, limits), camera_rig.camera_spec(cam, scene))
            for cam, image in picture_cameras(scene)]


def placement(scene: bpy.types.Scene) -> Vector:
    """Where the pictures' object is: the cameras' region (the 3D cursor when there is only one camera)."""
    region = object_region(scene, [cam for cam, _ in picture_cameras(scene) if cam.data.type == "PERSP"])
    return region if region is not None else scene.cursor.location.copy()


def draw(layout, scene: bpy.types.Scene) -> None:
    """The pictures as a strip, each with its camera's name, and what stops them being sent."""
    pairs = picture_cameras(scene)
    if pairs:
        strip = layout.grid_flow(row_major=True, columns=min(len(pairs), 4), even_columns=True, align=True)
        for cam, image in pairs:
            col = strip.column(align=True)
            col.template_icon(icon_value=layout.icon(image), scale=3.0)
            col.label(text=cam.name, icon="CAMERA_DATA")
    for line in problems(scene):
        row = layout.row()
        row.alert = True
        row.label(text=line, icon="ERROR")
