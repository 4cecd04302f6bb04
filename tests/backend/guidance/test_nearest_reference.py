"""Zero123 with several pictures (issue 31, guidance/zero123.py NearestReference): each sampled view goes to
the guidance of the reference nearest it in viewing direction, and the parts' losses add up to the batch
mean, as one guidance's loss is."""

from __future__ import annotations

import torch
from dreampolish.backend.guidance.base import GuidanceInput, GuidanceOutput
from dreampolish.backend.guidance.zero123 import NearestReference
from dreampolish.backend.render.cameras import orbit_cameras


class Recorder:
    """A guidance whose loss is the mean of its views' red channel, remembering the elevations it saw."""

    def __init__(self):
        self.seen: list[float] = []

    def __call__(self, inp: GuidanceInput) -> GuidanceOutput:
        self.seen += [float(e) for e in inp.cameras.elevation_deg]
        return GuidanceOutput(inp.rgb[..., 0].mean(), {"t": torch.tensor(0.5)})


def _views(elevations, azimuths):
    n = len(elevations)
    cams = orbit_cameras(torch.tensor(elevations), torch.tensor(azimuths), torch.full((n,), 3.8),
                         torch.full((n,), 20.0), 8, 8)
    rgb = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, 8, 8, 3).clone()
    return GuidanceInput(rgb, torch.ones(n, 8, 8, 1), cams)


def test_each_view_goes_to_the_nearest_reference():
    front, top = Recorder(), Recorder()
    guidance = NearestReference([(torch.tensor([1.0, 0.0, 0.0]), front), (torch.tensor([0.0, 0.0, 1.0]), top)])
    inp = _views([0.0, 80.0, 30.0, 60.0, -10.0], [10.0, 0.0, 170.0, 0.0, 0.0])
    out = guidance(inp)
    assert front.seen == [0.0, -10.0]  # near the front camera (+X); 170° az at 30° is nearer the top than +X
    assert sorted(top.seen) == [30.0, 60.0, 80.0]
    # each part's mean, weighted by its share of the batch, is the batch mean
    assert torch.isclose(out.loss, inp.rgb[..., 0].mean())
    assert out.diagnostics["references_used"] == 2.0


def test_one_reference_gets_every_view():
    only = Recorder()
    out = NearestReference([(torch.tensor([1.0, 0.0, 0.0]), only)])(_views([0.0, 45.0], [0.0, 180.0]))
    assert only.seen == [0.0, 45.0] and out.diagnostics["references_used"] == 1.0
