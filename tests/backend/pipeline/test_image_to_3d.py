"""Image to 3D with the oracle: a picture of a known mesh through a known camera, framed as an artist would
(small and off-centre, transparent background), leads to geometry close to that mesh (Chamfer and held-out
silhouette IoU, as in the fidelity table); a picture of another object, with the same oracle, does not.

The oracle stands in for the priors on the sampled views (what Zero123 would infer from the image); the
reference view is the artist's image through the pipeline's image path (decode, alpha mask, centring and
scale, the reference camera), so a wrong framing or camera would pull the shape away from the target."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
import trimesh
from dreampolish.backend.commands.fidelity import HELD_OUT_VIEWS
from dreampolish.backend.commands.fidelity import tiny_preset as fidelity_preset
from dreampolish.backend.geometry.mesh import TriMesh, normalize_to_unit
from dreampolish.backend.geometry.metrics import chamfer_fraction, silhouette_iou
from dreampolish.backend.guidance.oracle import oracle_reference
from dreampolish.backend.pipeline import DreamPolishPipeline, OraclePriors
from dreampolish.backend.pipeline.frame import job_frame
from dreampolish.backend.presets import PipelinePreset, get_preset
from dreampolish.backend.render.rasterize import MeshRasterizer
from dreampolish.protocol.image import ReferenceImage
from dreampolish.protocol.job import JobSpec
from PIL import Image

from tests.support.recording import RecordingContext

pytestmark = pytest.mark.slow


def oracle_image_preset() -> PipelinePreset:
    """The tiny pipeline with the fidelity table's CPU stage settings, cut to the reduced fidelity test's steps."""
    fid = fidelity_preset()
    nerf = dataclasses.replace(fid.nerf, steps=40)
    neus = dataclasses.replace(fid.neus, steps=10, init_steps=40)
    dmtet = dataclasses.replace(fid.dmtet, steps=30)
    return dataclasses.replace(get_preset("tiny"), nerf=nerf, neus=neus, dmtet=dmtet, preview_every=0)


def _framed_target(camera, fill_margin: float, rasterizer: MeshRasterizer) -> TriMesh:
    """A 0.9 x 0.5 x 0.6 box, scaled so that the reference camera sees it at the reference framing (its
    silhouette's longer side = the shorter image side / fill_margin), as the image path frames any picture."""
    box, _ = normalize_to_unit(TriMesh(torch.tensor(trimesh.creation.box((0.9, 0.5, 0.6)).vertices, dtype=torch.float32),
                                       torch.tensor(trimesh.creation.box().faces)))
    for _ in range(3):
        mask = oracle_reference(box, camera, rasterizer).mask[..., 0] > 0.5
        ys, xs = torch.nonzero(mask, as_tuple=True)
        side = max(int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1)
        box = TriMesh(box.vertices * (min(camera.width, camera.height) / fill_margin / side), box.faces)
    return box


def _artist_png(mesh: TriMesh, camera, rasterizer: MeshRasterizer) -> bytes:
    """The mesh rendered through the camera, then placed small and off-centre on a larger transparent canvas."""
    ref = oracle_reference(mesh, camera, rasterizer)
    rgba = (torch.cat([ref.rgb, ref.mask], -1).numpy() * 255).round().astype(np.uint8)
    picture = Image.fromarray(rgba, "RGBA").resize((40, 40), Image.LANCZOS)
    canvas = Image.new("RGBA", (120, 90), (0, 0, 0, 0))
    canvas.paste(picture, (60, 10))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def _run(target: TriMesh, png: bytes, tmp_path) -> dict[str, float]:
    pipeline = DreamPolishPipeline(presets={"oracle-image": oracle_image_preset}, priors=OraclePriors(target))
    spec = JobSpec("", preset="oracle-image", image=ReferenceImage(png=png), stages=["reference", "nerf", "neus", "dmtet"])
    ctx = RecordingContext(tmp_path)
    pipeline.run(spec, ctx)
    result = ctx.result("dmtet")
    mesh = TriMesh(torch.tensor(result.vertices), torch.tensor(result.faces.astype(np.int64)))
    held_out = HELD_OUT_VIEWS.sample(6, 64, 64, torch.Generator().manual_seed(7919), "cpu")
    return {"chamfer": chamfer_fraction(mesh, target, 8000),
            "iou": silhouette_iou(mesh, target, held_out, MeshRasterizer("torch"))}


def test_a_picture_of_a_known_mesh_leads_to_geometry_close_to_it(tmp_path):
    preset = oracle_image_preset()
    rasterizer = MeshRasterizer("torch")
    camera = job_frame(JobSpec("", preset="tiny"), preset).reference_camera  # no cameras: the front view
    target = _framed_target(camera, preset.reference.fill_margin, rasterizer)
    right = _run(target, _artist_png(target, camera, rasterizer), tmp_path / "right")
    v = target.vertices
    turned = TriMesh(torch.stack([v[:, 1], -v[:, 0], v[:, 2]], -1), target.faces)  # another object: a quarter turn
    wrong = _run(target, _artist_png(turned, camera, rasterizer), tmp_path / "wrong")
    print(f"right image: {right}; another object's image: {wrong}")
    assert right["chamfer"] <= 0.05 and right["iou"] >= 0.88
    assert wrong["chamfer"] >= right["chamfer"] + 0.01 and wrong["iou"] <= right["iou"] - 0.05
