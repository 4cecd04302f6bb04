"""A masked refine through the real pipeline (tiny preset, CPU): outside the mask and its border the result is
the input bit for bit (vertices and texels), inside it changes; a masked geometry refine polishes and textures
the input's own topology, without DMTet."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.backend.pipeline_api import ResumePoint
from dreampolish.backend.png_samples import png_samples
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.gltf import png_file
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.refine_mask import REMESHING_STAGES, masked_chain
from dreampolish.protocol.scene import TexturePayload

from tests.support.masked_mesh import masked_box, texels
from tests.support.recording import RecordingContext

pytestmark = [pytest.mark.usefixtures("tiny_models")]


def _assert_kept(final, box):
    """Vertices and texels outside mask and border are the input's, exactly; the input's arrays come back."""
    source = box.payload
    np.testing.assert_array_equal(final.faces, source.faces)
    np.testing.assert_array_equal(final.uvs, source.uvs)
    np.testing.assert_array_equal(final.transform, source.transform)
    np.testing.assert_array_equal(final.vertices[box.kept_vertices], source.vertices[box.kept_vertices])
    before, after = texels(source), texels(final)
    assert after.shape == before.shape and box.kept_texels.sum() > 1000
    np.testing.assert_array_equal(after[box.kept_texels], before[box.kept_texels])
    return before, after


@pytest.mark.slow  # the tiny pipeline, as tests/backend/pipeline/test_refine.py
def test_masked_texture_refine_repaints_only_inside_the_mask_and_border(tmp_path):
    box = masked_box()
    ctx = RecordingContext(tmp_path)
    spec = JobSpec(prompt="a box", preset="tiny", mode="texture", input_mesh=box.payload, mask=box.mask)
    DreamPolishPipeline().run(spec, ctx)
    assert ctx.result_stages == ["texture", "export"]
    final = ctx.result("texture")
    before, after = _assert_kept(final, box)
    np.testing.assert_array_equal(final.vertices, box.payload.vertices)  # a texture refine moves nothing
    changed = (after != before).any(-1)
    assert changed[box.masked_texels].mean() > 0.9  # the tiny prior paints something else there
    assert [t.role for t in final.textures] == ["base_color"]  # the input's maps, no others added
    # no reference view: the texture is guided by TextureConfig.unanchored_guidance (SDS), not DSD and its LoRA
    reported = [k for stage, _, _, losses, _ in ctx.progress_events if stage == "texture" for k in losses]
    assert "guidance_texture_grad_norm" in reported and not any("lora" in k for k in reported)


@pytest.mark.slow  # the tiny pipeline, as tests/backend/pipeline/test_refine.py
def test_a_16_bit_map_comes_back_16_bit_with_every_sample_outside_the_mask(tmp_path):
    box = masked_box()
    # the test colours at 16 bits, with low bytes of their own that an 8-bit read would lose
    samples = (texels(box.payload).astype(np.uint16) * 257
               + np.random.default_rng(6).integers(0, 250, (*box.kept_texels.shape, 3)).astype(np.uint16))
    box.payload.textures = [TexturePayload("base_color", png=png_file(samples))]
    ctx = RecordingContext(tmp_path)
    spec = JobSpec(prompt="a box", preset="tiny", mode="texture", input_mesh=box.payload, mask=box.mask)
    DreamPolishPipeline().run(spec, ctx)
    after = png_samples(ctx.result("texture").texture("base_color").png)
    assert after.dtype == np.uint16 and after.shape == samples.shape
    np.testing.assert_array_equal(after[box.kept_texels], samples[box.kept_texels])
    assert (after != samples).any(-1)[box.masked_texels].mean() > 0.9


@pytest.mark.slow  # the tiny pipeline, as tests/backend/pipeline/test_refine.py
def test_masked_geometry_refine_moves_only_weighted_vertices_without_dmtet(tmp_path):
    box = masked_box()
    ctx = RecordingContext(tmp_path)
    spec = JobSpec(prompt="a box", preset="tiny", mode="geometry", input_mesh=box.payload, mask=box.mask)
    DreamPolishPipeline().run(spec, ctx)
    assert ctx.result_stages == ["polish", "texture", "export"]  # no DMTet: the input's topology throughout
    final = ctx.result("texture")
    before, after = _assert_kept(final, box)
    weighted = box.mask.weights > 0
    moved = np.abs(final.vertices - box.payload.vertices).max(1) > 0
    assert moved[weighted].mean() > 0.9 and not moved[box.kept_vertices].any()
    assert (after != before).any(-1)[box.masked_texels].mean() > 0.9


def test_a_masked_refine_names_no_remeshing_stage():
    box = masked_box()
    spec = JobSpec(prompt="a box", preset="tiny", mode="geometry", input_mesh=box.payload, mask=box.mask,
                   stages=["dmtet", "polish"])
    with pytest.raises(ValidationError, match="'dmtet' in stages is not part of a masked 'geometry' job"):
        DreamPolishPipeline().check(spec)
    assert DreamPolishPipeline().stage_plan(dataclasses.replace(spec, stages=None)) == ["polish", "texture", "export"]


def test_the_stages_a_masked_job_leaves_out_are_the_protocols_list():
    pipeline = DreamPolishPipeline()
    assert sorted(r.name for r in pipeline.runners if r.remeshes) == sorted(REMESHING_STAGES)
    box = masked_box()
    for mode in ("geometry", "texture"):
        spec = JobSpec(prompt="a box", preset="tiny", mode=mode, input_mesh=box.payload, mask=box.mask)
        chain = pipeline.stage_chains()[mode]
        assert [s for s in pipeline.stage_plan(spec) if s in chain] == masked_chain(chain)


@pytest.mark.slow  # the tiny pipeline, as tests/backend/pipeline/test_refine.py
def test_a_masked_job_resumes_from_an_edit_of_its_topology_and_refuses_another(tmp_path):
    box = masked_box()
    spec = JobSpec(prompt="a box", preset="tiny", mode="geometry", input_mesh=box.payload, mask=box.mask,
                   pause_after=["polish"])
    pipeline = DreamPolishPipeline()
    first = RecordingContext(tmp_path)
    assert pipeline.run(spec, first).paused_after == "polish"
    polished = first.result("polish")
    grown = dataclasses.replace(polished, vertices=np.concatenate([polished.vertices, polished.vertices[:1]]),
                                normals=None)
    with pytest.raises(ValidationError, match="keeps the input's topology: the edited mesh has 99 vertices"):
        pipeline.run(spec, RecordingContext(tmp_path), ResumePoint(edited_mesh=grown))
    second = RecordingContext(tmp_path)
    assert pipeline.run(spec, second, ResumePoint(edited_mesh=polished)).paused_after is None
    _assert_kept(second.result("texture"), box)
