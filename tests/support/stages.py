"""Small settings and stand-ins for the stage tests (needs torch): a hash grid and field small enough for the
CPU, a view sampler, reference weights, a volume render config, a Recorder for a stage's reports, a
test torus, and ViewMemo (an oracle's renders memoised per camera)."""

from __future__ import annotations

import torch
import trimesh
from dreampolish.backend.geometry.fields import FieldConfig
from dreampolish.backend.geometry.hashgrid import HashGridConfig
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.guidance.oracle import OracleTarget
from dreampolish.backend.render.cameras import ViewSampler
from dreampolish.backend.render.volume import VolumeRenderConfig
from dreampolish.backend.stages.base import Ramp, ReferenceWeights

GRID = HashGridConfig(n_levels=3, log2_hashmap_size=15, base_resolution=8, per_level_scale=1.5, start_levels=2,
                      unlock_until=0.5)
FIELD = FieldConfig(grid=GRID, hidden_dim=16, n_feature_dims=3, normal_eps=0.02)
VIEWS = ViewSampler(elevation_range=(-30.0, 60.0))
REF = ReferenceWeights(rgb=Ramp(1.0), mask=Ramp(1.0), depth=Ramp(0.1), resolution=12)
RENDER = VolumeRenderConfig(n_samples=12, occupancy_resolution=8)


class Recorder:
    def __init__(self, cancel_at: int | None = None):
        self.calls: list[tuple[int, int, dict[str, float]]] = []
        self.cancel_checks = 0
        self.cancel_at = cancel_at

    def progress(self, step, total, losses):
        self.calls.append((step, total, losses))

    def watch(self, state):
        self.watched = state

    def check_cancel(self):
        self.cancel_checks += 1
        if self.cancel_at is not None and self.cancel_checks > self.cancel_at:
            raise RuntimeError("cancelled")


def torus() -> TriMesh:
    t = trimesh.creation.torus(0.33, 0.14, major_sections=32, minor_sections=16)
    v = torch.tensor(t.vertices, dtype=torch.float32)
    return TriMesh(v, torch.tensor(t.faces), vertex_colors=torch.tensor([0.8, 0.3, 0.2]).expand(v.shape[0], 3).clone())


class ViewMemo:
    """The oracle's renders memoised per camera: the texture stage draws from a fixed pool of views, so
    each target render is made once (keeps this CPU test short)."""

    def __init__(self, oracle: OracleTarget):
        self.render_target = oracle.render
        self.cache: dict[bytes, object] = {}
        oracle.render = self  # type: ignore[method-assign]

    def __call__(self, cameras):
        key = cameras.c2w.numpy().tobytes() + cameras.proj.numpy().tobytes()
        if key not in self.cache:
            self.cache[key] = self.render_target(cameras)
        return self.cache[key]
