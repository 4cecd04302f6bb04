"""Zero123 sees the reference framed as its sampled views: Δr = 0 and no squashed non-square camera."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dreampolish.backend.guidance.zero123 import (
    ReferenceView,
    Zero123Guidance,
    frame_like_views,
    relative_camera,
)
from dreampolish.backend.pipeline.frame import job_frame
from dreampolish.backend.pipeline.priors import zero123_reference_view
from dreampolish.backend.presets import PRESETS

# Zero123 (Liu et al. 2023) renders Objaverse at radius 1.5-2.2 for both views, so |Δr| <= 0.7.
ZERO123_MAX_DELTA_R = 0.7


def prior_camera_vectors(zero123_models, preset, reference_camera) -> torch.Tensor:
    """The camera vectors the prior gets for each geometry stage's sampled views, through the backend's
    own path (priors.py's reference view, then the guidance's reframing)."""
    cfg = preset.guidance.zero123
    rgb = torch.ones(reference_camera.height, reference_camera.width, 3)
    mask = torch.ones(reference_camera.height, reference_camera.width, 1)
    guidance = Zero123Guidance(zero123_models, rgb, mask, zero123_reference_view(reference_camera), cfg)
    seen = guidance.reference_view
    vectors = []
    for stage in (preset.nerf, preset.neus, preset.dmtet):
        views = stage.views.sample(64, 8, 8, torch.Generator().manual_seed(0))
        vectors.append(relative_camera(views.elevation_deg, views.azimuth_deg, views.distance, seen))
        # The reframed reference is the sampled views' framing.
        assert stage.views.fovy_range == (cfg.view_fovy_deg, cfg.view_fovy_deg)
    return torch.cat(vectors)


@pytest.mark.parametrize("name", list(PRESETS))
def test_the_camera_vector_stays_in_the_checkpoints_range_for_every_preset(name, tiny_priors):
    from dreampolish.protocol.job import JobSpec

    preset = PRESETS[name]()
    frame = job_frame(JobSpec(prompt="a chair"), preset)
    camera = prior_camera_vectors(tiny_priors.zero123, preset, frame.reference_camera)
    assert camera[:, 3].abs().max() <= ZERO123_MAX_DELTA_R


def _reference_square_side(rgb, mask, view, preset):
    cfg = preset.guidance.zero123
    out_rgb, out_mask = frame_like_views(rgb, mask, view, cfg.view_distance, cfg.view_fovy_deg)
    assert out_rgb.shape[0] == out_rgb.shape[1] and out_mask.shape[:2] == out_rgb.shape[:2]
    return out_rgb, out_mask


def rig_16_9():
    from dreampolish.protocol.scene import CameraSpec

    m = np.eye(4, dtype=np.float32)
    # Blender camera looking along +Y from 6 m in front: camera X = world X, Y = world Z, Z = world −Y.
    m[:3, :3] = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], np.float32)
    m[:3, 3] = (0.0, -6.0, 0.0)
    return CameraSpec(matrix_world=m, resolution=(1920, 1080))


def test_a_16_9_rig_camera_keeps_the_camera_vector_in_range_and_is_not_squashed(tiny_priors):
    from dreampolish.protocol.job import JobSpec

    preset = PRESETS["standard"]()
    frame = job_frame(JobSpec(prompt="a chair", cameras=[rig_16_9()]), preset)
    ref = frame.reference_camera
    assert ref.width > ref.height
    assert prior_camera_vectors(tiny_priors.zero123, preset, ref)[:, 3].abs().max() <= ZERO123_MAX_DELTA_R
    view = ReferenceView(0.0, -90.0, float(ref.distance[0]), float(ref.fovy_deg[0]))
    rgb = torch.zeros(ref.height, ref.width, 3)
    yy, xx = torch.meshgrid(torch.arange(ref.height) + 0.5, torch.arange(ref.width) + 0.5, indexing="ij")
    disc = (((yy - ref.height / 2) ** 2 + (xx - ref.width / 2) ** 2) <= (ref.height / 4) ** 2).float()[..., None]
    _, out_mask = _reference_square_side(rgb, disc, view, preset)
    rows = int(out_mask[..., 0].sum(1).gt(0).sum())
    cols = int(out_mask[..., 0].sum(0).gt(0).sum())
    assert rows == cols


def test_framing_keeps_the_aspect_of_a_wide_reference():
    """A 16:9 reference at 40° fovy, 1.66 away: a centred circle must stay a circle in the square."""
    h, w = 90, 160
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    disc = (((yy - h / 2) ** 2 + (xx - w / 2) ** 2) <= 30.0 ** 2).float()[..., None]
    rgb = torch.zeros(h, w, 3)
    preset = PRESETS["standard"]()
    view = ReferenceView(0.0, -90.0, 1.66, 40.0)
    out_rgb, out_mask = _reference_square_side(rgb, disc, view, preset)
    rows = out_mask[..., 0].sum(1).gt(0).sum()
    cols = out_mask[..., 0].sum(0).gt(0).sum()
    assert int(rows) == int(cols)  # squashing 160 -> side would make it 16/9 taller than wide
    # Apparent size matches the views: half-extent 3.8·tan(10°) against 1.66·tan(20°).
    expected = round(h * 3.8 * np.tan(np.radians(10)) / (1.66 * np.tan(np.radians(20))))
    assert out_mask.shape[0] == expected
