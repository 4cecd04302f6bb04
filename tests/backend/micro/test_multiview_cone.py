"""Several pictures through the real pipeline with the micro priors (issue 31): the red cone pictured from 30°
and from 0°, with exact cameras. The picture from 30° alone is framed off the object and makes a cylinder
(Chamfer 7.8 %, IoU 0.49; BENCHMARKS.md "The right object at any seed and camera"); with the side picture the
object frame comes from both silhouettes and the cone must pass the bounds the 0° picture alone passes
(tests/backend/micro/test_micro_picture.py). One generation for the module."""

from __future__ import annotations

import pytest
from dreampolish.backend.micro import multiview, quality

from tests.support.hang_guards import MICRO_GENERATION_S

pytestmark = [pytest.mark.slow, pytest.mark.timeout(MICRO_GENERATION_S)]


@pytest.fixture(scope="module")
def cone(tmp_path_factory):
    result, _ = multiview.run_views_cell(multiview.CONE_ELEVATED, work_dir=tmp_path_factory.mktemp("cone"))
    return result


def test_the_cone_from_30_and_0_degrees_is_a_cone(cone):
    assert cone.nearest == "cone", cone
    assert cone.chamfer_pct < quality.MAX_CHAMFER_PCT, cone
    assert cone.iou > quality.MIN_IOU, cone


def test_its_colour_is_the_pictures(cone):
    assert cone.colour_delta_e < quality.MAX_DELTA_E, cone
