"""Cameras for the renderers: the one place where the protocol's Blender cameras
become the renderer's matrices, and where training views are sampled.

Renderer convention: world = Blender world (right-handed, Z up, metres); camera
space = Blender/OpenGL camera (looks down -Z, +Y up, +X right); clip space =
OpenGL (NDC x right, y up, z in [-1, 1]); image row 0 is the TOP of the image.
Orbit angles: elevation from the XY plane towards +Z, azimuth about +Z from +X
towards +Y; position = distance * (cos el cos az, cos el sin az, sin el), looking
at the origin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.scene import CameraSpec
from torch import Tensor

from ..config_fields import ranged
from ..device import to_device


@dataclass
class CameraBatch:
    c2w: Tensor
    """[B,4,4] camera-to-world (Blender camera convention)."""
    proj: Tensor
    """[B,4,4] OpenGL projection: camera space -> clip space."""
    width: int
    height: int
    elevation_deg: Tensor
    """[B] orbit elevation of the camera position (for view-conditioned priors)."""
    azimuth_deg: Tensor
    """[B] orbit azimuth of the camera position."""
    distance: Tensor
    """[B] distance from the origin."""
    fovy_deg: Tensor
    """[B] vertical field of view."""

    @property
    def batch_size(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def w2c(self) -> Tensor:
        return torch.linalg.inv(self.c2w)

    @property
    def mvp(self) -> Tensor:
        """[B,4,4] world -> clip."""
        return self.proj @ self.w2c

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def to(self, device: torch.device | str) -> CameraBatch:
        """On `device`; host → GPU without waiting for the GPU (backend/device.py)."""
        return CameraBatch(
            to_device(self.c2w, device), to_device(self.proj, device), self.width, self.height,
            to_device(self.elevation_deg, device), to_device(self.azimuth_deg, device),
            to_device(self.distance, device), to_device(self.fovy_deg, device),
        )

    def __getitem__(self, idx: slice | Tensor | int) -> CameraBatch:
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return CameraBatch(
            self.c2w[idx], self.proj[idx], self.width, self.height,
            self.elevation_deg[idx], self.azimuth_deg[idx], self.distance[idx], self.fovy_deg[idx],
        )


# ---------------------------------------------------------------------------
# Defaults and small helpers
# ---------------------------------------------------------------------------

DEFAULT_NEAR = 0.05
"""Near clip plane (metres): well in front of an object of radius ~0.5 seen from 1 m or more."""
DEFAULT_FAR = 100.0
"""Far clip plane (metres): far behind an object seen from up to ~10 m."""


def perspective(
    focal_px: Tensor, width: int, height: int, shift_px: Tensor, near: float = DEFAULT_NEAR, far: float = DEFAULT_FAR
) -> Tensor:
    """[B,4,4] OpenGL projection for a pinhole of focal length `focal_px` [B] (pixels) whose image
    centre is offset by `shift_px` [B,2] pixels (x right, y up) from the optical axis.

    x_ndc = (2 f x / -z - 2 dx) / W, y_ndc = (2 f y / -z - 2 dy) / H  (dx, dy = shift in pixels),
    so proj[0,2] = 2 dx / W and proj[1,2] = 2 dy / H; depth rows are the usual glFrustum ones.
    """
    b = focal_px.shape[0]
    proj = torch.zeros(b, 4, 4, dtype=focal_px.dtype, device=focal_px.device)
    proj[:, 0, 0] = 2.0 * focal_px / width
    proj[:, 1, 1] = 2.0 * focal_px / height
    proj[:, 0, 2] = 2.0 * shift_px[:, 0] / width
    proj[:, 1, 2] = 2.0 * shift_px[:, 1] / height
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2.0 * far * near / (far - near)
    proj[:, 3, 2] = -1.0
    return proj


def _orbit_of_positions(pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Elevation, azimuth (degrees) and distance [B] of camera positions [B,3] about the origin."""
    distance = pos.norm(dim=-1)
    elevation = torch.rad2deg(torch.asin((pos[:, 2] / distance.clamp_min(1e-12)).clamp(-1.0, 1.0)))
    azimuth = torch.rad2deg(torch.atan2(pos[:, 1], pos[:, 0]))
    return elevation, azimuth, distance


# ---------------------------------------------------------------------------
# Blender cameras
# ---------------------------------------------------------------------------


def blender_sensor_fit(spec: CameraSpec) -> str:
    """The fit Blender actually uses: AUTO becomes HORIZONTAL when width >= height, else VERTICAL
    (BKE_camera_sensor_fit with pixel aspect 1)."""
    if spec.sensor_fit != "AUTO":
        return spec.sensor_fit
    w, h = spec.resolution
    return "HORIZONTAL" if w >= h else "VERTICAL"


def blender_intrinsics(spec: CameraSpec) -> tuple[float, float, float]:
    """(focal length, shift x, shift y) in pixels, exactly as Blender computes its view plane.

    Blender (BKE_camera_params_compute_viewplane): the sensor size is sensor_height for a
    VERTICAL fit and sensor_width otherwise (AUTO included); the fitted image side `viewfac`
    is the width for a horizontal fit and the height for a vertical one, and
    focal_px = lens / sensor_size * viewfac,  shift_px = shift * viewfac.
    """
    w, h = (int(s) for s in spec.resolution)
    sensor = float(spec.sensor_height_mm) if spec.sensor_fit == "VERTICAL" else float(spec.sensor_width_mm)
    viewfac = float(w) if blender_sensor_fit(spec) == "HORIZONTAL" else float(h)
    focal_px = float(spec.lens_mm) / sensor * viewfac
    return focal_px, float(spec.shift[0]) * viewfac, float(spec.shift[1]) * viewfac


def camera_from_blender(
    spec: CameraSpec, device: torch.device | str = "cpu", near: float = DEFAULT_NEAR, far: float = DEFAULT_FAR
) -> CameraBatch:
    """The one conversion from a protocol (Blender) camera to the renderer's CameraBatch (B=1).

    The camera-to-world matrix is already in our camera convention (Blender's: -Z forward,
    +Y up), less any object scale; only the intrinsics need converting. Orbit fields describe the camera position
    about the world origin; fovy is the vertical field of view of the full image.
    """
    spec.validate()
    w, h = (int(s) for s in spec.resolution)
    focal_px, shift_x, shift_y = blender_intrinsics(spec)
    c2w = torch.as_tensor(np.asarray(spec.matrix_world, dtype=np.float32), device=device).reshape(1, 4, 4).clone()
    # Blender ignores a camera object's scale when rendering (it normalises the matrix's axes).
    c2w[:, :3, :3] = torch.nn.functional.normalize(c2w[:, :3, :3], dim=1)
    focal = torch.tensor([focal_px], dtype=torch.float32, device=device)
    shift = torch.tensor([[shift_x, shift_y]], dtype=torch.float32, device=device)
    proj = perspective(focal, w, h, shift, near, far)
    elevation, azimuth, distance = _orbit_of_positions(c2w[:, :3, 3])
    fovy = torch.rad2deg(2.0 * torch.atan(0.5 * h / focal))
    return CameraBatch(c2w, proj, w, h, elevation, azimuth, distance, fovy)


def cameras_from_blender(
    specs: Sequence[CameraSpec], device: torch.device | str = "cpu",
    near: float = DEFAULT_NEAR, far: float = DEFAULT_FAR,
) -> CameraBatch:
    """Several Blender cameras as one batch; they must share one resolution (one image size per batch)."""
    if len(specs) == 0:
        raise ValidationError("cameras_from_blender needs at least one camera")
    resolutions = {tuple(int(s) for s in spec.resolution) for spec in specs}
    if len(resolutions) != 1:
        names = ", ".join(f"{s.name or i}={tuple(s.resolution)}" for i, s in enumerate(specs))
        raise ValidationError(f"cameras in one batch must share one resolution, got {names}")
    return concat_cameras([camera_from_blender(s, device, near, far) for s in specs])


def concat_cameras(batches: Sequence[CameraBatch]) -> CameraBatch:
    """Concatenate camera batches of one image size along the batch dimension."""
    sizes = {(c.width, c.height) for c in batches}
    if len(sizes) != 1:
        raise ValueError(f"camera batches of different image sizes cannot be concatenated: {sorted(sizes)}")
    return CameraBatch(
        torch.cat([c.c2w for c in batches]), torch.cat([c.proj for c in batches]),
        batches[0].width, batches[0].height,
        torch.cat([c.elevation_deg for c in batches]), torch.cat([c.azimuth_deg for c in batches]),
        torch.cat([c.distance for c in batches]), torch.cat([c.fovy_deg for c in batches]),
    )


def project_to_pixels(points: Tensor, cameras: CameraBatch) -> tuple[Tensor, Tensor]:
    """Project world points [N,3] (or [B,N,3]) into each camera's image.

    Returns (pixels [B,N,2], depth [B,N]): pixel coordinates with x to the right and y DOWN
    from the top-left image corner (pixel (i, j)'s centre is at (i + 0.5, j + 0.5)), and the
    positive camera-space depth (distance along the camera's -Z).
    """
    if points.dim() == 2:
        points = points.unsqueeze(0).expand(cameras.batch_size, -1, -1)
    homo = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)
    clip = homo @ cameras.mvp.transpose(1, 2)
    ndc = clip[..., :2] / clip[..., 3:4]
    x = (ndc[..., 0] + 1.0) * 0.5 * cameras.width
    y = (1.0 - ndc[..., 1]) * 0.5 * cameras.height
    return torch.stack([x, y], dim=-1), clip[..., 3]


# ---------------------------------------------------------------------------
# Orbit cameras and training-view sampling
# ---------------------------------------------------------------------------


def orbit_cameras(
    elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor, fovy_deg: Tensor,
    width: int, height: int, near: float = DEFAULT_NEAR, far: float = DEFAULT_FAR,
) -> CameraBatch:
    """Cameras on orbits about the origin (all inputs [B]), looking at it, world +Z up.

    At elevation +90 (-90) the camera looks straight down (up); image "up" is then the horizontal
    direction opposite (along) the azimuth, the limit of the nearby orbit views.
    """
    el, az = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    position = distance[:, None] * torch.stack(
        [torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], dim=-1
    )
    # back = position / distance; right = (-sin az, cos az, 0) is the limit of Z x back, which
    # stays defined at the poles; up = back x right.
    back = position / distance[:, None]
    right = torch.stack([-torch.sin(az), torch.cos(az), torch.zeros_like(az)], dim=-1)
    up = torch.cross(back, right, dim=-1)
    c2w = torch.eye(4, dtype=position.dtype, device=position.device).repeat(position.shape[0], 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = up
    c2w[:, :3, 2] = back
    c2w[:, :3, 3] = position
    focal = 0.5 * height / torch.tan(0.5 * torch.deg2rad(fovy_deg))
    proj = perspective(focal, width, height, torch.zeros_like(position[:, :2]), near, far)
    return CameraBatch(c2w, proj, width, height, elevation_deg, azimuth_deg, distance, fovy_deg)


def fill_distance(fovy_deg: Tensor | float, object_radius: float = 0.5, margin: float = 1.1) -> Tensor:
    """Camera distance at which a bounding sphere of `object_radius` fills a square frame of
    vertical field of view `fovy_deg`, with `margin` >= 1 as the ratio of frame to sphere size.

    The sphere's silhouette has angular radius asin(r / d); setting it to (fovy / 2) / margin
    in tangent terms gives d = r / sin(atan(tan(fovy / 2) / margin)).
    """
    half = torch.deg2rad(torch.as_tensor(fovy_deg, dtype=torch.float32)) * 0.5
    return object_radius / torch.sin(torch.atan(torch.tan(half) / margin))


@dataclass
class ViewSampler:
    """Random training views on orbits about the origin (the method's prior views)."""

    elevation_range: tuple[float, float] = ranged((-10.0, 45.0), -90, 90)
    """Elevation in degrees, uniform in this range."""
    azimuth_range: tuple[float, float] = ranged((-180.0, 180.0), -360, 360)
    """Azimuth in degrees, uniform in this range."""
    distance_range: tuple[float, float] = ranged((3.8, 3.8), 0.1, 100)
    """Camera distance from the origin, uniform in this range (ignored when fill_frame is set)."""
    fovy_range: tuple[float, float] = ranged((20.0, 20.0), 1, 170)
    """Vertical field of view in degrees, uniform in this range."""
    fill_frame: bool = False
    """Set the distance from the field of view so the object fills the frame (polish stage)."""
    object_radius: float = ranged(0.5, 0.01, 100)
    """Bounding-sphere radius of the object, used with fill_frame."""
    fill_margin: float = ranged(1.1, 0.5, 4.0)
    """Frame-to-object size ratio used with fill_frame."""
    reference_elevation_deg: float = ranged(0.0, -90, 90)
    """Elevation of the reference view (the method's reference view is at elevation 0)."""
    reference_azimuth_deg: float = ranged(0.0, -360, 360)
    """Azimuth of the reference view."""

    def sample(
        self, batch: int, width: int, height: int, generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> CameraBatch:
        """`batch` random views of `width` x `height` pixels."""

        def uniform(lo_hi: tuple[float, float]) -> Tensor:
            lo, hi = lo_hi
            return lo + (hi - lo) * torch.rand(batch, generator=generator)

        elevation = uniform(self.elevation_range)
        azimuth = uniform(self.azimuth_range)
        distance = uniform(self.distance_range)
        fovy = uniform(self.fovy_range)
        if self.fill_frame:
            distance = fill_distance(fovy, self.object_radius, self.fill_margin)
        return orbit_cameras(elevation, azimuth, distance, fovy, width, height).to(device)

    def reference(self, width: int, height: int, device: torch.device | str = "cpu") -> CameraBatch:
        """The reference view (B=1): reference elevation/azimuth, mid-range distance and fov."""
        fovy = torch.tensor([0.5 * sum(self.fovy_range)])
        distance = torch.tensor([0.5 * sum(self.distance_range)])
        if self.fill_frame:
            distance = fill_distance(fovy, self.object_radius, self.fill_margin)
        return orbit_cameras(
            torch.tensor([self.reference_elevation_deg]), torch.tensor([self.reference_azimuth_deg]),
            distance, fovy, width, height,
        ).to(device)
