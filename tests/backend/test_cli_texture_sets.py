"""Texture sets: `dreampolish generate --mesh IN.glb --mode texture --texture-sets 3` against a real backend
(tiny preset): three texture sets of one mesh, on its UV layout exactly, in one .glb as KHR_materials_variants
that the Khronos validator passes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from dreampolish.backend.pipeline import DreamPolishPipeline
from dreampolish.protocol.cli import main
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.gltf import glb_to_mesh, mesh_to_glb
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.variants import texture_set_specs, variant_json, variant_names
from PIL import Image

from tests.support.gltf_validator import validate_glb
from tests.support.masked_mesh import masked_box
from tests.support.pipelines import running_backend


def _image(gltf: dict, binary: bytes, material: dict) -> np.ndarray:
    texture = gltf["textures"][material["pbrMetallicRoughness"]["baseColorTexture"]["index"]]
    view = gltf["bufferViews"][gltf["images"][texture["source"]]["bufferView"]]
    png = binary[view.get("byteOffset", 0):view.get("byteOffset", 0) + view["byteLength"]]
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("tiny_models")
def test_three_texture_sets_share_the_uvs_differ_and_switch_as_variants(tmp_path):
    source, out = tmp_path / "box.glb", tmp_path / "sets.glb"
    source.write_bytes(mesh_to_glb(masked_box().payload))
    with running_backend(tmp_path / "store", pipeline=DreamPolishPipeline) as server:
        argv = ["generate", "a box", "--backend", server.endpoint, "--out", str(out), "--mesh", str(source),
                "--mode", "texture", "--preset", "tiny", "--texture-sets", "3", "--seed", "4"]
        assert main(argv) == 0
        assert sorted(j.spec.seed for j in server.manager.jobs.values()) == [4, 5, 6]
    sets = [glb_to_mesh((tmp_path / f"sets.set{i}.glb").read_bytes()) for i in range(3)]
    for other in sets[1:]:  # one UV layout, bit for bit
        np.testing.assert_array_equal(other.uvs, sets[0].uvs)
        np.testing.assert_array_equal(other.vertices, sets[0].vertices)
    data = out.read_bytes()
    assert variant_names(data) == ["seed 4", "seed 5", "seed 6"]
    gltf = variant_json(data)
    [primitive] = gltf["meshes"][0]["primitives"]
    mappings = primitive["extensions"]["KHR_materials_variants"]["mappings"]
    assert [(m["material"], m["variants"]) for m in mappings] == [(0, [0]), (1, [1]), (2, [2])]
    import struct
    json_len = struct.unpack_from("<I", data, 12)[0]
    binary = data[12 + 8 + json_len + 8:]
    images = [_image(gltf, binary, mat) for mat in gltf["materials"]]
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.abs(images[i].astype(int) - images[j].astype(int)).mean() > 1.0, (i, j)
    report = validate_glb(out)
    assert report["issues"]["numErrors"] == 0 and report["issues"]["numWarnings"] == 0, report["issues"]["messages"]


def test_texture_sets_are_refused_outside_a_texture_refine():
    box = masked_box().payload
    with pytest.raises(ValidationError, match="mode 'texture' and input_mesh"):
        texture_set_specs(JobSpec(prompt="a box"), 3)
    with pytest.raises(ValidationError, match=r"a count in \[2, 8\]"):
        texture_set_specs(JobSpec(prompt="a box", mode="texture", input_mesh=box), 1)
    with pytest.raises(ValidationError, match="2 prompts for 3 sets"):
        texture_set_specs(JobSpec(prompt="a box", mode="texture", input_mesh=box), 3, ["a", "b"])
    specs = texture_set_specs(JobSpec(prompt="a box", mode="texture", input_mesh=box, seed=2**63 - 1), 2,
                              ["red paint", "blue paint"])
    assert [(s.seed, s.prompt) for s in specs] == [(2**63 - 1, "red paint"), (0, "blue paint")]
