"""`dreampolish generate --mesh IN.glb --mask WEIGHTS.npy`: a masked refine from a terminal, against a real
backend running the real pipeline (tiny preset), and its bad masks refused before anything is sent."""

from __future__ import annotations

import io

import numpy as np
import pytest
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.protocol.cli import main
from dreampolish.protocol.gltf import glb_to_mesh, mesh_to_glb
from PIL import Image

from tests.support.masked_mesh import half_masked, masked_box, texels
from tests.support.pipelines import running_backend

pytestmark = pytest.mark.timeout(120)


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_models")
def test_a_masked_texture_refine_from_the_command_line_keeps_the_rest_of_the_file(tmp_path, capsys):
    source, weights, out = tmp_path / "box.glb", tmp_path / "half.npy", tmp_path / "out.glb"
    source.write_bytes(mesh_to_glb(masked_box().payload))
    # the file's own vertices (a .glb has one per corner where UVs part): the weights follow its POSITIONs
    box = half_masked(glb_to_mesh(source.read_bytes()), 2.0, 0.1)
    np.save(weights, box.mask.weights)
    with running_backend(tmp_path / "store", pipeline=DreamPolishPipeline) as server:
        argv = ["generate", "a box", "--backend", server.endpoint, "--out", str(out), "--mesh", str(source),
                "--mode", "texture", "--preset", "tiny", "--mask", str(weights), "--feather", "0.1",
                "--mask-prompt", "a blue box"]
        assert main(argv) == 0
        [job] = server.manager.jobs.values()
        assert job.spec.mask.prompt == "a blue box" and job.spec.mask.feather == 0.1
    final = glb_to_mesh(out.read_bytes())
    np.testing.assert_array_equal(final.vertices, box.payload.vertices)
    before = texels(box.payload)
    with Image.open(io.BytesIO(final.texture("base_color").png)) as im:
        after = np.array(im.convert("RGB"))
    np.testing.assert_array_equal(after[box.kept_texels], before[box.kept_texels])
    assert (after != before).any(-1)[box.masked_texels].mean() > 0.9


@pytest.mark.parametrize(("weights", "extra", "says"), [
    ("empty", [], "the mask is empty"),
    ("short", [], "weights but input_mesh has"),
    ("half", ["--feather", "5"], "wider than the object"),
    ("half", ["--mode", "generate"], "needs mode 'geometry' or 'texture'"),
    ("text", [], "is not a .npy array"),
])
def test_a_bad_mask_file_exits_with_the_reason_before_connecting(tmp_path, capsys, weights, extra, says):
    source, path = tmp_path / "box.glb", tmp_path / "w.npy"
    source.write_bytes(mesh_to_glb(masked_box().payload))
    box = half_masked(glb_to_mesh(source.read_bytes()), 2.0, 0.1)
    n = box.payload.num_vertices
    if weights == "text":
        path.write_text("not an array")
    else:
        np.save(path, {"empty": np.zeros(n, np.float32), "short": np.ones(n - 1, np.float32),
                       "half": box.mask.weights}[weights])
    # no backend listens there: the refusal comes before any connection
    argv = ["generate", "a box", "--backend", "tcp://127.0.0.1:9", "--out", str(tmp_path / "o.glb"),
            "--mesh", str(source), "--mode", "texture", "--mask", str(path), *extra]
    assert main(argv) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "o.glb").exists()
