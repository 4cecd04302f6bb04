"""The job's frame: where the object lives and the cameras it is seen from.

Every stage works in the job's object frame: the object centred on the origin inside the radius-0.5
ball, Z up. `JobFrame.transform` maps it to Blender's world and travels with every mesh sent back.
From a prompt, the object sits at the world origin, scaled so that it fills the reference camera's
frame; when refining, the input mesh (world) is normalised into the object frame. Cameras of the
request are Blender world cameras and are moved into the object frame here (rotation kept, position
(t − c) / s), so they see exactly what they see in the scene.
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
from ..presets import PipelinePreset
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


def job_frame(spec: JobSpec, preset: PipelinePreset, device: torch.device | str = "cpu") -> JobFrame:
    """Place the job: its object frame, the reference camera and the preview rig (module docstring)."""
    ref_cfg = preset.reference
    size = ref_cfg.size
    input_mesh = None
    if spec.mode == "generate":
        transform = np.eye(4, dtype=np.float32)
        if spec.cameras:
            world_ref = camera_from_blender(spec.cameras[spec.reference_camera])
            distance = float(world_ref.c2w[0, :3, 3].norm())
            half = math.radians(_smaller_fov_deg(world_ref)) / 2
            # Radius that fills the frame at this distance: r = d sin(atan(tan(fov/2) / margin)); the
            # object frame has radius 0.5.
            radius = distance * math.sin(math.atan(math.tan(half) / ref_cfg.fill_margin))
            transform[:3, :3] *= 2.0 * radius
    else:
        world = TriMesh.from_payload(spec.input_mesh, apply_transform=True)
        input_mesh, t = normalize_to_unit(world)
        transform = t.cpu().numpy().astype(np.float32)
    if spec.cameras:
        reference = camera_in_object_frame(spec.cameras[spec.reference_camera], transform, size)
        rig = [camera_in_object_frame(c, transform, preset.preview_size) for c in spec.cameras]
    else:
        reference = front_camera(ref_cfg.default_fovy_deg, ref_cfg.fill_margin, size, size)
        rig = [front_camera(ref_cfg.default_fovy_deg, ref_cfg.fill_margin, preset.preview_size, preset.preview_size)]
    return JobFrame(transform, reference.to(device), [c.to(device) for c in rig],
                    None if input_mesh is None else input_mesh.to(device))
