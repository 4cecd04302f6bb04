"""The finishing stage inside the pipeline (issue 30): a refine job with a face budget sends the finish
stage's polygon mesh, textures that mesh on its own UVs with the polished surface baked into a normal map,
exports a .glb the Khronos validator accepts, and comes back from its checkpoint after a restart."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dreampolish.backend.geometry.mesh import TriMesh, normalize_to_unit
from dreampolish.backend.pipeline import DreamPolishPipeline, OraclePriors
from dreampolish.backend.pipeline_api import ResumePoint
from dreampolish.protocol.gltf import glb_to_mesh
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import MeshPayload

from tests.support.gltf_validator import validate_glb
from tests.support.recording import RecordingContext, box_payload

FAST = {"dmtet.steps": 2, "dmtet.grid_resolution": 32, "polish.steps": 2, "polish.render_size": 32,
        "polish.view_pool": 4, "polish.batch_size": 1, "texture.steps": 2, "texture.render_size": 32,
        "texture.atlas_size": 128, "dmtet.color_init_steps": 5, "preview_every": 0,
        "finish.faces": 500, "finish.lods": 1}


def _pipeline() -> DreamPolishPipeline:
    target, _ = normalize_to_unit(TriMesh.from_payload(box_payload(), apply_transform=True))
    return DreamPolishPipeline(priors=OraclePriors(target))


def test_a_refine_job_with_a_budget_sends_quads_textured_on_their_uvs_with_a_normal_map(tmp_path):
    spec = JobSpec(prompt="a box", preset="tiny", mode="geometry", input_mesh=box_payload(), options=dict(FAST))
    assert _pipeline().stage_plan(spec) == ["dmtet", "polish", "finish", "texture", "export"]
    first = RecordingContext(tmp_path, stop_in="texture")
    with pytest.raises(Exception, match="stopped in texture"):
        _pipeline().run(spec, first)
    finished = first.result("finish")
    polished = first.result("polish")
    assert finished.has_polygons and np.mean(finished.face_sizes == 4) >= 0.9
    assert abs(finished.num_polygons - min(500, polished.num_faces)) <= 0.1 * min(500, polished.num_faces)
    assert finished.uvs is not None
    finish_events = [e for e in first.progress_events if e[0] == "finish"]
    assert finish_events[-1][3]["remesh_fallback"] in (0.0, 1.0) and finish_events[-1][3]["faces"] > 0

    # after a restart the finish stage is restored from its checkpoint; texture runs on its mesh
    second = RecordingContext(tmp_path)
    outcome = _pipeline().run(spec, second, ResumePoint())
    assert ("finish", 2) in second.repeated
    textured = second.result("texture")
    np.testing.assert_array_equal(textured.face_sizes, finished.face_sizes)
    np.testing.assert_array_equal(textured.face_corners, finished.face_corners)
    np.testing.assert_allclose(textured.corner_uvs(), finished.corner_uvs())
    normal = textured.texture("normal")
    assert normal is not None and normal.array.shape == (128, 128, 3)
    # LOD1: half the faces, its own UVs and maps, in the result and in the .glb as a node of its own
    assert len(finished.lods) == 1 and len(textured.lods) == 1
    lod = textured.lods[0]
    assert lod.has_polygons and abs(lod.num_polygons - finished.num_polygons / 2) <= 0.15 * finished.num_polygons
    assert lod.texture("normal").array.shape == (64, 64, 3) and lod.texture("base_color") is not None
    glb = outcome.result_files["glb"]
    validate_glb(glb)
    length = int.from_bytes(glb.read_bytes()[12:16], "little")
    nodes = json.loads(glb.read_bytes()[20:20 + length])["nodes"]
    assert [n["name"] for n in nodes] == ["result", "result_LOD1"]
    back = glb_to_mesh(glb.read_bytes())
    assert back.num_faces == textured.num_faces  # the .glb holds the polygons' triangles


@pytest.mark.slow  # two refine jobs, 15-20 s each on the shared 2-core CPU
@pytest.mark.parametrize("as_polygons", [True, False], ids=["quads", "triangles"])
def test_an_edit_of_the_finished_mesh_is_textured_as_the_artist_sent_it(tmp_path, as_polygons):
    # Paused after finish, the artist edits the quads and resumes: Blender may send them as polygons or
    # triangulated; the texture stage textures what came, keeping its faces.
    options = {**FAST, "finish.lods": 0}
    spec = JobSpec(prompt="a box", preset="tiny", mode="geometry", input_mesh=box_payload(), options=options,
                   pause_after=["finish"])
    first = RecordingContext(tmp_path)
    assert _pipeline().run(spec, first).paused_after == "finish"
    finished = first.result("finish")
    moved = finished.vertices + np.array([0, 0, 0.01], np.float32)
    if as_polygons:
        edit = MeshPayload.from_polygons(moved, finished.face_sizes, finished.face_corners, finished.corner_uvs(),
                                         transform=finished.transform)
    else:
        edit = MeshPayload(moved, finished.faces, uvs=finished.uvs, transform=finished.transform)
    second = RecordingContext(tmp_path)
    _pipeline().run(spec, second, ResumePoint(edited_mesh=edit))
    textured = second.result("texture")
    assert textured.has_polygons == as_polygons and textured.num_faces == finished.num_faces
    np.testing.assert_allclose(textured.vertices, moved, atol=1e-5)
    assert textured.texture("normal") is not None
