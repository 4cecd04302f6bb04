"""UDIM: a texture-only refine of a mesh whose UVs span two tiles (tiny preset, the real pipeline) comes back
with one base-colour map per tile, on the input's own UVs; UVs outside the declared tiles are refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.job import JobSpec, validate_spec
from dreampolish.protocol.refine_mask import RefineMask
from dreampolish.protocol.scene import MeshPayload, TexturePayload
from dreampolish.protocol.udim import face_tiles
from PIL import Image

from tests.support.masked_mesh import box_mesh, colour_texels, grid_uvs, png
from tests.support.recording import RecordingContext


def two_tile_box() -> MeshPayload:
    """The test box with its -X half's faces in tile 1001 and the rest moved one tile right, into 1002."""
    vertices, faces = box_mesh(offset=(0.0, 0.0, 0.0))
    uvs = grid_uvs(len(faces))
    right = vertices[faces][:, :, 0].mean(1) > 0
    uvs[right, :, 0] += 1.0
    return MeshPayload(vertices, faces, uvs=uvs)


@pytest.mark.slow  # the tiny pipeline
@pytest.mark.usefixtures("tiny_models")
def test_a_two_tile_mesh_gets_one_map_per_tile_on_its_own_uvs(tmp_path):
    source = two_tile_box()
    ctx = RecordingContext(tmp_path)
    spec = JobSpec(prompt="a box", preset="tiny", mode="texture", input_mesh=source, udim_tiles=[1001, 1002])
    outcome = DreamPolishPipeline().run(spec, ctx)
    final = ctx.result("texture")
    np.testing.assert_array_equal(final.uvs, source.uvs)
    np.testing.assert_array_equal(final.vertices, source.vertices)
    maps = {t.tile: t for t in final.textures}
    assert sorted(maps) == [1001, 1002] and all(t.role == "base_color" for t in final.textures)
    for tile, texture in maps.items():
        with Image.open(io.BytesIO(texture.png)) as im:
            assert im.size == (128, 128)  # the tiny preset's atlas, per tile
            assert np.asarray(im).std() > 0, f"tile {tile} is blank"
    assert outcome.result_files["glb"].exists()  # the .glb: mesh and UVs, no tile maps (glTF has none)


@pytest.mark.parametrize(("tiles", "edit", "says"), [
    ([1001], None, "UVs in UDIM tile 1002, which the request does not declare"),
    ([1001, 1002], "cross", "crosses the edge of UDIM tile"),
    ([1001, 1002], "negative", "in no UDIM tile"),
    ([1001, 1001], None, "names a tile twice"),
    ([1000], None, "a UDIM tile number in [1001, 1100]"),
])
def test_uvs_outside_the_declared_tiles_are_refused(tiles, edit, says):
    source = two_tile_box()
    if edit == "cross":
        source.uvs[0, 0, 0] = 1.5
    elif edit == "negative":
        source.uvs[0] -= 3.0
    with pytest.raises(ValidationError, match=says.replace("[", r"\[")):
        validate_spec(JobSpec(prompt="a box", mode="texture", input_mesh=source, udim_tiles=tiles))


def test_udim_tiles_are_for_texture_refines_without_a_mask():
    source = two_tile_box()
    with pytest.raises(ValidationError, match="for texture-only refines"):
        validate_spec(JobSpec(prompt="a box", mode="geometry", input_mesh=source, udim_tiles=[1001, 1002]))
    source.textures = [TexturePayload("base_color", png=png(colour_texels((200, 30, 30))))]
    mask = RefineMask(np.ones(source.num_vertices, np.float32))
    with pytest.raises(ValidationError, match="does not take udim_tiles"):
        validate_spec(JobSpec(prompt="a box", mode="texture", input_mesh=source, udim_tiles=[1001, 1002], mask=mask))
    assert sorted(set(face_tiles(source.uvs).tolist())) == [1001, 1002]


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.usefixtures("tiny_models")
def test_the_command_line_writes_one_image_per_tile_beside_the_glb(tmp_path):
    from dreampolish.backend.pipeline import DreamPolishPipeline as Pipeline
    from dreampolish.protocol.cli import main
    from dreampolish.protocol.gltf import glb_to_mesh, mesh_to_glb

    from tests.support.pipelines import running_backend

    source, out = tmp_path / "box.glb", tmp_path / "out.glb"
    source.write_bytes(mesh_to_glb(two_tile_box()))
    with running_backend(tmp_path / "store", pipeline=Pipeline) as server:
        argv = ["generate", "a box", "--backend", server.endpoint, "--out", str(out), "--mesh", str(source),
                "--mode", "texture", "--preset", "tiny", "--udim", "auto"]
        assert main(argv) == 0
        [job] = server.manager.jobs.values()
        assert job.spec.udim_tiles == [1001, 1002]
    assert sorted(p.name for p in tmp_path.glob("out.base_color.*.png")) == [
        "out.base_color.1001.png", "out.base_color.1002.png"]
    final = glb_to_mesh(out.read_bytes())
    assert final.texture("base_color") is None  # glTF holds no tile
    assert sorted(set(face_tiles(final.uvs).tolist())) == [1001, 1002]
    assert main(["generate", "a box", "--backend", "tcp://127.0.0.1:9", "--out", str(out), "--mesh", str(source),
                 "--mode", "texture", "--udim", "1001"]) == 2
