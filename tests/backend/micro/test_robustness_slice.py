"""The robustness grid's slice in `make test` (backend/micro/robustness.py SLICE, issue 29): the real
pipeline with the micro priors makes the right object, within the quality tests' bounds, from a picture taken
30° above it and sent without a prompt. It failed before such a picture guided its own texture (the text prior
on an empty prompt painted the mug ΔE 34.7 off its colour; BENCHMARKS.md, "The right object at any seed and
camera"). A module of its own, so that `make test`'s workers run it beside the other micro modules."""

from __future__ import annotations

import pytest
from dreampolish.backend.micro import quality, robustness

from tests.support.hang_guards import MICRO_GENERATION_S

pytestmark = [pytest.mark.slow, pytest.mark.timeout(MICRO_GENERATION_S)]


@pytest.mark.parametrize("cell", robustness.SLICE, ids=lambda c: c.name)
def test_the_slice_makes_the_right_object(cell, tmp_path):
    result = robustness.run_cell(cell, work_dir=tmp_path)
    assert result.nearest == cell.shape, result
    assert result.chamfer_pct < quality.MAX_CHAMFER_PCT, result
    assert result.iou > quality.MIN_IOU, result
    assert result.colour_delta_e < quality.MAX_DELTA_E, result
    assert result.right, result
