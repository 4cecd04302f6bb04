"""Several reference pictures in a stage step (issue 31): each picture's losses are taken at its own camera,
with the relative depth per picture, and summed (or averaged, ReferenceWeights.views) into the step's loss;
a single picture's loss is what it was."""

from __future__ import annotations

import dataclasses

import torch
from dreampolish.backend.guidance.base import ReferenceView
from dreampolish.backend.render.cameras import orbit_cameras
from dreampolish.backend.schedules import Ramp
from dreampolish.backend.stages.base import (
    ReferenceWeights,
    ScaledReference,
    StageRender,
    reference_losses,
    scaled_references,
)
from dreampolish.backend.stages.step import StepLoss


def _view(elevation: float, fill: float) -> ReferenceView:
    cam = orbit_cameras(torch.tensor([elevation]), torch.tensor([0.0]), torch.tensor([3.8]), torch.tensor([20.0]), 8, 8)
    mask = torch.zeros(8, 8, 1)
    mask[2:6, 2:6] = 1.0
    return ReferenceView(rgb=torch.full((8, 8, 3), fill), mask=mask, camera=cam, depth=torch.rand(8, 8, 1))


def _render_by_elevation(cameras) -> StageRender:
    """A render that differs per camera (grey = elevation / 100), so a loss shows which camera it was taken at."""
    grey = float(cameras.elevation_deg[0]) / 100.0
    return StageRender(torch.full((1, 8, 8, 3), grey), torch.full((1, 8, 8, 1), 0.5), torch.rand(1, 8, 8, 1))


WEIGHTS = ReferenceWeights(rgb=Ramp(1000.0), mask=Ramp(100.0), depth=Ramp(0.05), resolution=8)


def test_each_picture_is_compared_at_its_own_camera_and_each_weighs_what_one_picture_does():
    front, top = _view(0.0, 0.0), _view(80.0, 0.2)
    reference = dataclasses.replace(front, more=[top])
    refs = scaled_references(reference, 8, "cpu")
    assert isinstance(refs, list) and [float(r.camera.elevation_deg[0]) for r in refs] == [0.0, 80.0]
    torch.manual_seed(0)
    summed = StepLoss.start("cpu")
    summed.add_reference(_render_by_elevation, refs, WEIGHTS, 0.5)  # the default: each at full weight
    torch.manual_seed(0)
    each = [reference_losses(_render_by_elevation(r.camera), r, WEIGHTS, 0.5)[0] for r in refs]
    assert torch.isclose(summed.total, each[0] + each[1])
    # the renders differ per camera (grey 0 at the front, 0.8 at the top), so the two pictures' losses do too
    assert not torch.isclose(each[0], each[1])
    torch.manual_seed(0)
    mean = StepLoss.start("cpu")
    mean.add_reference(_render_by_elevation, refs, dataclasses.replace(WEIGHTS, views="mean"), 0.5)
    assert torch.isclose(mean.total, (each[0] + each[1]) / 2)


def test_one_picture_is_one_scaled_reference_as_before():
    ref = scaled_references(_view(0.0, 0.0), 8, "cpu")
    assert isinstance(ref, ScaledReference)
    torch.manual_seed(0)
    loss = StepLoss.start("cpu")
    loss.add_reference(_render_by_elevation, ref, WEIGHTS, 0.5)
    torch.manual_seed(0)
    assert torch.equal(loss.total, reference_losses(_render_by_elevation(ref.camera), ref, WEIGHTS, 0.5)[0])


def test_each_of_n_pictures_weighs_1_or_1_over_n_or_1_over_root_n():
    """ReferenceWeights.views: "sum" 1, "mean" 1/N, "sqrt" 1/√N per picture, as the step adds them."""
    refs = scaled_references(dataclasses.replace(_view(0.0, 0.0), more=[_view(40.0, 0.1), _view(80.0, 0.2)]), 8, "cpu")
    torch.manual_seed(0)
    each = [reference_losses(_render_by_elevation(r.camera), r, WEIGHTS, 0.5)[0] for r in refs]
    for views, share in (("sum", 1.0), ("mean", 1 / 3), ("sqrt", 3 ** -0.5)):
        weights = dataclasses.replace(WEIGHTS, views=views)
        assert [weights.picture_share(n) for n in (1, 2, 3, 4)] == [
            {"sum": 1.0, "mean": 1.0 / n, "sqrt": 1.0 / n ** 0.5}[views] for n in (1, 2, 3, 4)]
        torch.manual_seed(0)
        loss = StepLoss.start("cpu")
        loss.add_reference(_render_by_elevation, refs, weights, 0.5)
        assert torch.isclose(loss.total, share * sum(each))
