"""Several pictures, several cameras (issue 31): one object frame that every picture agrees on, found from
their silhouettes, and the check that refuses pictures that cannot show one object.

A single picture's camera says where the object is seen but not how far away it is, so a one-picture job
recentres the picture on its silhouette and places the object at the world origin (frame.py). With two or
more pictures taken by exact cameras the object's place and size follow from the silhouettes themselves,
and each picture is used as its camera took it, without recentring:

1. **Where.** Each silhouette's centroid gives a ray from its camera. The point nearest every ray (least
   squares) is where the pictures agree the object is; how far each ray passes from it, against the size
   the silhouettes give the object there (each silhouette's angular radius times its camera's distance),
   says whether they can agree at all (`MAX_RAY_MISS`).
2. **How big.** The visual hull: a 64³ grid over a cube about that point, twice the largest size estimate
   on a side, keeps the cells whose centres project inside every silhouette (a silhouette dilated by one
   pixel, so that a thin part is not lost between cells). The hull contains the object and, from a few
   well-spread views, is close to it (Laurentini 1994, "The visual hull concept for silhouette-based image
   understanding"). Its cells' bounding box gives the centre c (the box's centre, as the object frame is
   defined: geometry/mesh.py normalize_to_unit) and the radius r (the largest distance of a kept cell's
   centre from c, plus half a cell's diagonal); the object frame is then [2r·I, c] (object -> world), the
   radius-0.5 ball mapped onto the hull's bounding sphere.
3. **Do they agree.** Every silhouette should be covered by the hull's projection (a consistent set's hull
   projects onto each of its silhouettes exactly). A picture whose silhouette is covered less than
   `MIN_COVERAGE` shows something the others do not: it is refused, named by its index and camera.

The first picture's camera is the reference camera: it defines the front (the view prompts' azimuth and
the quality measures' turn), as a single picture's does.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.image import ReferenceImage
from dreampolish.protocol.job import JobSpec, view_label
from torch import Tensor

from ..render.cameras import CameraBatch, camera_from_blender

HULL_GRID = 64
"""Cells on a side of the visual hull's grid."""
SILHOUETTE_SIDE = 128
"""The longer side the silhouettes are carved at (enough for a 64-cell grid: two pixels a cell or more)."""
MAX_RAY_MISS = 0.5
"""Most a silhouette's centre ray may pass from the point the rays agree on, in units of the object's radius
there: a centroid ray misses the object's centre by a fraction of its radius (a projection's centroid is
not the projected centroid), a picture of something else or from a wrong camera by more."""
MIN_COVERAGE = 0.8
"""Least fraction of a silhouette the hull's projection must cover (a consistent set covers ~1: the grid's
cells and the dilation leave a few per cent)."""
MAX_ASPECT_DIFFERENCE = 0.02
"""A picture's width/height may differ from its camera's resolution's by this fraction (rounding)."""


@dataclass
class Silhouette:
    camera: CameraBatch
    """B=1 world camera at the mask's size."""
    mask: Tensor
    """[H,W] bool foreground."""


@dataclass
class Hull:
    centre: np.ndarray
    """[3] world centre of the hull's bounding box."""
    radius: float
    """World radius of the hull's bounding sphere about `centre`."""
    coverage: list[float]
    """Per picture, the fraction of its silhouette the hull's projection covers."""
    cells: int
    """Cells of the grid kept."""

    def transform(self) -> np.ndarray:
        """float32 [4,4] object frame (radius-0.5 ball) -> world: [2r·I, c]."""
        t = np.eye(4, dtype=np.float32)
        t[:3, :3] *= 2.0 * self.radius
        t[:3, 3] = self.centre
        return t


def picture_mask(image: ReferenceImage, config=None) -> np.ndarray:
    """float (H,W) foreground of a picture: its alpha where it has transparency, else the reference stage's
    background removal (stages/reference.py image_mask)."""
    from ..stages.reference import decode_image, image_mask

    return image_mask(decode_image(image), config)


def _label(spec: JobSpec, i: int) -> str:
    return view_label(i, spec.views[i].camera.name)


def silhouettes(spec: JobSpec, config=None) -> list[Silhouette]:
    """Each picture's foreground at SILHOUETTE_SIDE with its world camera at that size (ValidationError naming
    the picture when it has no foreground or not its camera's aspect)."""
    from ..pipeline_api import JobFailed
    from ..stages.reference import ReferenceConfig

    out = []
    for i, view in enumerate(spec.views):
        w, h = view.image.size
        cw, ch = (int(v) for v in view.camera.resolution)
        if abs((w / h) / (cw / ch) - 1.0) > MAX_ASPECT_DIFFERENCE:
            raise ValidationError(f"{_label(spec, i)}: the picture is {w}x{h} pixels but its camera renders "
                                  f"{cw}x{ch}: a picture must have its camera's aspect ratio")
        try:
            mask = torch.from_numpy(np.ascontiguousarray(picture_mask(view.image, config or ReferenceConfig())))
        except JobFailed as exc:
            raise ValidationError(f"{_label(spec, i)}: {exc}") from None
        k = SILHOUETTE_SIDE / max(w, h)
        size = (max(1, round(h * k)), max(1, round(w * k)))
        small = F.interpolate(mask[None, None].float(), size=size, mode="area")[0, 0] > 0.5
        if not bool(small.any()):
            raise ValidationError(f"{_label(spec, i)}: the picture has no foreground: there is no object in it")
        camera = camera_from_blender(dataclasses.replace(view.camera, resolution=(size[1], size[0])))
        out.append(Silhouette(camera, small))
    return out


def _pixel_rays(camera: CameraBatch, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
    """(origin [3], unit directions [N,3]) of pixel centres (column xs, row ys) in the world."""
    p = camera.proj[0]
    x = 2.0 * (xs.float() + 0.5) / camera.width - 1.0
    y = 1.0 - 2.0 * (ys.float() + 0.5) / camera.height
    ray = torch.stack([(x + p[0, 2]) / p[0, 0], (y + p[1, 2]) / p[1, 1], -torch.ones_like(x)], -1)
    c2w = camera.c2w[0]
    return c2w[:3, 3], F.normalize(ray @ c2w[:3, :3].T, dim=-1)


def _project(camera: CameraBatch, points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(column, row, in front) of world points [N,3] in the camera's image."""
    clip = torch.cat([points, torch.ones_like(points[:, :1])], -1) @ camera.mvp[0].T
    w = clip[:, 3]
    ndc = clip[:, :2] / w.clamp_min(1e-9)[:, None]
    col = ((ndc[:, 0] + 1) * 0.5 * camera.width).floor().long()
    row = ((1 - ndc[:, 1]) * 0.5 * camera.height).floor().long()
    return col, row, w > 1e-6


def _inside(sil: Silhouette, points: Tensor, dilate: int = 1) -> Tensor:
    """[N] bool: the points project inside the (dilated) silhouette, in front of its camera."""
    mask = sil.mask.float()[None, None]
    if dilate:
        mask = F.max_pool2d(mask, 2 * dilate + 1, stride=1, padding=dilate)
    mask = mask[0, 0] > 0.5
    col, row, front = _project(sil.camera, points)
    h, w = mask.shape
    valid = front & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    out = torch.zeros(points.shape[0], dtype=torch.bool)
    out[valid] = mask[row[valid], col[valid]]
    return out


def _agreed_point(spec: JobSpec, sils: list[Silhouette]) -> tuple[np.ndarray, float]:
    """(the point nearest every silhouette's centre ray, the largest size estimate there), refusing rays that
    cannot meet (module docstring, 1)."""
    origins, directions, angular = [], [], []
    for sil in sils:
        ys, xs = torch.nonzero(sil.mask, as_tuple=True)
        o, d = _pixel_rays(sil.camera, xs, ys)
        centre = F.normalize(d.mean(0), dim=0)
        origins.append(o.double().numpy())
        directions.append(centre.double().numpy())
        # the silhouette's angular radius about its centre ray: the widest angle of its pixels' rays
        angular.append(float(torch.acos((d @ centre).clamp(-1, 1)).max()))
    a, b = np.zeros((3, 3)), np.zeros(3)
    for o, d in zip(origins, directions):
        proj = np.eye(3) - np.outer(d, d)
        a += proj
        b += proj @ o
    if np.linalg.cond(a) > 1e8:
        raise ValidationError("the pictures' cameras all look along one line: their object's depth cannot be "
                              "found; add a picture from another side")
    point = np.linalg.solve(a, b)
    sizes = []
    for i, (o, d, ang) in enumerate(zip(origins, directions, angular)):
        along = float(np.dot(point - o, d))
        if along <= 0:
            raise ValidationError(f"{_label(spec, i)}: its camera points away from where the other pictures "
                                  "show the object")
        sizes.append(along * math.tan(min(ang, 1.5)))
    size = float(np.median(sizes))
    misses = [float(np.linalg.norm((point - o) - np.dot(point - o, d) * d)) for o, d in zip(origins, directions)]
    # of pictures that miss alike (two pictures always do) the later is named: the first defines the front
    worst = max(i for i, miss in enumerate(misses) if miss >= 0.99 * max(misses))
    if misses[worst] > MAX_RAY_MISS * size:
        raise ValidationError(f"{_label(spec, worst)}: its silhouette's rays miss the object the other pictures "
                              f"show by {misses[worst] / size:.2f} of its radius (at most {MAX_RAY_MISS}): a "
                              "picture of another object, or from another camera")
    return point, max(sizes)


def visual_hull(spec: JobSpec, sils: list[Silhouette], grid: int = HULL_GRID) -> Hull:
    """The pictures' visual hull, its bounding box and sphere, and each silhouette's coverage (module
    docstring); ValidationError naming the picture that disagrees."""
    point, size = _agreed_point(spec, sils)
    half = 2.0 * size
    axis = torch.linspace(-half, half, grid, dtype=torch.float64)
    cells = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    cells = (cells + torch.from_numpy(point)).float()
    kept = torch.ones(cells.shape[0], dtype=torch.bool)
    for sil in sils:
        kept &= _inside(sil, cells)
    if not bool(kept.any()):
        raise ValidationError("the pictures' silhouettes have no point in common: they cannot show one object "
                              "from these cameras")
    hull = cells[kept]
    coverage = []
    for sil in sils:
        col, row, _ = _project(sil.camera, hull)
        h, w = sil.mask.shape
        ok = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        seen = torch.zeros(h, w)
        seen[row[ok], col[ok]] = 1.0
        seen = F.max_pool2d(seen[None, None], 3, stride=1, padding=1)[0, 0] > 0.5
        coverage.append(float((seen & sil.mask).sum()) / float(sil.mask.sum()))
    worst = int(np.argmin(coverage))
    if coverage[worst] < MIN_COVERAGE:
        raise ValidationError(f"{_label(spec, worst)}: only {100 * coverage[worst]:.0f}% of its silhouette lies "
                              f"on the shape the other pictures agree on (at least {100 * MIN_COVERAGE:.0f}%): a "
                              "picture of another object or size, or from another camera")
    centre, radius = _centre_and_radius(hull.double(), sils, 2 * half / (grid - 1))
    return Hull(centre.numpy(), radius, coverage, int(kept.sum()))


def _centre_and_radius(hull: Tensor, sils: list[Silhouette], step: float, rounds: int = 4) -> tuple[Tensor, float]:
    """The hull's bounding-box centre and the radius of the smallest sphere about it that every silhouette
    fits in (module docstring, 2). From views close in direction the hull runs far along their common
    line (its box is then no measure of the object there), so the box is taken of the hull inside that
    sphere, starting from the hull's centroid, a few rounds."""
    centre = hull.mean(0)
    pad = step * math.sqrt(3) / 2
    for _ in range(rounds):
        radius = max(_enclosing_radius(sil, centre) for sil in sils)
        inside = hull[(hull - centre).norm(dim=-1) <= radius + pad]
        if len(inside) == 0:
            break
        centre = (inside.min(0).values + inside.max(0).values) / 2
    radius = max(_enclosing_radius(sil, centre) for sil in sils)
    return centre, radius


def _enclosing_radius(sil: Silhouette, centre: Tensor) -> float:
    """The radius of the smallest sphere about `centre` whose image holds the whole silhouette: a sphere of
    radius r at distance d subtends asin(r/d), so r = d·sin(θ) for the silhouette's widest angle θ from the
    ray through the centre."""
    ys, xs = torch.nonzero(sil.mask, as_tuple=True)
    origin, d = _pixel_rays(sil.camera, xs, ys)
    to_centre = centre.float() - origin
    distance = float(to_centre.norm())
    widest = float(torch.acos((d @ (to_centre / distance)).clamp(-1, 1)).max())
    return distance * math.sin(min(widest, math.pi / 2))


def views_hull(spec: JobSpec, config=None) -> Hull:
    """The hull of a request with two or more views (ValidationError when the pictures disagree)."""
    return visual_hull(spec, silhouettes(spec, config))


def one_view_as_image(spec: JobSpec) -> JobSpec:
    """A request with one view is the single-picture request: `image` seen from that view's camera (the
    reference camera, put first in the rig)."""
    if len(spec.views) != 1:
        return spec
    view = spec.views[0]
    return dataclasses.replace(spec, image=view.image, views=[], cameras=[view.camera, *spec.cameras],
                               reference_camera=0)

