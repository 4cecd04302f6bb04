"""Presets: typed configs, JSON round trip, per-request options, and request checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dreampolish.backend.config_values import apply_options, field_paths, to_json_dict
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.backend.presets import (
    PipelinePreset,
    get_preset,
    load_preset,
    preset_names,
    save_preset,
)
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.limits import LIMITS
from dreampolish.protocol.scene import CameraSpec, MeshPayload

from tests.support.recording import box_payload


def test_presets_are_named_and_scale_up():
    assert preset_names() == ["tiny", "micro", "draft", "standard", "high", "refine"]
    tiny, micro, draft, standard, high = (get_preset(n) for n in ("tiny", "micro", "draft", "standard", "high"))
    assert tiny.model_set == "tiny" and micro.model_set == "micro" and standard.model_set == "default"
    for stage in ("nerf", "neus", "dmtet", "polish", "texture"):
        steps = [getattr(p, stage).steps for p in (tiny, micro, draft, standard, high)]
        assert steps == sorted(steps) and steps[0] < 10, stage
    # The micro model set has no intrinsics model: its preset bakes the base colour alone.
    assert micro.base_color_only and micro.rasterizer == "torch"
    # The method's settings (METHOD.md).
    assert standard.nerf.steps == 5000 and standard.dmtet.grid_resolution == 128
    assert standard.texture.guidance.objective == "dsd" and standard.polish.fovy_range_deg == (15.0, 60.0)
    assert standard.polish.loss == "normal_estimator"


def test_the_refine_preset_is_a_short_lane_for_a_mesh_the_artist_sends():
    draft, refine = get_preset("draft"), get_preset("refine")
    assert refine.refines_only and not draft.refines_only
    assert refine.dmtet.steps < draft.dmtet.steps and refine.texture.steps < draft.texture.steps
    assert refine.polish.steps == draft.polish.steps and refine.polish.render_size == draft.polish.render_size
    pipeline = DreamPolishPipeline()
    pipeline.check(JobSpec(prompt="a worn bronze statue", preset="refine", mode="geometry", input_mesh=box_payload()))
    pipeline.check(JobSpec(prompt="worn bronze", preset="refine", mode="texture", input_mesh=box_payload(with_uvs=True)))
    with pytest.raises(ValidationError, match="refines a mesh you send"):
        pipeline.check(JobSpec(prompt="a worn bronze statue", preset="refine"))


def test_preset_round_trips_through_plain_json(tmp_path):
    preset = get_preset("draft", {"texture.guidance.objective": "vsd", "polish.loss": "smoothness"})
    path = save_preset(preset, tmp_path / "draft.json")
    assert path.read_text().lstrip().startswith("{")
    assert load_preset(path) == preset
    assert to_json_dict(load_preset(path)) == to_json_dict(preset)


def test_every_field_is_reachable_by_a_request_option():
    preset = get_preset("standard")
    paths = field_paths(preset)
    assert {"nerf.steps", "neus.sdf.grid.n_levels", "dmtet.grid_resolution", "polish.consistency_weight",
            "texture.guidance.lambda_var.start", "texture.atlas_size", "export.write_glb"} <= set(paths)
    changed = apply_options(preset, {"polish.steps": 12, "texture.guidance.guidance_scale": 3,
                                     "nerf.views.fovy_range": [15, 30], "texture.normal_map": True})
    assert changed.polish.steps == 12 and changed.texture.guidance.guidance_scale == 3.0
    assert changed.nerf.views.fovy_range == (15.0, 30.0) and changed.texture.normal_map is True
    assert preset.polish.steps == 300  # the preset itself is untouched


@pytest.mark.parametrize("options, message", [
    ({"polish.stepz": 3}, "no field 'stepz'"),
    ({"sculpt.steps": 3}, "no field 'sculpt'"),
    ({"polish.steps": "many"}, "polish.steps must be an integer"),
    ({"polish.steps": True}, "polish.steps must be an integer"),
    ({"texture.guidance.objective": "xsd"}, "texture.guidance.objective must be one of"),
    ({"polish": 3}, "names a group of settings"),
    ({"texture.normal_map": 1}, "must be true or false"),
])
def test_bad_options_name_the_field(options, message):
    with pytest.raises(ValidationError, match=message):
        get_preset("tiny", options)


def _spec(**kw) -> JobSpec:
    return JobSpec(**{"prompt": "a teapot", "preset": "tiny", **kw})


def _nan_mesh() -> MeshPayload:
    m = box_payload()
    m.vertices[0, 0] = np.nan
    return m


@pytest.mark.parametrize("spec, message", [
    (_spec(prompt="   "), "prompt is empty"),
    (_spec(preset="ultra"), "unknown preset 'ultra'"),
    (_spec(stages=["reference", "nerf", "sculpt"]), "stage 'sculpt' in stages is not part of a 'generate' job"),
    (_spec(pause_after=["glaze"]), "stage 'glaze' in pause_after is not part of"),
    (_spec(stages=["reference", "neus"]), "skip a stage"),
    (_spec(mode="geometry"), "input_mesh is missing"),
    (_spec(mode="geometry", input_mesh=_nan_mesh()), "NaN"),
    (_spec(mode="texture", input_mesh=MeshPayload(np.zeros((3, 3), np.float32), np.zeros((0, 3), np.uint32))),
     "no faces"),
    (_spec(mode="geometry", input_mesh=MeshPayload(np.zeros((LIMITS.max_vertices + 1, 3), np.float32),
                                                    np.zeros((1, 3), np.uint32))), "limit"),
    (_spec(mode="texture", input_mesh=box_payload(), stages=["dmtet"]), "not part of a 'texture' job"),
    (_spec(options={"nerf.steps": -1.5}), "nerf.steps must be an integer"),
    (_spec(prompt="x" * (LIMITS.max_prompt_chars + 1)), "limit"),
    (_spec(cameras=[CameraSpec(np.eye(4, dtype=np.float32))], reference_camera=2), "reference_camera 2"),
])
def test_bad_requests_are_rejected_before_any_work(spec, message):
    with pytest.raises(ValidationError, match=message):
        DreamPolishPipeline().check(spec)


def test_good_requests_pass_the_check():
    pipeline = DreamPolishPipeline()
    pipeline.check(_spec(options={"nerf.steps": 3, "texture.guidance.objective": "sds"}, pause_after=["dmtet"]))
    pipeline.check(_spec(mode="geometry", input_mesh=box_payload(), prompt=""))
    pipeline.check(_spec(stages=["reference", "nerf"]))
    assert set(pipeline.presets()) >= {"tiny", "draft", "standard", "high"}
    assert isinstance(get_preset("tiny"), PipelinePreset)


def test_generated_object_is_scaled_to_fill_the_reference_camera():
    from dreampolish.backend.pipeline import job_frame
    from dreampolish.backend.render.cameras import project_to_pixels

    c2w = np.array([[1, 0, 0, 0], [0, 0, -1, -10], [0, 1, 0, 0], [0, 0, 0, 1]], np.float32)  # at -Y, looking +Y
    camera = CameraSpec(c2w, lens_mm=50.0, resolution=(400, 200))
    preset = get_preset("tiny")
    frame = job_frame(_spec(cameras=[camera, camera]), preset)
    scale = float(frame.transform[0, 0])
    assert scale > 1.0 and np.allclose(frame.transform, np.diag([scale, scale, scale, 1.0]))
    ref = frame.reference_camera
    assert (ref.width, ref.height) == (64, 32) and len(frame.preview_cameras) == 2
    # The top of the radius-0.5 object reaches (half the frame height) / margin above the image centre.
    (pix,), _ = project_to_pixels(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5]]), ref)
    reach = float(pix[0, 1] - pix[1, 1])
    assert reach == pytest.approx(ref.height / 2 / preset.reference.fill_margin, rel=0.03)


def test_refined_mesh_is_normalised_and_cameras_follow_it():
    from dreampolish.backend.pipeline import job_frame

    source = box_payload(offset=(2.0, 0.0, 1.0))
    c2w = np.eye(4, dtype=np.float32)
    c2w[:3, 3] = (2.0, 0.0, 6.0)  # above the box, looking down -Z
    frame = job_frame(_spec(mode="geometry", input_mesh=source, cameras=[CameraSpec(c2w)]), get_preset("tiny"))
    assert float(frame.input_mesh.vertices.norm(dim=1).max()) == pytest.approx(0.5, abs=1e-4)
    world = frame.input_mesh.vertices.numpy() @ frame.transform[:3, :3].T + frame.transform[:3, 3]
    np.testing.assert_allclose(np.sort(world, 0), np.sort(source.vertices, 0), atol=1e-5)
    cam = frame.reference_camera
    assert float(cam.c2w[0, 0, 3]) == pytest.approx(0.0, abs=1e-5)  # straight above the object's centre


def test_shrinking_to_tiny_keeps_the_rest_of_a_preset_and_leaves_it_untouched():
    from dreampolish.backend.presets import shrink_to_tiny

    draft = get_preset("draft")
    before = to_json_dict(draft)
    small = shrink_to_tiny(draft)
    assert to_json_dict(draft) == before  # the input is not changed, and shares nothing mutable
    small.nerf.density.grid.n_levels = 2
    assert draft.nerf.density.grid.n_levels != 2
    assert (small.model_set, small.nerf.steps, small.texture.atlas_size) == ("tiny", 4, 128)
    assert small.preview_every == 2 and small.description == draft.description
    assert to_json_dict(shrink_to_tiny(get_preset("standard"))) == {**to_json_dict(get_preset("tiny")),
                                                                     "description": get_preset("standard").description}
