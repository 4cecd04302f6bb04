"""UV unwrap, texture bake with dilation, normal-map bake and glTF export."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from dreampolish.backend import bake
from dreampolish.protocol.gltf import mesh_to_glb
from dreampolish.protocol.scene import MeshPayload, TexturePayload


def _sphere(subdivisions: int = 3) -> tuple[np.ndarray, np.ndarray]:
    m = trimesh.creation.icosphere(subdivisions, radius=0.5)
    return m.vertices.astype(np.float32), m.faces.astype(np.int64)


def _color(points: np.ndarray) -> np.ndarray:
    """A smooth colour field with detail on the scale of a chart."""
    return (0.5 + 0.45 * np.sin(6.0 * points + np.array([0.0, 1.0, 2.0]))).astype(np.float32)


def _bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample an image like a renderer's bilinear texture fetch (v up, row 0 at the top, clamp)."""
    h, w = image.shape[:2]
    x = np.clip(uv[:, 0] * w - 0.5, 0, w - 1)
    y = np.clip((1.0 - uv[:, 1]) * h - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _seam_samples(faces: np.ndarray, uvs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UVs of points along every seam edge as seen from each of its two faces: ([N,2], [N,2])."""
    first: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    side_a, side_b = [], []
    ts = np.linspace(0.1, 0.9, 9)[:, None]
    for f in range(faces.shape[0]):
        for k in range(3):
            a, b = int(faces[f, k]), int(faces[f, (k + 1) % 3])
            ua, ub = uvs[f, k], uvs[f, (k + 1) % 3]
            if a > b:
                a, b, ua, ub = b, a, ub, ua
            if (a, b) not in first:
                first[(a, b)] = (ua, ub)
                continue
            va, vb = first[(a, b)]
            if np.allclose(va, ua) and np.allclose(vb, ub):
                continue  # not a seam: both faces share the UVs of this edge
            side_a.append(va + ts * (vb - va))
            side_b.append(ua + ts * (ub - ua))
    return np.concatenate(side_a), np.concatenate(side_b)


def test_unwrap_keeps_the_mesh_and_covers_every_face_once():
    v, f = _sphere()
    uvs = bake.unwrap_uv(v, f, bake.UnwrapConfig(resolution=256, padding=2))
    assert uvs.shape == (f.shape[0], 3, 2) and uvs.dtype == np.float32
    assert uvs.min() >= 0.0 and uvs.max() <= 1.0
    coverage = bake.rasterize_uv(uvs, 256, 256)
    # Charts are packed without overlap, so every face owns some texels and the atlas is well used.
    assert len(np.unique(coverage.face_id[coverage.inside])) > 0.9 * f.shape[0]
    assert 0.3 < coverage.inside.mean() < 0.95


def test_baked_texels_hold_the_colour_field_at_their_surface_point():
    v, f = _sphere()
    uvs = bake.unwrap_uv(v, f, bake.UnwrapConfig(resolution=128))
    image = bake.bake_color(v, f, uvs, _color, 128)
    coverage = bake.rasterize_uv(uvs, 128, 128)
    points = bake.texel_attribute(coverage, f, v)
    np.testing.assert_allclose(image[coverage.filled], _color(points), atol=1e-6)
    # Round trip through the PNG that goes on the wire: 8-bit quantisation only.
    np.testing.assert_allclose(bake.decode_png(bake.encode_png(image)), image, atol=1 / 255 + 1e-6)


def test_dilated_atlas_shows_no_seam_where_an_undilated_one_does():
    v, f = _sphere()
    size = 256
    uvs = bake.unwrap_uv(v, f, bake.UnwrapConfig(resolution=size, padding=4))
    dilated = bake.bake_color(v, f, uvs, _color, size, padding=None)
    coverage = bake.rasterize_uv(uvs, size, size)
    bare = np.zeros_like(dilated)
    bare[coverage.inside] = dilated[coverage.inside]
    side_a, side_b = _seam_samples(f, uvs)
    assert side_a.shape[0] > 100
    seam_dilated = np.abs(_bilinear(dilated, side_a) - _bilinear(dilated, side_b)).max(1)
    seam_bare = np.abs(_bilinear(bare, side_a) - _bilinear(bare, side_b)).max(1)
    # The colour a renderer fetches on either side of a seam agrees to within a couple of 8-bit steps
    # when the charts are dilated; without dilation the background bleeds in.
    assert seam_dilated.mean() < 0.01 and np.percentile(seam_dilated, 99) < 0.04
    assert seam_bare.mean() > 5 * seam_dilated.mean()


def test_normal_map_carries_the_detail_mesh_shading_onto_a_flat_mesh():
    # A flat square (UV = xy, so tangent = +X, bitangent = +Y, normal = +Z) under a bumpy copy of itself.
    n = 64
    xs = np.linspace(0.0, 1.0, n + 1, dtype=np.float32)
    gx, gy = np.meshgrid(xs, xs, indexing="xy")
    quads = np.array([[i * (n + 1) + j, i * (n + 1) + j + 1, (i + 1) * (n + 1) + j + 1, (i + 1) * (n + 1) + j]
                      for i in range(n) for j in range(n)])
    faces = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]]).astype(np.int64)
    amp, k = 0.02, 2 * np.pi * 3
    flat = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size, np.float32)], 1)
    bumpy = flat.copy()
    bumpy[:, 2] = amp * np.sin(k * flat[:, 0])
    uvs = flat[faces][..., :2].copy()
    normal_map = bake.bake_normal_map(flat, faces, uvs, bumpy, faces, 64)
    # Expected tangent-space normal of z = a sin(kx): (-a k cos(kx), 0, 1) normalised.
    u = (np.arange(64) + 0.5) / 64
    slope = -amp * k * np.cos(k * u)
    expected_x = slope / np.sqrt(1 + slope**2)
    measured_x = normal_map[32, :, 0]
    assert np.abs(measured_x - expected_x)[4:-4].max() < 0.08
    assert np.abs(normal_map[..., 1]).max() < 0.05
    # The same mesh as its own detail gives a flat map.
    flat_map = bake.bake_normal_map(flat, faces, uvs, flat, faces, 32)
    np.testing.assert_allclose(flat_map[..., 2], 1.0, atol=1e-4)


def test_glb_is_y_up_with_the_texture_and_uvs(tmp_path):
    v, f = _sphere(2)
    v = v.copy()
    v[:, 2] *= 2.0  # tall along Blender's Z
    uvs = bake.unwrap_uv(v, f, bake.UnwrapConfig(resolution=64))
    image = bake.bake_color(v, f, uvs, _color, 64)
    payload = MeshPayload(vertices=v.astype(np.float32), faces=f.astype(np.uint32), uvs=uvs,
                          textures=[TexturePayload(role="base_color", png=bake.encode_png(image))])
    path = tmp_path / "out.glb"
    path.write_bytes(mesh_to_glb(payload))
    scene = trimesh.load(str(path))
    (mesh,) = scene.geometry.values()
    extent = mesh.vertices.max(0) - mesh.vertices.min(0)
    assert extent[1] == pytest.approx(2.0, rel=1e-3)  # Blender's Z became glTF's Y
    assert extent[0] == pytest.approx(1.0, rel=1e-3)
    assert len(mesh.faces) == len(f)
    tex = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"), dtype=np.float32) / 255
    # Every glTF vertex samples the same colour from the stored texture as the colour field gives there.
    back_to_blender = np.stack([mesh.vertices[:, 0], -mesh.vertices[:, 2], mesh.vertices[:, 1]], 1)
    sampled = _bilinear(tex, np.asarray(mesh.visual.uv))
    assert np.abs(sampled - _color(back_to_blender)).mean() < 0.03


def test_the_cage_finds_the_detail_along_the_given_direction_within_its_distance():
    # Detail: a sphere of radius 0.5. Points at radius 0.46 cast along a direction tilted 30 degrees off the
    # radius: the hit is where that line meets the sphere, not the nearest point, and its smooth normal is
    # the sphere's radial direction there. Points at radius 0.3 are beyond the cage of 0.05.
    v, f = _sphere(5)
    n = bake.vertex_normals(v, f)
    rng = np.random.default_rng(0)
    radial = rng.normal(size=(200, 3))
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    side = np.cross(radial, rng.normal(size=(200, 3)))
    side /= np.linalg.norm(side, axis=1, keepdims=True)
    direction = np.cos(np.radians(30)) * radial + np.sin(np.radians(30)) * side
    points = 0.46 * radial
    got, hit = bake.ray_cast_normals(points, direction, v, f, n, max_distance=0.08)
    assert hit.all()
    # the line p + t d meets |x| = 0.5 at t = -p.d + sqrt((p.d)^2 - |p|^2 + 0.25)
    pd = np.sum(points * direction, 1)
    t = -pd + np.sqrt(pd**2 - 0.46**2 + 0.25)
    expected = points + t[:, None] * direction
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    cosine = np.sum(got / np.linalg.norm(got, axis=1, keepdims=True) * expected, 1)
    assert np.degrees(np.arccos(np.clip(cosine, -1, 1))).max() < 1.0
    nearest = points / 0.46  # the normal at the nearest point is the radial one, 2.6 degrees off
    assert np.degrees(np.arccos(np.clip(np.sum(nearest * expected, 1), -1, 1))).min() > 2.0
    _, far = bake.ray_cast_normals(0.3 * radial, radial, v, f, n, max_distance=0.05)
    assert not far.any()


def test_a_normal_map_baked_through_the_cage_carries_the_detail_onto_a_flat_mesh():
    # A flat square of two triangles (UV = xy) under a finely tessellated z = 0.03 + a sin(kx): through the
    # cage each texel gets the detail's normal straight above it.
    n = 64
    xs = np.linspace(0.0, 1.0, n + 1, dtype=np.float32)
    gx, gy = np.meshgrid(xs, xs, indexing="xy")
    quads = np.array([[i * (n + 1) + j, i * (n + 1) + j + 1, (i + 1) * (n + 1) + j + 1, (i + 1) * (n + 1) + j]
                      for i in range(n) for j in range(n)])
    detail_faces = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]]).astype(np.int64)
    amp, k = 0.02, 2 * np.pi * 3
    detail = np.stack([gx.ravel(), gy.ravel(), 0.03 + amp * np.sin(k * gx.ravel())], 1).astype(np.float32)
    low = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.int64)
    uvs = low[faces][..., :2].copy()
    normal_map = bake.bake_normal_map(low, faces, uvs, detail, detail_faces, 64, ray_distance=0.1)
    u = (np.arange(64) + 0.5) / 64
    slope = -amp * k * np.cos(k * u)
    assert np.abs(normal_map[32, :, 0] - slope / np.sqrt(1 + slope**2))[4:-4].max() < 0.05
    assert np.abs(normal_map[..., 1]).max() < 0.05


def test_maps_carried_onto_another_mesh_of_the_surface_show_the_source_s_colours_there():
    # an LOD's maps from its finished mesh (bake.transfer_maps): the source's baked colours, read where the
    # coarser mesh's texels meet the source, are the colour field there, up to the texels' spacing
    v, f = _sphere(3)
    uvs = bake.unwrap_uv(v, f)
    source = bake.bake_color(v, f, uvs, _color, 256)
    lv, lf = _sphere(2)
    luvs = bake.unwrap_uv(lv, lf, bake.UnwrapConfig(resolution=128, padding=2))
    (carried,) = bake.transfer_maps(lv, lf, luvs, v, f, uvs, [source], 128)
    coverage = bake.rasterize_uv(luvs, 128, 128)
    points = bake.texel_attribute(coverage, lf, lv)
    # the source sphere's surface point along the coarse one's normal: the same direction, radius about 0.5
    on_source = points / np.linalg.norm(points, axis=1, keepdims=True) * 0.5
    error = np.abs(carried[coverage.inside] - _color(on_source[coverage.inside[coverage.filled]])).mean()
    assert error < 0.01, error
    # read with the source's UVs upside down the colours are wrong: the test sees where they come from
    flipped = uvs.copy()
    flipped[..., 1] = 1 - flipped[..., 1]
    (wrong,) = bake.transfer_maps(lv, lf, luvs, v, f, flipped, [source], 128)
    assert np.abs(wrong[coverage.inside] - _color(on_source[coverage.inside[coverage.filled]])).mean() > 4 * error


def test_the_dry_run_s_grid_charts_keep_the_faces_and_cover_the_atlas_without_overlap():
    # bake.grid_charts (the dry run's stand-in for xatlas): per-corner UVs of the same shape, every face its own
    # triangle, so that the bake's host arrays and device chunks are as large as with real charts
    box = trimesh.creation.box()
    vertices, faces = np.asarray(box.vertices, np.float32), np.asarray(box.faces, np.int64)
    with bake.grid_charts():
        uvs = bake.unwrap_uv(vertices, faces, bake.UnwrapConfig(resolution=64))
    assert uvs.shape == (len(faces), 3, 2) and uvs.dtype == np.float32
    coverage = bake.rasterize_uv(uvs, 64, 64, border=0)
    assert set(np.unique(coverage.face_id[coverage.inside])) == set(range(len(faces)))  # each face has texels
    areas = 0.5 * np.abs(np.cross(uvs[:, 1] - uvs[:, 0], uvs[:, 2] - uvs[:, 0]))
    assert areas.sum() <= 1.0 + 1e-6 and (areas > 0).all()  # inside [0,1]² (the grid's halves do not overlap)
    assert bake.unwrap_uv(vertices, faces, bake.UnwrapConfig(resolution=64)).shape == uvs.shape  # xatlas outside
