"""nvdiffrast and the PyTorch rasteriser give the same renders (CUDA + diffrp-nvdiffrast only)."""

from __future__ import annotations

import pytest
import torch
import trimesh
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.render.cameras import orbit_cameras
from dreampolish.backend.render.rasterize import MeshRasterizer

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("nvdiffrast.torch", reason="needs the optional package diffrp-nvdiffrast")

DEVICE = torch.device("cuda")


def meshes() -> dict[str, TriMesh]:
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    torus = trimesh.creation.torus(major_radius=0.35, minor_radius=0.13, major_sections=64, minor_sections=32)
    out = {}
    for name, tm in (("sphere", sphere), ("torus", torus)):
        out[name] = TriMesh(torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces)).to(DEVICE)
    return out


@pytest.mark.parametrize("name", ["sphere", "torus"])
def test_masks_depth_and_normals_agree(name):
    mesh = meshes()[name]
    cams = orbit_cameras(torch.tensor([0.0, 30.0, -10.0, 60.0]), torch.tensor([0.0, 70.0, 200.0, -45.0]),
                         torch.tensor([3.8, 2.5, 3.0, 2.0]), torch.tensor([20.0, 35.0, 30.0, 50.0]),
                         256, 192).to(DEVICE)
    reference = MeshRasterizer("torch").rasterize(mesh, cams)
    fast = MeshRasterizer("nvdiffrast").rasterize(mesh, cams)
    for out in (reference, fast):
        assert out.tri_id.shape == (4, 192, 256)
        assert out.mask.shape == out.depth.shape == (4, 192, 256, 1)

    a, b = reference.mask > 0.5, fast.mask > 0.5
    iou = float((a & b).sum()) / float((a | b).sum())
    assert iou >= 0.99, f"mask IoU {iou:.4f}"
    hard_a, hard_b = reference.tri_id >= 0, fast.tri_id >= 0
    assert float((hard_a & hard_b).sum()) / float((hard_a | hard_b).sum()) >= 0.99

    both = hard_a & hard_b
    depth_error = (reference.depth[..., 0] - fast.depth[..., 0])[both].abs()
    assert float(depth_error.median()) < 1e-4
    assert float(torch.quantile(depth_error, 0.99)) < 1e-2  # a different face only at occlusion edges
    cos = (reference.normal * fast.normal).sum(-1)[both]
    assert float(torch.quantile(cos, 0.01)) > 0.99
    # Soft coverage agrees where both antialias (silhouette pixels), not only after thresholding.
    assert float((reference.mask - fast.mask).abs().mean()) < 0.01


def test_both_back_ends_give_silhouette_gradients():
    mesh = meshes()["sphere"]
    cams = orbit_cameras(torch.tensor([15.0]), torch.tensor([30.0]), torch.tensor([3.0]), torch.tensor([30.0]),
                         128, 128).to(DEVICE)
    grads = {}
    for backend in ("torch", "nvdiffrast"):
        vertices = mesh.vertices.clone().requires_grad_(True)
        out = MeshRasterizer(backend).rasterize(mesh.with_vertices(vertices), cams)
        out.mask.sum().backward()
        grads[backend] = vertices.grad
    # Growing the sphere grows its coverage under both, by about the same amount.
    outward = {k: float((g * mesh.vertices).sum()) for k, g in grads.items()}
    assert outward["torch"] > 0 and outward["nvdiffrast"] > 0
    assert outward["torch"] == pytest.approx(outward["nvdiffrast"], rel=0.5)


def test_auto_picks_nvdiffrast_on_cuda():
    assert MeshRasterizer("auto").resolve_backend(DEVICE) == "nvdiffrast"
