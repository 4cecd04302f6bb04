"""The pictures' visual hull as a signed distance: what several exact cameras' silhouettes allow.

A point whose projection falls outside one picture's silhouette is not on the object (Laurentini 1994, "The
visual hull concept for silhouette-based image understanding"): the object lies inside the intersection of the
silhouettes' cones. As a signed distance (negative inside), per picture the 2-D signed distance of the point's
projection to the silhouette's edge (in units of the image plane at depth 1, from the projection matrix: pixels
need not be square), times the point's depth, which is the 3-D distance to the cone for a camera far from the
object; the hull's is the largest over the pictures (an intersection).

Used with several pictures by the DMTet stage (DmtetConfig.silhouette_hull: the surface is taken of
max(sdf, hull), the DMTet solid intersected with the hull) and by polish (PolishConfig.silhouette_hull: a
vertex moved out of the hull is put back on it), so that no part of the mesh sticks out of a silhouette that
a picture shows exactly (BENCHMARKS.md, "Several pictures, several cameras").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from ..render.cameras import CameraBatch, project_to_pixels

SUBPIXELS = 4
"""Each picture pixel is cut into SUBPIXELS² before the edge is found: the mask's coverage, interpolated
bilinearly, puts the edge of an antialiased silhouette within about a quarter of a pixel, where thresholding
the pixels themselves leaves it anywhere within half a pixel (a 64-px picture's pixel is 0.02 of the
object's radius-0.5 frame at the micro world's distance)."""


COVERAGE = 0.5
"""The interpolated coverage above which a sub-pixel counts as inside the silhouette: the antialiased edge's
middle. It cuts a part thinner than a pixel: the red cone from 30° and 0° lost the top 0.03 of its tip (held-out
IoU 0.907 -> 0.876). At 0.25 the cone kept it (0.907) but the hull held the torus's rim less: from three
pictures, seed 2, 0.890 from above against 0.900 at 0.5 (BENCHMARKS.md, "Several pictures, several cameras")."""


def silhouette_distance(mask: Tensor, cameras: CameraBatch, subpixels: int = SUBPIXELS,
                        coverage: float = COVERAGE) -> Tensor:
    """[H·s,W·s] signed distance of each sub-pixel centre (s = `subpixels`) to the edge of the silhouette
    (interpolated coverage > `coverage`; negative inside), in image-plane units at depth 1 (tangent of the angle off
    the axis). The edge is taken half a sub-pixel from the centres on either side of it."""
    fine = F.interpolate(mask.detach().float().cpu()[None, None], scale_factor=subpixels, mode="bilinear",
                         align_corners=False)[0, 0]
    inside = fine.numpy() > coverage
    h, w = inside.shape
    proj = cameras.proj[0].detach().cpu()
    # one sub-pixel on the image plane at depth 1: 2 / (size * focal term of the projection)
    sampling = (2.0 / (h * float(proj[1, 1])), 2.0 / (w * float(proj[0, 0])))
    half = 0.5 * np.array(sampling)
    if not inside.any():
        return torch.full((h, w), float(np.hypot(*sampling)) * max(h, w))
    outside_d = ndimage.distance_transform_edt(~inside, sampling=sampling) if (~inside).any() else np.zeros((h, w))
    inside_d = ndimage.distance_transform_edt(inside, sampling=sampling)
    # the edge lies between a pixel centre and its neighbour: half a pixel nearer than the neighbour's centre
    edge = float(np.mean(half))
    signed = np.where(inside, -(inside_d - edge), outside_d - edge)
    return torch.as_tensor(signed, dtype=torch.float32)


class VisualHull:
    """The visual hull of pictures with exact cameras: `sdf(points)` [N,3] -> [N] (module docstring)."""

    def __init__(self, cameras: list[CameraBatch], masks: list[Tensor]):
        """cameras: one single-camera batch per picture; masks: each [H,W] or [1,H,W,1] coverage in [0,1]."""
        if not cameras or len(cameras) != len(masks):
            raise ValueError("a visual hull needs one mask per camera, and at least one")
        self.cameras = cameras
        # found on the host (scipy's distance transform), kept where the masks are, so that a step reads nothing
        self.distances = [silhouette_distance(m.reshape(m.shape[-3], m.shape[-2]) if m.dim() == 4 else m, c).to(m.device)
                          for c, m in zip(cameras, masks)]

    def sdf(self, points: Tensor) -> Tensor:
        """[N,3] world points -> [N] signed distance to the hull (negative inside), the largest over the
        pictures; a point behind a camera or outside its frame is outside (the frame's edge distance).
        Differentiable with respect to the points (the distance maps are constants)."""
        out = torch.full(points.shape[:1], -float("inf"), device=points.device)
        for cam, dist in zip(self.cameras, self.distances):
            cam = cam.to(points.device)
            h, w = cam.height, cam.width
            pixels, depth = project_to_pixels(points, cam)
            # grid_sample with align_corners=False: the [-1, 1] grid spans the image's edges, whatever its size
            grid = torch.stack([pixels[0, :, 0] / w * 2 - 1, pixels[0, :, 1] / h * 2 - 1], -1)[None, None]
            on_plane = F.grid_sample(dist.to(points.device)[None, None], grid, align_corners=False,
                                     padding_mode="border").reshape(-1)
            d = on_plane * depth[0].clamp_min(0)
            d = torch.where(depth[0] > 0, d, torch.full_like(d, float("inf")))
            out = torch.maximum(out, d)
        return out

    def project_inside(self, points: Tensor) -> Tensor:
        """[N,3] the points, those outside the hull moved back onto it: each by its distance along the
        hull's outward direction there (one Newton step on sdf = 0; exact on a flat stretch of the hull)."""
        x = points.detach().requires_grad_(True)
        with torch.enable_grad():
            d = self.sdf(x)
            (grad,) = torch.autograd.grad(d.clamp_min(0).sum(), x)
        outside = (d.detach() > 0)[:, None]
        step = d.detach().clamp_min(0)[:, None] * F.normalize(grad, dim=-1)
        return torch.where(outside, points.detach() - step, points.detach())
