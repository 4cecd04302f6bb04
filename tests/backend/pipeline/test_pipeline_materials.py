"""PBR maps through a job (tiny preset, CPU): the texture-only mode's maps and the base_color_only switch."""

from __future__ import annotations

import pytest
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.protocol.gltf import glb_to_mesh
from dreampolish.protocol.job import JobSpec

from tests.support.recording import RecordingContext, box_payload

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_models")]


def test_texture_only_job_bakes_metallic_roughness_and_the_switch_turns_it_off(tmp_path):
    pipeline = DreamPolishPipeline()
    roles = {}
    for name, options in (("pbr", {}), ("colour", {"base_color_only": True})):
        ctx = RecordingContext(tmp_path / name)
        outcome = pipeline.run(JobSpec(prompt="a crate", preset="tiny", mode="texture",
                                       input_mesh=box_payload(with_uvs=True), options=options), ctx)
        glb = glb_to_mesh(outcome.result_files["glb"].read_bytes())
        roles[name] = (sorted(t.role for t in ctx.result("texture").textures), sorted(t.role for t in glb.textures))
    # A texture-only job has no finer mesh than its own, so no normal map; the decomposition's maps it has.
    assert roles["pbr"] == (["base_color", "roughness_metallic"],) * 2
    assert roles["colour"] == (["base_color"],) * 2
