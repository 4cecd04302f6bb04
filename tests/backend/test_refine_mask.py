"""backend/refine_mask.py's repaint of the input's own base-colour map, without a pipeline: the colour field is a
fixed blue, so what comes back is known. A 16-bit map stays a 16-bit map: outside mask and border every sample is
the input's, bit for bit (low bytes included), inside it is blue at 16-bit precision; an 8-bit map as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.png_samples import png_header, png_samples
from dreampolish.backend.refine_mask import repainted_payload
from dreampolish.protocol.gltf import png_file
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import TexturePayload

from tests.support.masked_mesh import colour_texels, masked_box

BLUE = (0.1, 0.2, 0.9)


def _blue(points: np.ndarray) -> np.ndarray:
    return np.broadcast_to(np.asarray(BLUE, np.float32), (len(points), 3)).copy()


def _repaint(box) -> np.ndarray:
    spec = JobSpec(prompt="a box", preset="tiny", mode="texture", input_mesh=box.payload, mask=box.mask)
    mesh = TriMesh(torch.as_tensor(box.payload.vertices), torch.as_tensor(box.payload.faces.astype(np.int64)))
    result = repainted_payload(spec, np.eye(4), mesh, _blue)
    np.testing.assert_array_equal(result.vertices, box.payload.vertices)
    return result.texture("base_color").png


@pytest.mark.parametrize("channels", [3, 4])
def test_a_16_bit_map_keeps_every_bit_outside_the_mask(channels):
    box = masked_box()
    # the 8-bit test colours with low bytes of their own (noise), and an alpha channel that is not all opaque
    rng = np.random.default_rng(11)
    rgb = colour_texels((200, 30, 30)).astype(np.uint16) * 257 + rng.integers(0, 200, (*box.kept_texels.shape, 3))
    samples = rgb if channels == 3 else np.concatenate([rgb, rng.integers(30000, 65536, (*rgb.shape[:2], 1))], -1)
    samples = samples.astype(np.uint16)
    box.payload.textures = [TexturePayload("base_color", png=png_file(samples))]

    out = _repaint(box)
    assert png_header(out).bit_depth == 16
    after = png_samples(out)
    assert after.shape == samples.shape and after.dtype == np.uint16
    np.testing.assert_array_equal(after[box.kept_texels], samples[box.kept_texels])
    np.testing.assert_array_equal(after[..., 3:], samples[..., 3:])  # alpha is the input's everywhere
    inside = after[box.masked_texels][:, :3].astype(np.float64) / 65535.0
    np.testing.assert_allclose(inside, np.broadcast_to(BLUE, inside.shape), atol=1.0 / 65535.0)


def test_a_16_bit_grey_map_comes_back_as_16_bit_rgb_with_its_grey_kept():
    box = masked_box()
    grey = (np.random.default_rng(4).integers(0, 65536, box.kept_texels.shape)).astype(np.uint16)
    box.payload.textures = [TexturePayload("base_color", png=png_file(grey[..., None]))]
    after = png_samples(_repaint(box))
    assert after.shape == (*grey.shape, 3) and after.dtype == np.uint16
    for c in range(3):
        np.testing.assert_array_equal(after[..., c][box.kept_texels], grey[box.kept_texels])


def test_an_8_bit_map_stays_8_bit():
    box = masked_box()
    before = png_samples(box.payload.texture("base_color").png)
    after = png_samples(_repaint(box))
    assert after.dtype == np.uint8
    np.testing.assert_array_equal(after[box.kept_texels], before[box.kept_texels])
    inside = after[box.masked_texels].astype(np.float64) / 255.0
    np.testing.assert_allclose(inside, np.broadcast_to(BLUE, inside.shape), atol=1.0 / 255.0)
