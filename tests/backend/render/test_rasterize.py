"""The PyTorch mesh rasteriser against analytic renders, and its gradients."""

from __future__ import annotations

import math

import pytest
import torch
import trimesh
from dreampolish.backend.geometry.mesh import TriMesh
from dreampolish.backend.render.cameras import orbit_cameras, project_to_pixels
from dreampolish.backend.render.rasterize import MeshRasterizer

RASTER = MeshRasterizer("torch")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These renders are small: on a shared 2-core machine, thread hand-offs cost more than they save."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def front_camera(distance=3.0, fovy=30.0, width=96, height=96, elevation=0.0, azimuth=0.0):
    """A camera on +X (azimuth 0) looking at the origin: world +Y is image right, +Z is up."""
    return orbit_cameras(torch.tensor([elevation]), torch.tensor([azimuth]), torch.tensor([distance]),
                         torch.tensor([fovy]), width, height)


def polygon_area(p: torch.Tensor) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float((x * y.roll(-1) - x.roll(-1) * y).sum()))


def icosphere(radius=0.5, subdivisions=3) -> TriMesh:
    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return TriMesh(torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces))


def cube(half=0.5) -> TriMesh:
    b = trimesh.creation.box(extents=(2 * half,) * 3)
    return TriMesh(torch.tensor(b.vertices, dtype=torch.float32), torch.tensor(b.faces))


@pytest.mark.parametrize("angle_deg", [0.0, 13.0, 45.0, 71.0])
def test_triangle_coverage_equals_its_projected_area(angle_deg):
    cams = front_camera()
    a = math.radians(angle_deg)
    base = torch.tensor([[0.0, -0.5, -0.35], [0.1, 0.45, -0.2], [-0.1, -0.05, 0.5]])
    rot = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    tri = TriMesh(base @ rot.T, torch.tensor([[0, 1, 2]]))
    out = RASTER.rasterize(tri, cams)
    px, _ = project_to_pixels(tri.vertices, cams)
    area = polygon_area(px[0])
    covered = int((out.tri_id >= 0).sum())
    perimeter = sum(float((px[0, i] - px[0, (i + 1) % 3]).norm()) for i in range(3))
    # Pixel-centre sampling is off by at most about half the perimeter; antialiased coverage
    # integrates the pixel boxes and lands within a pixel or two.
    assert abs(covered - area) < 0.5 * perimeter
    assert float(out.mask.sum()) == pytest.approx(area, abs=2.0)
    assert float(out.mask.min()) >= 0.0 and float(out.mask.max()) <= 1.0


@pytest.mark.parametrize("subdivisions", [1, 4])
def test_antialiased_sphere_coverage_matches_supersampling(subdivisions):
    """Per pixel, the antialiased mask approximates the covered fraction of the pixel's area
    (8 x 8 supersampled), for coarse and for sub-pixel tessellations of the silhouette."""
    sphere = icosphere(subdivisions=subdivisions)
    low = front_camera(width=48, height=40, elevation=10.0, azimuth=30.0)
    high = front_camera(width=8 * 48, height=8 * 40, elevation=10.0, azimuth=30.0)
    mask = RASTER.rasterize(sphere, low).mask[0, ..., 0]
    with torch.no_grad():
        truth = (RASTER.rasterize(sphere, high).tri_id[0] >= 0).float().view(40, 8, 48, 8).mean((1, 3))
    edge = (truth > 0) & (truth < 1)
    assert float(mask.sum()) == pytest.approx(float(truth.sum()), abs=0.01 * float(edge.sum()) + 1.0)
    assert float((mask - truth)[edge].abs().mean()) < 0.06
    hard_error = ((RASTER.rasterize(sphere, low).tri_id[0] >= 0).float() - truth)[edge].abs().mean()
    assert float((mask - truth)[edge].abs().mean()) < 0.5 * float(hard_error)


def test_cube_depth_and_positions_are_exact():
    cams = front_camera(distance=3.0, fovy=40.0, width=80, height=64)
    box = cube()
    out = RASTER.rasterize(box, cams)
    fg = out.tri_id[0] >= 0
    # Face-on: every covered pixel sees the face x = 0.5 at depth 2.5.
    torch.testing.assert_close(out.depth[0][fg], torch.full_like(out.depth[0][fg], 2.5), atol=1e-4, rtol=0)
    assert float(out.depth[0][~fg].abs().max()) == 0.0
    focal = 32 / math.tan(math.radians(20))
    side = focal * 1.0 / 2.5  # projected side of the front face in pixels
    assert abs(int(fg.sum()) - side * side) < 2 * side

    # Oblique view: positions lie on the cube, project back to their pixel centres, and their
    # depth is their distance along the view axis.
    cams = front_camera(distance=2.5, fovy=50.0, width=64, height=64, elevation=25.0, azimuth=35.0)
    out = RASTER.rasterize(box, cams, smooth_normals=False)
    fg = out.tri_id[0] >= 0
    pos = out.world_pos[0][fg]
    torch.testing.assert_close(pos.abs().amax(-1), torch.full((pos.shape[0],), 0.5), atol=1e-4, rtol=0)
    px, depth = project_to_pixels(pos, cams)
    rows, cols = torch.nonzero(fg, as_tuple=True)
    torch.testing.assert_close(px[0], torch.stack([cols, rows], -1).float() + 0.5, atol=2e-3, rtol=0)
    torch.testing.assert_close(depth[0], out.depth[0][fg][:, 0], atol=1e-4, rtol=0)
    # Three faces are visible from this corner view, each with its own flat normal.
    normals = out.normal[0][fg]
    axes = {tuple(n) for n in normals.round().int().unique(dim=0).tolist()}
    assert axes == {(1, 0, 0), (0, 1, 0), (0, 0, 1)}


def test_nearer_triangle_wins_in_any_order():
    cams = front_camera()
    near = [[0.2, -0.5, -0.5], [0.2, 0.5, -0.5], [0.2, 0.0, 0.5]]
    far = [[-0.2, -0.6, -0.4], [-0.2, 0.6, -0.4], [-0.2, 0.0, 0.6]]
    for verts, near_id in ((near + far, 0), (far + near, 1)):
        mesh = TriMesh(torch.tensor(verts), torch.tensor([[0, 1, 2], [3, 4, 5]]))
        out = RASTER.rasterize(mesh, cams)
        centre = out.tri_id[0, 48, 48]
        assert int(centre) == near_id
        assert float(out.depth[0, 48, 48, 0]) == pytest.approx(2.8, abs=1e-4)


def test_sphere_normals_point_outward():
    sphere = icosphere(subdivisions=3)
    cams = front_camera(elevation=20.0, azimuth=-60.0)
    for smooth, tolerance in ((True, 0.995), (False, 0.98)):
        out = RASTER.rasterize(sphere, cams, smooth_normals=smooth)
        fg = out.tri_id[0] >= 0
        radial = torch.nn.functional.normalize(out.world_pos[0][fg], dim=-1)
        cos = (out.normal[0][fg] * radial).sum(-1)
        assert float(cos.min()) > tolerance
        torch.testing.assert_close(out.normal[0][fg].norm(dim=-1), torch.ones(int(fg.sum())), atol=1e-4, rtol=0)
        assert float(out.normal[0][~fg].abs().max()) == 0.0


def test_batched_cameras_match_single_renders():
    sphere = icosphere(subdivisions=2)
    cams = orbit_cameras(torch.tensor([0.0, 40.0]), torch.tensor([10.0, 200.0]), torch.tensor([3.0, 2.5]),
                         torch.tensor([30.0, 40.0]), 48, 40)
    batch = RASTER.rasterize(sphere, cams)
    for i in range(2):
        single = RASTER.rasterize(sphere, cams[i])
        assert torch.equal(batch.tri_id[i], single.tri_id[0])
        torch.testing.assert_close(batch.depth[i], single.depth[0])
        torch.testing.assert_close(batch.mask[i], single.mask[0])


def test_mesh_behind_or_outside_the_camera_renders_background():
    sphere = icosphere(subdivisions=1)
    cams = front_camera()
    for shift in ([10.0, 0.0, 0.0], [0.0, 5.0, 0.0]):  # behind the camera; beside the frame
        out = RASTER.rasterize(sphere.with_vertices(sphere.vertices + torch.tensor(shift)), cams)
        assert int((out.tri_id >= 0).sum()) == 0 and float(out.mask.sum()) == 0.0


def test_interpolate_vertex_colours_and_batched_attributes():
    cams = front_camera()
    tri = TriMesh(torch.tensor([[0.0, -0.5, -0.4], [0.0, 0.5, -0.4], [0.0, 0.0, 0.5]]), torch.tensor([[0, 1, 2]]))
    out = RASTER.rasterize(tri, cams)
    colours = torch.eye(3)
    rgb = RASTER.interpolate(colours, out, tri.faces)
    fg = out.tri_id[0] >= 0
    torch.testing.assert_close(rgb[0][fg], out.bary[0][fg])  # identity colours give the barycentrics
    torch.testing.assert_close(rgb[0][fg].sum(-1), torch.ones(int(fg.sum())), atol=1e-5, rtol=0)
    # Perspective-correct: interpolated world positions equal the rasteriser's positions.
    torch.testing.assert_close(RASTER.interpolate(tri.vertices[None], out, tri.faces), out.world_pos)


def test_gradients_reach_vertices_inside_and_across_the_silhouette():
    sphere = icosphere(subdivisions=2)
    vertices = sphere.vertices.clone().requires_grad_(True)
    mesh = sphere.with_vertices(vertices)
    cams = front_camera(width=64, height=64)
    out = RASTER.rasterize(mesh, cams)
    out.depth.sum().backward()
    assert vertices.grad is not None and float(vertices.grad.abs().sum()) > 0

    vertices.grad = None
    out = RASTER.rasterize(mesh, cams)
    out.mask.sum().backward()
    grad = vertices.grad
    # Growing the sphere grows its silhouette: the gradient of coverage points outward at the rim.
    outward = (grad * vertices.detach()).sum(-1)
    assert float(outward.sum()) > 0
    assert int((grad.norm(dim=-1) > 0).sum()) >= 8


def test_silhouette_gradient_matches_the_change_in_area():
    """d(coverage)/d(scale) of a triangle scaled about its centroid equals 2 * area / scale."""
    cams = front_camera(width=80, height=80)
    base = torch.tensor([[0.0, -0.5, -0.35], [0.0, 0.45, -0.2], [0.0, -0.05, 0.5]])
    scale = torch.tensor(0.8, requires_grad=True)
    centroid = base.mean(0)
    tri = TriMesh(centroid + (base - centroid) * scale, torch.tensor([[0, 1, 2]]))
    out = RASTER.rasterize(tri, cams)
    out.mask.sum().backward()
    area = float(out.mask.sum().detach())
    assert float(scale.grad) == pytest.approx(2 * area / 0.8, rel=0.1)


def test_antialias_gives_colour_gradients_and_vertex_gradients():
    tri_vertices = torch.tensor([[0.0, -0.5, -0.4], [0.0, 0.5, -0.4], [0.0, 0.0, 0.5]], requires_grad=True)
    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], requires_grad=True)
    mesh = TriMesh(tri_vertices, torch.tensor([[0, 1, 2]]))
    cams = front_camera(width=48, height=48)
    out = RASTER.rasterize(mesh, cams)
    image = RASTER.antialias(RASTER.interpolate(colours, out, mesh.faces), out, mesh, cams)
    image.sum().backward()
    assert float(colours.grad.abs().sum()) > 0
    assert float(tri_vertices.grad.abs().sum()) > 0


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum()) / max(1, float((a | b).sum()))


def test_fitting_vertices_to_target_silhouettes_raises_iou():
    """Mask-only fitting moves a sphere's vertices towards an ellipsoid's silhouettes."""
    torch.manual_seed(0)
    sphere = icosphere(radius=0.35, subdivisions=2)
    target = sphere.with_vertices(sphere.vertices * torch.tensor([1.35, 0.85, 1.25]) + torch.tensor([0, 0.05, 0]))
    cams = orbit_cameras(torch.tensor([0.0, 0.0, 30.0, -20.0]), torch.tensor([0.0, 90.0, 45.0, 200.0]),
                         torch.full((4,), 3.0), torch.full((4,), 30.0), 48, 48)
    with torch.no_grad():
        target_mask = RASTER.rasterize(target, cams).mask
    offset = torch.zeros_like(sphere.vertices, requires_grad=True)
    opt = torch.optim.Adam([offset], lr=0.01)
    start = iou(RASTER.rasterize(sphere, cams).mask, target_mask)
    for _ in range(40):
        mesh = sphere.with_vertices(sphere.vertices + offset)
        out = RASTER.rasterize(mesh, cams)
        loss = (out.mask - target_mask).abs().mean()
        # A little Laplacian smoothing keeps the surface from folding.
        neighbours = torch.zeros_like(offset).index_add(0, mesh.faces.reshape(-1),
                                                        mesh.vertices[mesh.faces.roll(1, 1)].reshape(-1, 3))
        degree = torch.zeros(len(offset)).index_add(0, mesh.faces.reshape(-1), torch.ones(mesh.faces.numel()))
        lap = (mesh.vertices - neighbours / degree[:, None]).pow(2).sum(-1).mean()
        opt.zero_grad()
        (loss + 0.5 * lap).backward()
        opt.step()
    end = iou(RASTER.rasterize(sphere.with_vertices(sphere.vertices + offset.detach()), cams).mask, target_mask)
    assert start < 0.8
    assert end > 0.9 and end > start + 0.1


def test_backend_choice():
    assert MeshRasterizer("auto").resolve_backend(torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="CUDA"):
        MeshRasterizer("nvdiffrast").resolve_backend(torch.device("cpu"))
    with pytest.raises(ValueError):
        MeshRasterizer("opengl")  # type: ignore[arg-type]


def _stand_in_nvdiffrast(monkeypatch, context):
    """An `nvdiffrast.torch` that imports but whose RasterizeCudaContext is `context` (as the wheel we install
    behaves on a machine without nvcc: the import works, the first use fails)."""
    import sys
    import types

    from dreampolish.backend.render import rasterize

    package, module = types.ModuleType("nvdiffrast"), types.ModuleType("nvdiffrast.torch")
    module.RasterizeCudaContext = context
    package.torch = module
    monkeypatch.setitem(sys.modules, "nvdiffrast", package)
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", module)
    monkeypatch.setattr(rasterize, "_PROBED", {})


def test_auto_picks_nvdiffrast_only_once_it_has_rasterised_and_falls_back_with_one_warning(monkeypatch, caplog):
    # nvdiffrast imports, but creating its context fails (no nvcc to build its CUDA code): "auto" must
    # rasterise with PyTorch, say why once, and not try again for every mesh.
    import logging

    tries = []

    def context(device=None):
        tries.append(device)
        raise RuntimeError("Ninja is required to load C++ extensions")

    _stand_in_nvdiffrast(monkeypatch, context)
    cuda = torch.device("cuda:0")
    auto = MeshRasterizer("auto")
    with caplog.at_level(logging.WARNING, logger="dreampolish.backend.render.rasterize"):
        assert auto.resolve_backend(cuda) == "torch"
        assert auto.resolve_backend(cuda) == "torch" and MeshRasterizer().resolve_backend(cuda) == "torch"
    assert len(tries) == 1, "the probe's answer is kept per device"
    assert "Ninja is required" in auto.fallback(cuda)
    assert auto.fallback("cpu") is None and MeshRasterizer("torch").fallback(cuda) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "PyTorch" in warnings[0] and "Ninja" in warnings[0]
    # asked for by name, nvdiffrast is not second-guessed: its own error reaches the caller
    assert MeshRasterizer("nvdiffrast").resolve_backend(cuda) == "nvdiffrast"


def test_face_neighbours_of_closed_and_open_meshes():
    from dreampolish.backend.render.raster_torch import face_neighbours

    box = cube()
    nb = face_neighbours(box.faces)
    assert (nb >= 0).all()
    # Symmetric: if g is across edge k of f, then f is across some edge of g, and they share 2 vertices.
    for f in range(box.num_faces):
        for k in range(3):
            g = int(nb[f, k])
            assert f in nb[g].tolist()
            edge = {int(box.faces[f, (k + 1) % 3]), int(box.faces[f, (k + 2) % 3])}
            assert edge <= set(box.faces[g].tolist())
    # A lone triangle has only boundary edges; two triangles sharing one edge see each other once.
    assert (face_neighbours(torch.tensor([[0, 1, 2]])) == -1).all()
    pair = face_neighbours(torch.tensor([[0, 1, 2], [2, 1, 3]]))
    assert pair.tolist() == [[1, -1, -1], [-1, -1, 0]]
