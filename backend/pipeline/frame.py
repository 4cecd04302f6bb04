"""The job's frame: where the object lives and the cameras it is seen from.

Every stage works in the job's object frame: the object centred on the origin inside the radius-0.5
ball, Z up. `JobFrame.transform` maps it to Blender's world and travels with every mesh sent back.
From a prompt, the object sits at the world origin, scaled so that it fills the reference camera's
frame (or to the size the request sets, `reference.object_size`); when refining, the input mesh (world)
is normalised into the object frame. Cameras of the request are Blender world cameras and are moved
into the object frame here (rotation kept, position (t − c) / s), so they see exactly what they see in
the scene.

A reference image shows its object centred (made from the prompt, or the artist's picture recentred),
while the origin may lie anywhere in the scene camera's frame (Place At: 3D Cursor). So the reference
view of a generated object is the scene camera turned to look at the origin (its roll kept), without
shift, and, with an object size, moved along that line to where the object fills its frame:
the object is made where the camera sees it. The reference preview is that image as the scene camera
sees it (`reference_as_seen`).

Several pictures with their cameras (`spec.views`, two or more) place the object where their silhouettes
agree it is (views.py: the visual hull's centre and the smallest sphere that fits every silhouette), and
every camera is used as it is: the pictures are not recentred, so each reference view is exactly what its
camera saw. The first camera is the reference camera (the front).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import CameraSpec

from ..geometry.mesh import TriMesh, normalize_to_unit
from ..presets import PipelinePreset, ReferenceStageConfig
from ..render.cameras import CameraBatch, camera_from_blender, fill_distance, orbit_cameras


@dataclass
class JobFrame:
    """Where the job's object lives and the cameras it is seen from, all in the object frame."""

    transform: np.ndarray
    """float32 [4,4] object frame -> Blender world."""
    reference_camera: CameraBatch
    """B=1 reference view at the preset's reference size."""
    preview_cameras: list[CameraBatch]
    """The request's camera rig (or the reference view), each B=1 at the preview size."""
    input_mesh: TriMesh | None = None
    """The mesh to refine, in the object frame (refine modes)."""
    scene_camera: CameraBatch | None = None
    """B=1 the request's reference camera as the scene has it, at the reference size: the view the
    reference preview is shown from (for a generated object the reference view itself is turned to it)."""
    view_cameras: list[CameraBatch] | None = None
    """A multi-view request's cameras (B=1 each, at the reference size; [0] is `reference_camera`), None
    for one picture or none."""


def _scaled_resolution(resolution: tuple[int, int], longest: int) -> tuple[int, int]:
    w, h = (int(v) for v in resolution)
    k = longest / max(w, h)
    return max(1, round(w * k)), max(1, round(h * k))


def camera_in_object_frame(spec: CameraSpec, transform: np.ndarray, longest: int,
                           device: torch.device | str = "cpu") -> CameraBatch:
    """A Blender world camera as a renderer camera in the object frame, with its image rescaled so
    that the longer side is `longest` (the projection is NDC-based: the view is unchanged).

    transform = [s·I, c; 0, 1] (uniform scale s, translation c) maps object to world, so the camera's
    position moves to (t − c) / s and its rotation is kept."""
    m = np.asarray(spec.matrix_world, np.float64).copy()
    scale = float(np.cbrt(abs(np.linalg.det(transform[:3, :3].astype(np.float64)))))
    m[:3, 3] = (m[:3, 3] - transform[:3, 3]) / scale
    moved = dataclasses.replace(spec, matrix_world=m.astype(np.float32),
                                resolution=_scaled_resolution(spec.resolution, longest))
    return camera_from_blender(moved, device)


def front_camera(fovy_deg: float, margin: float, width: int, height: int) -> CameraBatch:
    """Blender's front view (from −Y, looking along +Y) at the distance where the object fills it."""
    fov = torch.tensor([fovy_deg])
    return orbit_cameras(torch.tensor([0.0]), torch.tensor([-90.0]), fill_distance(fov, 0.5, margin), fov,
                         width, height)


def _smaller_fov_deg(camera: CameraBatch) -> float:
    """The narrower of the camera's vertical and horizontal fields of view (what the object must fit)."""
    fy = float(camera.proj[0, 1, 1])
    fx = float(camera.proj[0, 0, 0])
    return math.degrees(2 * math.atan(1.0 / max(fx, fy)))


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[3,3] the smallest rotation taking unit vector a to unit vector b (Rodrigues about a × b)."""
    axis, cos = np.cross(a, b), float(np.dot(a, b))
    if np.linalg.norm(axis) < 1e-12:
        if cos > 0:
            return np.eye(3)
        # Opposite: half a turn about any axis perpendicular to a.
        perp = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        perp /= np.linalg.norm(perp)
        return 2.0 * np.outer(perp, perp) - np.eye(3)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + k + k @ k / (1.0 + cos)


def _level(forward: np.ndarray) -> np.ndarray | None:
    """[3,3] the camera rotation looking along unit `forward` with its right axis level (world +Z up);
    None when it looks straight up or down."""
    right = np.cross(forward, [0.0, 0.0, 1.0])
    if np.linalg.norm(right) < 1e-6:
        return None
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(right, forward), -forward], axis=1)  # cameras look down local -Z


def aimed_at_origin(spec: CameraSpec, distance: float | None = None) -> CameraSpec:
    """The camera turned so that its optical axis passes through the world origin, without shift (its
    image centred on the origin), keeping its roll about its axis (a level camera stays level, so an
    upright object in the reference image is upright in the world); at `distance` from the origin along
    that line when given (module docstring)."""
    m = np.asarray(spec.matrix_world, np.float64).copy()
    position = m[:3, 3]
    if np.linalg.norm(position) < 1e-9:
        return spec  # at the origin itself: no direction to turn to
    rotation = m[:3, :3] / np.linalg.norm(m[:3, :3], axis=0)  # Blender ignores a camera object's scale
    toward = -position / np.linalg.norm(position)
    was, now = _level(-rotation[:, 2]), _level(toward)
    if was is None or now is None:  # looking straight down or up: no level to keep; the smallest turn
        m[:3, :3] = _rotation_between(-rotation[:, 2], toward) @ rotation
    else:
        m[:3, :3] = now @ (was.T @ rotation)  # the same roll about the new axis
    if distance is not None:
        m[:3, 3] = -toward * distance
    return dataclasses.replace(spec, matrix_world=m.astype(np.float32), shift=(0.0, 0.0))


def _generated_frame(spec: JobSpec, ref_cfg: ReferenceStageConfig) -> tuple[np.ndarray, CameraSpec | None]:
    """A generated object's frame (object -> world, uniform scale) and its reference camera (world)."""
    transform = np.eye(4, dtype=np.float32)
    if not spec.cameras:
        return transform, None
    scene_ref = spec.cameras[spec.reference_camera]
    world_ref = camera_from_blender(scene_ref)
    distance = float(world_ref.c2w[0, :3, 3].norm())
    half = math.radians(_smaller_fov_deg(world_ref)) / 2
    # The object frame's sphere (radius 0.5, scaled to r) fills the frame at distance d when
    # r = d sin(atan(tan(fov/2) / margin)).
    fill = math.sin(math.atan(math.tan(half) / ref_cfg.fill_margin))
    radius = ref_cfg.object_size / 2.0 if ref_cfg.object_size > 0 else distance * fill
    transform[:3, :3] *= 2.0 * radius
    return transform, aimed_at_origin(scene_ref, radius / fill if ref_cfg.object_size > 0 else None)


def job_frame(spec: JobSpec, preset: PipelinePreset, device: torch.device | str = "cpu") -> JobFrame:
    """Place the job: its object frame, the reference camera and the preview rig (module docstring)."""
    from .views import one_view_as_image

    if len(spec.views) >= 2:
        return _views_frame(spec, preset, device)
    spec = one_view_as_image(spec)
    ref_cfg = preset.reference
    size = ref_cfg.size
    input_mesh = None
    reference_spec = spec.cameras[spec.reference_camera] if spec.cameras else None
    if spec.mode == "generate":
        transform, reference_spec = _generated_frame(spec, ref_cfg)
    else:
        world = TriMesh.from_payload(spec.input_mesh, apply_transform=True)
        input_mesh, t = normalize_to_unit(world)
        transform = t.cpu().numpy().astype(np.float32)
    if spec.cameras:
        reference = camera_in_object_frame(reference_spec, transform, size)
        rig = [camera_in_object_frame(c, transform, preset.preview_size) for c in spec.cameras]
    else:
        reference = front_camera(ref_cfg.default_fovy_deg, ref_cfg.fill_margin, size, size)
        rig = [front_camera(ref_cfg.default_fovy_deg, ref_cfg.fill_margin, preset.preview_size, preset.preview_size)]
    scene = None if reference_spec is None else camera_in_object_frame(spec.cameras[spec.reference_camera],
                                                                       transform, size)
    return JobFrame(transform, reference.to(device), [c.to(device) for c in rig],
                    None if input_mesh is None else input_mesh.to(device),
                    None if scene is None else scene.to(device))


def _views_frame(spec: JobSpec, preset: PipelinePreset, device: torch.device | str) -> JobFrame:
    """Several pictures: the frame of their visual hull, each camera exact (module docstring)."""
    from .views import views_hull

    transform = views_hull(spec, preset.reference.generation).transform()
    cameras = [camera_in_object_frame(v.camera, transform, preset.reference.size).to(device) for v in spec.views]
    rig = [camera_in_object_frame(c, transform, preset.preview_size).to(device)
           for c in (spec.cameras or [v.camera for v in spec.views])]
    return JobFrame(transform, cameras[0], rig, view_cameras=cameras)


def reference_as_seen(rgba: torch.Tensor, reference: CameraBatch, seen_from: CameraBatch) -> torch.Tensor:
    """rgba [H,W,4] of the reference view -> [h,w,4] as the camera `seen_from` (B=1) shows it: each of its
    pixels' rays meets the plane through the origin facing the reference camera, and takes the reference
    image's colour where that point projects (transparent where it lies outside it or behind a camera)."""
    h, w = seen_from.height, seen_from.width
    dev = rgba.device
    ys = 1.0 - 2.0 * (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h
    xs = 2.0 * (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w - 1.0
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    p = seen_from.proj[0].to(dev)
    # x_ndc = P00 X / -Z - P02 (render/cameras.py perspective), so a pixel's ray is (X/-Z, Y/-Z, -1).
    ray = torch.stack([(x + p[0, 2]) / p[0, 0], (y + p[1, 2]) / p[1, 1], -torch.ones_like(x)], -1)
    c2w = seen_from.c2w[0].to(dev)
    direction, origin = ray @ c2w[:3, :3].T, c2w[:3, 3]
    normal = reference.c2w[0, :3, 2].to(dev)  # the reference camera's back axis: the plane faces it
    along = direction @ normal
    t = -(origin @ normal) / torch.where(along.abs() < 1e-9, torch.full_like(along, 1e-9), along)
    point = origin + t[..., None] * direction
    clip = torch.cat([point, torch.ones_like(point[..., :1])], -1) @ reference.mvp[0].to(dev).T
    ndc = clip[..., :2] / clip[..., 3:].clamp_min(1e-9)
    grid = torch.stack([ndc[..., 0], -ndc[..., 1]], -1)[None]  # grid_sample: y down, row 0 at the top
    image = torch.nn.functional.grid_sample(rgba.permute(2, 0, 1)[None].float(), grid, mode="bilinear",
                                            padding_mode="zeros", align_corners=False)[0].permute(1, 2, 0)
    return image * ((t > 0) & (clip[..., 3] > 0))[..., None]
