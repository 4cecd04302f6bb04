"""Volume rendering of the NeRF and NeuS fields (RGB, opacity, depth, normals) in PyTorch.

Rays come from a CameraBatch (renderer convention in render/cameras.py: pixel
centres, row 0 at the top, unprojected through the inverse OpenGL projection so
that lens shift and non-square images are honoured). Each ray is clipped to the
field's box [-bound, bound]^3 and sampled at `n_samples` stratified depths.

Empty space without host syncs (issue 28): rays that miss the box get a zero-length interval and no
weight; an occupancy grid over the box marks the cells where the field may be non-empty (refreshed by the
stage every few steps, dilated by one cell), and empty cells add nothing to a ray and send no gradient to
the field. How the kept samples are evaluated is `VolumeRenderConfig.empty_space`: gathered into a buffer of
a fixed capacity ("gather", the default: the grid's `kept` capacity, resized at reporting steps without
waiting, backend/capacity.py), all of them with empty ones weighted zero ("mask"), or gathered by their
count ("compact": the host reads the count, a sync per render on a GPU). All three give the same values
and gradients while the kept samples fit the capacity.

Memory: with `recompute_chunks`, a training render keeps one chunk's field activations at a time
(torch.utils.checkpoint per chunk; the sample positions are drawn outside it, so the recomputation
sees the same jitter).

Compositing (Max 1995): T_i = prod_{j<i} (1 - alpha_j), w_i = T_i alpha_i,
C = sum w_i c_i + (1 - sum w_i) * background. How alpha is obtained is up to the
field adapter: NeRF alpha_i = 1 - exp(-sigma_i delta_i); NeuS (Wang et al. 2021)
alpha_i = max((Phi_s(f_i^-) - Phi_s(f_i^+)) / Phi_s(f_i^-), 0).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.checkpoint import checkpoint

from ..capacity import DeviceCapacity, gather_rows, gather_static, scatter_rows
from ..config_fields import ranged
from ..device import to_device
from .cameras import CameraBatch

log = logging.getLogger(__name__)


@dataclass
class VolumeRenderConfig:
    n_samples: int = ranged(64, 1, 1024)
    """Samples per ray across the box."""
    occupancy_resolution: int = ranged(32, 8, 512)
    """Cells per axis of the occupancy grid."""
    background: tuple[float, float, float] = ranged((1.0, 1.0, 1.0), 0, 1)
    """Colour behind the object (linear blend by 1 - opacity)."""
    chunk_rays: int = ranged(16384, 1, 1 << 22)
    """Rays rendered at once (bounds peak memory at evaluation time)."""
    recompute_chunks: bool = True
    """When training renders more than one chunk, keep only each chunk's per-ray results for the
    backward pass and evaluate its samples again there (activation checkpointing per chunk), so that
    training memory is one chunk's field graph, not every chunk's: NeRF at 384^2 is 9 chunks."""
    empty_space: Literal["gather", "mask", "compact"] = "gather"
    """"gather": the samples the box and the occupancy grid keep are gathered into a buffer of the grid's
    `kept` capacity (torch.nonzero_static) and only they are evaluated; the count stays on the device and
    is read back at reporting steps to resize the capacity (1.5 x the largest need seen), so the host never
    waits (issue 28). Samples past the capacity (after the occupied space grew, until the next report) are
    left out, and the log says so. A render without an occupancy grid evaluates every sample.
    "mask": every sample is evaluated and empty ones weigh zero (fixed shapes, no sync, no capacity).
    "compact": only the kept samples are evaluated, sized by their count, which costs the host a wait every
    render: nothing on the CPU, where a micro preset NeRF render + backward is 3-8 times faster than
    "mask" (13-32 % of cells occupied), a host sync on a GPU. All give the same images and gradients."""


class VolumeField(Protocol):
    def query(self, points: Tensor, dirs: Tensor, deltas: Tensor, want_normals: bool
              ) -> tuple[Tensor, Tensor, Tensor | None]:
        """points, dirs [M,3], deltas [M] -> (alpha [M] in [0,1], albedo [M,3], world normals [M,3] or None)."""
        ...


def camera_rays(cameras: CameraBatch) -> tuple[Tensor, Tensor, Tensor]:
    """-> origins [B,H,W,3], unit directions [B,H,W,3] (world), and the camera forward axis [B,3]."""
    b, h, w = cameras.batch_size, cameras.height, cameras.width
    dev = cameras.device
    xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w * 2 - 1
    ys = 1 - (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h * 2  # row 0 = top
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    ndc = torch.stack([xx, yy, -torch.ones_like(xx), torch.ones_like(xx)], dim=-1).reshape(-1, 4)
    # inv_ex: linalg.inv checks the result for singular matrices by reading a flag back (a host sync per render)
    inv_proj = torch.linalg.inv_ex(cameras.proj.float()).inverse  # [B,4,4]
    p_cam = torch.einsum("bij,nj->bni", inv_proj, ndc)
    p_cam = p_cam[..., :3] / p_cam[..., 3:4]
    c2w = cameras.c2w.float()
    dirs = F.normalize(torch.einsum("bij,bnj->bni", c2w[:, :3, :3], p_cam), dim=-1)
    origins = c2w[:, None, :3, 3].expand_as(dirs)
    forward = -c2w[:, :3, 2]
    return origins.reshape(b, h, w, 3), dirs.reshape(b, h, w, 3), forward


def ray_box(origins: Tensor, dirs: Tensor, bound: float) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test against [-bound, bound]^3: (near [N], far [N], hit [N] bool)."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (-bound - origins) * inv
    t1 = (bound - origins) * inv
    near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    return near, far, far > near


class OccupancyGrid:
    """Boolean cells over [-bound, bound]^3 where the field may be non-empty."""

    KEPT_HEADROOM = 1.5
    """The gather buffers hold 1.5 x the most kept samples seen between two reports: a training view's
    count varies with its direction and distance, and the occupied space grows between refreshes."""

    def __init__(self, bound: float, resolution: int, device: torch.device | str):
        self.bound = bound
        self.resolution = resolution
        self.cells = torch.ones(resolution, resolution, resolution, dtype=torch.bool, device=device)
        self.kept = DeviceCapacity("occupied volume samples (per chunk of rays)", headroom=self.KEPT_HEADROOM,
                                   quantum=4096, minimum=4096)
        """How many samples of one chunk of rays the grid keeps, at most: empty_space="gather"'s buffers.
        Unknown (every sample) until the first reporting step; the stage requests it at reporting steps."""

    def cell_centres(self) -> Tensor:
        r = self.resolution
        t = (torch.arange(r, device=self.cells.device, dtype=torch.float32) + 0.5) / r * 2 - 1
        return torch.stack(torch.meshgrid(t, t, t, indexing="ij"), dim=-1).reshape(-1, 3) * self.bound

    @torch.no_grad()
    def update(self, occupied_fn, generator: torch.Generator | None = None, chunk: int = 65536) -> None:
        """occupied_fn: points [N,3] -> bool [N]. Tests each cell's centre and one jittered point, then
        dilates by one cell so that surfaces moving during the next steps are not cut off."""
        centres = self.cell_centres()
        cell = 2 * self.bound / self.resolution
        draw_on = generator.device if generator is not None else "cpu"
        jitter = (to_device(torch.rand(centres.shape, generator=generator, device=draw_on), centres.device) - 0.5) * cell
        occ = torch.zeros(centres.shape[0], dtype=torch.bool, device=centres.device)
        for pts in (centres, centres + jitter):
            occ |= torch.cat([occupied_fn(pts[i:i + chunk]) for i in range(0, pts.shape[0], chunk)])
        grid = occ.reshape(1, 1, *self.cells.shape).float()
        self.cells = F.max_pool3d(grid, 3, stride=1, padding=1)[0, 0] > 0

    def lookup(self, points: Tensor) -> Tensor:
        """points [N,3] -> occupied [N] bool (points outside the box are empty)."""
        r = self.resolution
        idx = ((points / self.bound + 1) * 0.5 * r).floor().long()
        inside = ((idx >= 0) & (idx < r)).all(dim=-1)
        idx = idx.clamp(0, r - 1)
        return inside & self.cells[idx[:, 0], idx[:, 1], idx[:, 2]]

    @property
    def fraction(self) -> Tensor:
        """Share of occupied cells, 0-dim on the grid's device (read it back only where a report needs it)."""
        return self.cells.float().mean()


def _sample_rays(o: Tensor, d: Tensor, t_near: Tensor, t_far: Tensor, s: int,
                 generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """`s` samples per ray between near and far, one per equal bin (at its centre, or jittered inside
    it with `generator`, drawn on the generator's device): (t [n,s], bin length delta [n,1], points [n,s,3])."""
    n, dev = o.shape[0], o.device
    bins = (torch.arange(s, device=dev, dtype=torch.float32)[None] + 0.5).expand(n, s)
    if generator is not None:
        bins = bins + (to_device(torch.rand(n, s, generator=generator, device=generator.device), dev) - 0.5)
    delta = ((t_far - t_near) / s)[:, None]  # [n,1]
    t = t_near[:, None] + bins * delta  # [n,s]
    return t, delta, o[:, None, :] + t[..., None] * d[:, None, :]


def _query_samples(field: VolumeField, occupancy: OccupancyGrid | None, pts: Tensor, d: Tensor, delta: Tensor,
                   hit: Tensor, want_normals: bool, empty_space: str, gather_size: int
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """The field at the samples [n,s,3], alpha zero on rays that miss the box (`hit` [n] false) and in the
    occupancy grid's empty cells: (alpha [n,s], colour [n,s,3], normal [n,s,3], zero where the field gives
    none). Which samples are evaluated: VolumeRenderConfig.empty_space; "gather" gathers `gather_size`
    (decided before the chunk, so that a recomputation for the backward pass gathers as many)."""
    n, s = pts.shape[0], pts.shape[1]
    flat = pts.reshape(-1, 3)
    flat_dirs = d[:, None, :].expand(n, s, 3).reshape(-1, 3)
    flat_delta = delta.expand(n, s).reshape(-1)
    keep = hit[:, None].expand(n, s).reshape(-1)
    if occupancy is not None:
        keep = keep & occupancy.lookup(flat)
    if empty_space == "compact":
        return _query_kept(field, flat, flat_dirs, flat_delta, keep, want_normals, n, s)
    if empty_space == "gather" and occupancy is not None:
        if gather_size < n * s:
            return _query_gathered(field, flat, flat_dirs, flat_delta, keep, want_normals, n, s, occupancy.kept,
                                   gather_size)
        occupancy.kept.track(keep.sum())  # capacity unknown or above the chunk: every sample, the need kept
    alpha, color, normal = field.query(flat, flat_dirs, flat_delta, want_normals)
    # where, not a product: an empty sample gets alpha 0 and a zero gradient even where the field is not finite
    alpha = torch.where(keep, alpha, torch.zeros((), device=alpha.device, dtype=alpha.dtype))
    if normal is None:
        normal = torch.zeros_like(color)
    return alpha.reshape(n, s), color.reshape(n, s, 3), normal.reshape(n, s, 3)


def _query_gathered(field: VolumeField, flat: Tensor, flat_dirs: Tensor, flat_delta: Tensor, keep: Tensor,
                    want_normals: bool, n: int, s: int, kept: DeviceCapacity, size: int
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """_query_samples at the kept samples only, gathered into `kept`'s capacity and scattered back; nothing
    is read back (the count goes to `kept` on the device). Padding slots evaluate the last sample and are
    scattered into a spare row that is dropped; kept samples past the capacity are left out (alpha 0)."""
    idx, count = gather_static(keep, size)
    kept.track(count)
    a_k, c_k, n_k = field.query(*gather_rows(idx, n * s, flat, flat_dirs, flat_delta), want_normals)
    alpha, color = scatter_rows(idx, a_k, n * s), scatter_rows(idx, c_k, n * s)
    normal = torch.zeros_like(color) if n_k is None else scatter_rows(idx, n_k, n * s)
    return alpha.reshape(n, s), color.reshape(n, s, 3), normal.reshape(n, s, 3)


def _query_kept(field: VolumeField, flat: Tensor, flat_dirs: Tensor, flat_delta: Tensor, keep: Tensor,
                want_normals: bool, n: int, s: int) -> tuple[Tensor, Tensor, Tensor]:
    """_query_samples at the kept samples only, scattered back (the host reads their count)."""
    idx = keep.nonzero().squeeze(-1)
    alpha = flat.new_zeros(n * s)
    color = flat.new_zeros(n * s, 3)
    normal = flat.new_zeros(n * s, 3)
    if idx.numel() > 0:
        a_k, c_k, n_k = field.query(flat[idx], flat_dirs[idx], flat_delta[idx], want_normals)
        alpha = alpha.index_put((idx,), a_k)
        color = color.index_put((idx,), c_k)
        if n_k is not None:
            normal = normal.index_put((idx,), n_k)
    return alpha.reshape(n, s), color.reshape(n, s, 3), normal.reshape(n, s, 3)


def _composite(alpha: Tensor, color: Tensor, normal: Tensor, t: Tensor, d: Tensor, cos_fwd: Tensor,
               bg: Tensor) -> tuple[Tensor, ...]:
    """Front-to-back alpha compositing, w_i = alpha_i prod_{j<i} (1 - alpha_j):
    (rgb over bg [n,3], opacity [n,1], z-depth [n,1], weighted normal [n,3], orientation [n,1])."""
    n = alpha.shape[0]
    trans = torch.cumprod(torch.cat([torch.ones(n, 1, device=alpha.device), 1 - alpha + 1e-10], dim=1), dim=1)[:, :-1]
    weights = alpha * trans  # [n,s]
    acc = weights.sum(-1, keepdim=True)
    rgb = (weights[..., None] * color).sum(1) + (1 - acc) * bg
    depth = (weights * t).sum(-1, keepdim=True) * cos_fwd[:, None]
    nrm = (weights[..., None] * normal).sum(1)
    # Ref-NeRF orientation penalty per ray: sum_i sg(w_i) max(0, n_i . d)^2. The weights are held fixed
    # (threestudio/DreamCraft3D: `out["weights"].detach()` in systems/dreamcraft3d.py), so the term turns
    # normals towards the camera instead of emptying the space where they face away.
    facing_away = F.relu((normal * d[:, None, :]).sum(-1))
    orient = (weights.detach() * facing_away**2).sum(-1, keepdim=True)
    return rgb, acc, depth, nrm, orient


def _render_chunk(field: VolumeField, occupancy: OccupancyGrid | None, want_normals: bool, empty_space: str,
                  gather_size: int, t: Tensor, delta: Tensor, pts: Tensor, d: Tensor, hit: Tensor, cos_fwd: Tensor, bg: Tensor
                  ) -> tuple[Tensor, ...]:
    """One chunk of rays, from its samples to its per-ray values (what _composite returns)."""
    alpha, color, normal = _query_samples(field, occupancy, pts, d, delta, hit, want_normals, empty_space,
                                          gather_size)
    return _composite(alpha, color, normal, t, d, cos_fwd, bg)


_MEASURED_CHUNKS_ONLY: ContextVar[bool] = ContextVar("measured_chunks_only", default=False)


@contextlib.contextmanager
def measured_chunks_only() -> Iterator[None]:
    """The dry run's renders (commands/dryrun.py) evaluate only the chunks that reach the render's memory peak
    (`_measured_chunk`); every other chunk's per-ray results are a copy of the first chunk's. The images are
    then wrong and their memory is not (_StandInChunk). Never set in a job."""
    token = _MEASURED_CHUNKS_ONLY.set(True)
    try:
        yield
    finally:
        _MEASURED_CHUNKS_ONLY.reset(token)


def _measured_chunk(index: int, count: int) -> bool:
    """Whether the dry run evaluates chunk `index` of `count`: the first and the last two (_StandInChunk says
    why these reach the peak)."""
    return index == 0 or index >= count - 2


class _StandInChunk(torch.autograd.Function):
    """A chunk the dry run does not evaluate, as memory sees it: the render's peak is reached, exactly, in the
    chunks it does evaluate (_measured_chunk).

    Every chunk of a render holds the same tensors (`recompute_chunks`; a render without gradients is the
    same without the backward pass): its samples from `_sample_rays` (t, delta, pts: new storages, kept by
    the checkpoint for the recomputation until the chunk's backward has run), the field's activations at
    chunk_rays x n_samples samples while it is evaluated (and again while it is recomputed in the backward
    pass), and its per-ray results, kept until they are concatenated. Only the last chunk may be shorter.
    So, in the forward pass, what is live grows by one chunk's samples and results per chunk, and the most
    is at the last chunk's evaluation or, when the last is shorter, possibly at the one before it (the last
    full chunk, with every earlier chunk's samples and results held). The backward pass recomputes the
    chunks from the last to the first, freeing each one's samples after it; each chunk's backward adds its
    gradient to the field's, which the first one recomputed (the last chunk) makes and every later one adds
    to (one table-sized gradient more at once), so the most is at the recomputation of the last chunk or of
    the one before it, the first to add with every earlier chunk's samples held. A stand-in holds what its
    chunk holds between those moments, so evaluating the first chunk (what a chunk keeps is measured there)
    and the last two gives the render's peak:
    - its samples, saved here and freed when the backward pass reaches it, as the checkpoint frees a chunk's;
    - its per-ray results, copies of the first chunk's (new storages of the same sizes); their gradient flows
      into the first chunk's (a sum of a few megabytes there that a job does not make: the only excess);
    - what the first chunk's evaluation left alive besides its results (`retained`, uninitialised bytes:
      they cost no host memory), freed when the backward pass reaches it. A checkpointed chunk should keep
      nothing but its inputs; it keeps more where the field's normals are a gradient taken inside it
      (FieldConfig.normals "analytic": autograd.grad with create_graph unpacks, during the forward pass,
      tensors the checkpoint had dropped, so the checkpoint recomputes them then and keeps them: the hash
      grid's corner rows, int64 [samples, 8] per hashed level on the PyTorch encoding, about 0.8 kB a sample
      of the standard NeRF field with every level active, BENCHMARKS.md). Each chunk keeps that until its own
      backward pass, so a job's render holds it for every chunk at once.
    Checked on the draft NeRF field with every level active (1,024 rays in 8 chunks: 280.5 MB at the peak
    either way) and on small fields (tests/backend/render/test_volume.py): the dry run's peak equals the
    job's, with a loss that uses every output (the stages' do: the orientation penalty uses the normals, NeuS's alpha its gradient). A loss
    that leaves the normals unused leaves each chunk's recomputed normal graph alive after its backward
    pass, which the stand-ins do not copy."""

    @staticmethod
    def forward(ctx, t: Tensor, delta: Tensor, pts: Tensor, retained: Tensor, *first: Tensor
                ) -> tuple[Tensor, ...]:
        ctx.save_for_backward(t, delta, pts, retained)
        return tuple(x.clone() for x in first)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:
        return (None, None, None, None, *grads)


class _RetainedBytes(TorchDispatchMode):
    """The bytes of the storages that ops make inside it and that are still alive when asked (the dry run's
    first chunk: _StandInChunk)."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[int, weakref.ref] = {}
        """id -> the storage, while it lives (a freed storage's id may be reused by a new one)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, Tensor):
                storage = t.untyped_storage()
                if storage._cdata in inputs:  # a view of an input (the hash table's slices): nothing new
                    continue
                known = self._made.get(id(storage))
                if known is None or known() is None:
                    self._made[id(storage)] = weakref.ref(storage)
        return out

    def alive(self, besides: tuple[Tensor, ...]) -> int:
        """The bytes alive now that are not the storages of `besides`."""
        skip = {id(t.untyped_storage()) for t in besides}
        live = {key: s.nbytes() for key, s in ((key, r()) for key, r in self._made.items()) if s is not None}
        return sum(n for key, n in live.items() if key not in skip)


def render_volume(
    field: VolumeField,
    cameras: CameraBatch,
    bound: float,
    cfg: VolumeRenderConfig,
    occupancy: OccupancyGrid | None = None,
    *,
    want_normals: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """-> {"rgb": [B,H,W,3], "opacity": [B,H,W,1], "depth": [B,H,W,1] (camera z-depth, 0 on background),
    "normal": [B,H,W,3] (opacity-weighted world normals, background zero) and "orientation": [B,H,W,1]
    (per-ray Ref-NeRF penalty), both only with want_normals}.
    `generator` jitters the samples (training); None samples at bin centres (evaluation). The jitter is
    drawn on the generator's device: one on the cameras' device spares the host n_rays * n_samples draws
    and their copy each render."""
    origins, dirs, forward = camera_rays(cameras)
    b, h, w, _ = origins.shape
    o = origins.reshape(-1, 3)
    d = dirs.reshape(-1, 3)
    # z-depth per unit of ray length, to report depth along the camera axis
    cos_fwd = (dirs * forward[:, None, None, :]).sum(-1).reshape(-1)
    n_rays, dev = o.shape[0], o.device
    near, far, hit = ray_box(o, d, bound)
    # a ray that misses the box gets the zero-length interval [0, 0] (finite sample points, no weight)
    zero = torch.zeros((), device=dev)
    near, far = torch.where(hit, near, zero), torch.where(hit, far, zero)
    bg = to_device(torch.tensor(cfg.background, dtype=torch.float32), dev)

    if cfg.empty_space not in ("gather", "mask", "compact"):
        raise ValueError(f"unknown empty_space {cfg.empty_space!r}: 'gather', 'mask' or 'compact'")
    if cfg.empty_space == "gather" and occupancy is not None:
        occupancy.kept.poll()  # a need requested at a reporting step may have landed
    recompute = cfg.recompute_chunks and torch.is_grad_enabled() and n_rays > cfg.chunk_rays
    pieces = []
    count = -(-n_rays // cfg.chunk_rays)
    # the dry run only (measured_chunks_only): a job evaluates every chunk, with nothing watching its ops
    stand_ins = _MEASURED_CHUNKS_ONLY.get() and (recompute or not torch.is_grad_enabled()) and count > 3
    retained = 0  # the bytes the first chunk left alive besides its results (_StandInChunk)
    for index, start in enumerate(range(0, n_rays, cfg.chunk_rays)):
        ids = slice(start, start + cfg.chunk_rays)
        t, delta, pts = _sample_rays(o[ids], d[ids], near[ids], far[ids], cfg.n_samples, generator)
        rays = min(cfg.chunk_rays, n_rays - start)
        gather_size = occupancy.kept.size(rays * cfg.n_samples) if occupancy is not None else rays * cfg.n_samples
        if stand_ins and not _measured_chunk(index, count):
            own = torch.empty(retained, dtype=torch.uint8, device=dev)  # each chunk keeps its own
            pieces.append(_StandInChunk.apply(t, delta, pts, own, *pieces[0]))
            continue
        args = (field, occupancy, want_normals, cfg.empty_space, gather_size, t, delta, pts, d[ids], hit[ids],
                cos_fwd[ids], bg)
        with _RetainedBytes() if stand_ins and recompute and index == 0 else contextlib.nullcontext() as made:
            pieces.append(checkpoint(_render_chunk, *args, use_reentrant=False) if recompute else _render_chunk(*args))
        if made is not None:
            retained = made.alive(pieces[0])
            log.info("dry run: a chunk of %d rays x %d samples keeps %.3f GB until its backward pass", rays,
                     cfg.n_samples, retained / 1e9)
    # rgb, opacity, depth, normal, orientation per ray
    rgb_out, opacity_out, depth_out, normal_out, orient_out = (
        values[0] if len(pieces) == 1 else torch.cat(values) for values in zip(*pieces))
    out = {
        "rgb": rgb_out.reshape(b, h, w, 3),
        "opacity": opacity_out.reshape(b, h, w, 1),
        "depth": depth_out.reshape(b, h, w, 1),
    }
    if want_normals:
        out["normal"] = normal_out.reshape(b, h, w, 3)
        out["orientation"] = orient_out.reshape(b, h, w, 1)
    return out


class NerfVolume:
    """Adapter: a DensityField as a VolumeField (alpha = 1 - exp(-sigma delta))."""

    def __init__(self, density_field):
        self.field = density_field

    def query(self, points, dirs, deltas, want_normals):
        if want_normals:
            sigma, rgb, normals = self.field.forward_with_normals(points)
        else:
            (sigma, rgb), normals = self.field(points), None
        alpha = 1 - torch.exp(-sigma * deltas)
        return alpha, rgb, normals


class NeusVolume:
    """Adapter: an SdfField as a VolumeField, NeuS's unbiased alpha with sharpness s (inverse std).

    Section endpoints f^-/+ = f -/+ 0.5 * delta * cos, with the cosine between ray and gradient
    annealed from |cos| (everything visible early on) to the true cosine by `cos_anneal`
    (as in NeuS: cos = -(relu(-c/2 + 1/2) (1 - r) + relu(-c) r)).
    """

    def __init__(self, sdf_field, sharpness: float, cos_anneal: float = 1.0):
        self.field = sdf_field
        self.sharpness = sharpness
        self.cos_anneal = cos_anneal

    def query(self, points, dirs, deltas, want_normals):
        sdf, rgb, grad = self.field.forward_with_gradient(points)
        c = (dirs * grad).sum(-1)
        r = self.cos_anneal
        iter_cos = -(F.relu(-c * 0.5 + 0.5) * (1.0 - r) + F.relu(-c) * r)
        prev_sdf = sdf - iter_cos * deltas * 0.5
        next_sdf = sdf + iter_cos * deltas * 0.5
        prev_cdf = torch.sigmoid(prev_sdf * self.sharpness)
        next_cdf = torch.sigmoid(next_sdf * self.sharpness)
        alpha = ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0)
        normals = F.normalize(grad, dim=-1) if want_normals else None
        return alpha, rgb, normals
