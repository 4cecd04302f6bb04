"""The one object-to-world rule (protocol/scene.py), which the add-on and the backend both use."""

from __future__ import annotations

import numpy as np
from dreampolish.protocol.scene import MeshPayload, mirrors, object_to_world


def _tetra(transform: np.ndarray) -> MeshPayload:
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.uint32)  # outward
    uvs = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    n = (v - 0.25) / np.linalg.norm(v - 0.25, axis=1, keepdims=True)
    return MeshPayload(vertices=v, faces=f, uvs=uvs, normals=n.astype(np.float32), transform=transform)


def _outward(mesh: MeshPayload) -> bool:
    tri = mesh.vertices[mesh.faces.astype(np.int64)].astype(np.float64)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return bool((np.einsum("ij,ij->i", normals, tri.mean(axis=1) - mesh.vertices.mean(axis=0)) > 0).all())


def test_in_world_applies_the_transform_and_leaves_an_identity():
    m = np.eye(4, dtype=np.float32)
    m[:3, :3] = [[0, -2, 0], [2, 0, 0], [0, 0, 2]]  # turned 90 degrees about Z, scaled 2
    m[:3, 3] = [1, 2, 3]
    mesh = _tetra(m)
    world = mesh.in_world()
    np.testing.assert_allclose(world.vertices, mesh.vertices @ m[:3, :3].T + m[:3, 3], atol=1e-6)
    np.testing.assert_allclose(world.vertices, object_to_world(mesh.vertices, m), atol=1e-6)
    np.testing.assert_array_equal(world.transform, np.eye(4, dtype=np.float32))
    np.testing.assert_array_equal(world.faces, mesh.faces)
    assert world.vertices.dtype == np.float32 and _outward(world) and not mirrors(m)
    np.testing.assert_allclose(np.linalg.norm(world.normals, axis=1), 1.0, atol=1e-6)
    world.validate()


def test_a_mirroring_transform_flips_the_winding_and_the_corner_uvs():
    m = np.diag([-1.0, 1.0, 1.0, 1.0]).astype(np.float32)
    mesh = _tetra(m)
    world = mesh.in_world()
    assert mirrors(m) and _outward(world)
    np.testing.assert_array_equal(world.faces, mesh.faces[:, ::-1])
    np.testing.assert_array_equal(world.uvs, mesh.uvs[:, ::-1])


def test_normals_without_an_inverse_are_dropped_not_raised():
    world = _tetra(np.diag([1.0, 1.0, 0.0, 1.0]).astype(np.float32)).in_world()
    assert world.normals is None
