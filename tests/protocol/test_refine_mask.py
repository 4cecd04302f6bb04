"""A masked refine's request (spec.mask): on the wire, and each bad mask refused at submit with a line that
says which rule it broke and what to do."""

from __future__ import annotations

import dataclasses
import io

import msgpack
import numpy as np
import pytest
from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.job import JobSpec, validate_spec
from dreampolish.protocol.refine_mask import RefineMask
from dreampolish.protocol.scene import MeshPayload, TexturePayload
from PIL import Image


def _png(size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 200, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _quad(textured: bool = True) -> MeshPayload:
    """Two triangles, 2 m wide, with UVs and a base-colour map."""
    vertices = np.array([[0, 0, 0], [2, 0, 0], [2, 1, 0], [0, 1, 0]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.uint32)
    uvs = vertices[faces][..., :2] / np.float32(2.0)
    return MeshPayload(vertices, faces, uvs=uvs.astype(np.float32),
                       textures=[TexturePayload("base_color", png=_png())] if textured else [])


def _spec(mask: RefineMask, mode: str = "texture", mesh: MeshPayload | None = None) -> JobSpec:
    return JobSpec(prompt="a tile", mode=mode, input_mesh=mesh if mesh is not None else _quad(), mask=mask)


def _weights(*w: float) -> np.ndarray:
    return np.array(w, np.float32)


def test_a_mask_travels_with_its_weights_border_and_region_prompt():
    mask = RefineMask(_weights(0, 0.5, 1, 0), feather=0.25, prompt="worn brass", negative_prompt="rust")
    spec = validate_spec(_spec(mask))
    back = codec.decode(codec.encode(m.Submit(spec=spec))).spec
    np.testing.assert_array_equal(back.mask.weights, mask.weights)
    assert back.mask.weights.dtype == np.float32
    assert (back.mask.feather, back.mask.prompt, back.mask.negative_prompt) == (0.25, "worn brass", "rust")
    assert codec.decode(codec.encode(m.Submit(spec=_spec(None)))).spec.mask is None


@pytest.mark.parametrize(("mask", "mode", "mesh", "says"), [
    (RefineMask(_weights(0, 0, 0, 0)), "texture", None, "the mask is empty"),
    (RefineMask(_weights(0, 1, 1)), "texture", None, "3 weights but input_mesh has 4 vertices"),
    (RefineMask(_weights(0, 1, 1, 0), feather=2.5), "texture", None, "wider than the object (2 across"),
    (RefineMask(_weights(0, 1, 1, 0)), "texture", _quad(textured=False), "needs its UVs and its base_color"),
    (RefineMask(_weights(0, 1, np.nan, 0)), "geometry", None, "finite and in [0, 1]"),
    (RefineMask(_weights(0, 1, 1.5, 0)), "geometry", None, "finite and in [0, 1]"),
    (RefineMask(np.array([0, 1, 1, 0], np.float64)), "geometry", None, "must be a float32 array"),
    (RefineMask(_weights(0, 1, 1, 0), feather=-1.0), "geometry", None, "finite width of 0 or more"),
])
def test_a_bad_mask_is_refused_saying_which_rule_and_what_to_do(mask, mode, mesh, says):
    with pytest.raises(ValidationError, match=says.replace("(", r"\(").replace("[", r"\[")):
        validate_spec(_spec(mask, mode, mesh))


def test_a_mask_on_a_generate_job_is_refused():
    spec = JobSpec(prompt="a tile", mask=RefineMask(_weights(1)))
    with pytest.raises(ValidationError, match="needs mode 'geometry' or 'texture' and input_mesh"):
        validate_spec(spec)


def test_the_border_is_measured_in_the_world():
    """The object is 2 m wide, but 20 m once its transform (a scale of 10) places it: a 5 m border fits."""
    mesh = _quad()
    mesh.transform = np.diag([10, 10, 10, 1]).astype(np.float32)
    validate_spec(_spec(RefineMask(_weights(0, 1, 1, 0), feather=5.0), mesh=mesh))
    with pytest.raises(ValidationError, match="wider than the object"):
        validate_spec(_spec(RefineMask(_weights(0, 1, 1, 0), feather=5.0)))


def test_an_unknown_mask_field_is_refused_by_name():
    frames = codec.encode(m.Submit(spec=_spec(RefineMask(_weights(0, 1, 1, 0)))))
    header = msgpack.unpackb(frames[0])
    header["body"]["spec"]["mask"]["radius"] = 1.0
    with pytest.raises(ValidationError, match="spec.mask has a field this backend does not know: 'radius'"):
        codec.decode([msgpack.packb(header, use_bin_type=True), *frames[1:]])


def test_a_mask_length_is_checked_against_the_mesh_a_spec_copy_carries():
    spec = _spec(RefineMask(_weights(0, 1, 1, 0)))
    bigger = dataclasses.replace(spec, input_mesh=MeshPayload(
        np.concatenate([spec.input_mesh.vertices, [[5, 5, 0]]]).astype(np.float32), spec.input_mesh.faces,
        uvs=spec.input_mesh.uvs, textures=spec.input_mesh.textures))
    with pytest.raises(ValidationError, match="4 weights but input_mesh has 5 vertices"):
        validate_spec(bigger)
