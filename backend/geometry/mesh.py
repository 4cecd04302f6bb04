"""The backend's triangle mesh: a small tensor container, file IO and clean-up.

Frame: Blender's world (right-handed, Z up, metres). Files in Y-up formats (glTF/GLB)
are converted at the file boundary with protocol/gltf.py's `blender_to_gltf` /
`gltf_to_blender` (the one axis conversion); .glb files are written by its `mesh_to_glb`
(the one .glb writer). The documented object frame of every generated mesh is
`normalize_to_unit`'s: centred on the origin (bounding-box centre) with a bounding sphere
of radius 0.5.

Vertex colours inside the backend are display (sRGB) values in [0, 1], what the colour
fields output and the image priors see. They are converted (render/colour.py) where a mesh
leaves or enters the backend: the wire (MeshPayload.colors) and glTF files (COLOR_0) hold
linear values, as both define them; .ply/.obj keep 8-bit sRGB values, the convention of
byte colours (Blender's PLY importer reads them as sRGB by default).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from dreampolish.protocol.gltf import blender_to_gltf, gltf_to_blender, mesh_to_glb
from dreampolish.protocol.scene import MeshPayload, TexturePayload, mirrors
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from torch import Tensor

from ..render.colour import linear_to_srgb, srgb_to_linear

log = logging.getLogger(__name__)

MESH_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".stl")
Y_UP_SUFFIXES = (".glb", ".gltf")


@dataclass
class TriMesh:
    """A triangle mesh on one device."""

    vertices: Tensor
    """[V,3] float32 positions."""
    faces: Tensor
    """[F,3] int64 vertex indices, counter-clockwise seen from outside."""
    uvs: Tensor | None = None
    """[F,3,2] float32 per-corner texture coordinates (OpenGL convention: v up), or None."""
    vertex_colors: Tensor | None = None
    """[V,3] float32 display (sRGB) RGB in [0, 1], or None (linear only on the wire and in glTF)."""

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def device(self) -> torch.device:
        return self.vertices.device

    def to(self, device: torch.device | str) -> TriMesh:
        return TriMesh(
            self.vertices.to(device), self.faces.to(device),
            None if self.uvs is None else self.uvs.to(device),
            None if self.vertex_colors is None else self.vertex_colors.to(device),
        )

    def detach(self) -> TriMesh:
        return TriMesh(
            self.vertices.detach(), self.faces,
            None if self.uvs is None else self.uvs.detach(),
            None if self.vertex_colors is None else self.vertex_colors.detach(),
        )

    def with_vertices(self, vertices: Tensor) -> TriMesh:
        """The same topology and attributes with new positions (e.g. optimised ones)."""
        return TriMesh(vertices, self.faces, self.uvs, self.vertex_colors)

    def face_normals(self, normalize: bool = True) -> Tensor:
        """[F,3] face normals; unnormalised they are (v1 - v0) x (v2 - v0), twice the face area long."""
        v = self.vertices.index_select(0, self.faces.reshape(-1)).view(-1, 3, 3)
        n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
        return torch.nn.functional.normalize(n, dim=-1) if normalize else n

    def vertex_normals(self) -> Tensor:
        """[V,3] unit vertex normals, the area-weighted mean of the adjacent face normals."""
        n = self.face_normals(normalize=False)
        acc = torch.zeros_like(self.vertices)
        for corner in range(3):
            acc = acc.index_add(0, self.faces[:, corner], n)
        return torch.nn.functional.normalize(acc, dim=-1)

    def bounds(self) -> tuple[Tensor, Tensor]:
        """(min corner [3], max corner [3]) of the vertices."""
        return self.vertices.min(dim=0).values, self.vertices.max(dim=0).values

    # -- protocol payloads ------------------------------------------------------------------

    @classmethod
    def from_payload(cls, payload: MeshPayload, *, apply_transform: bool = True,
                     device: torch.device | str = "cpu") -> TriMesh:
        """A mesh from the wire; with `apply_transform` the object transform is baked into the
        vertices so that they are in world coordinates (where the protocol's cameras live)."""
        payload.validate()
        if apply_transform:
            if mirrors(payload.transform):
                log.info("mesh transform mirrors the object; flipping face winding to keep normals outward")
            payload = payload.in_world()
        vertices, faces, uvs = payload.vertices, payload.faces, payload.uvs
        # The wire's colours are linear; the backend works in display values.
        colors = None if payload.colors is None else linear_to_srgb(payload.colors[:, :3].astype(np.float32))
        return cls(
            torch.as_tensor(vertices, dtype=torch.float32, device=device),
            torch.as_tensor(np.ascontiguousarray(faces).astype(np.int64), device=device),
            None if uvs is None else torch.as_tensor(np.ascontiguousarray(uvs), dtype=torch.float32, device=device),
            None if colors is None else torch.as_tensor(np.ascontiguousarray(colors), device=device),
        )

    def to_payload(self, textures: list[TexturePayload] | None = None,
                   transform: np.ndarray | None = None, *, with_normals: bool = True) -> MeshPayload:
        """The mesh for the wire (vertices in the frame `transform` maps to world; identity by default),
        with its vertex colours as the linear values the wire carries."""
        mesh = self.detach().to("cpu")
        payload = MeshPayload(
            vertices=np.ascontiguousarray(mesh.vertices.numpy(), dtype=np.float32),
            faces=np.ascontiguousarray(mesh.faces.numpy().astype(np.uint32)),
            uvs=None if mesh.uvs is None else np.ascontiguousarray(mesh.uvs.numpy(), dtype=np.float32),
            normals=np.ascontiguousarray(mesh.vertex_normals().numpy(), dtype=np.float32) if with_normals else None,
            colors=None if mesh.vertex_colors is None else np.ascontiguousarray(
                srgb_to_linear(mesh.vertex_colors.numpy()), dtype=np.float32),
            transform=np.eye(4, dtype=np.float32) if transform is None else np.asarray(transform, np.float32),
            textures=list(textures or []),
        )
        return payload.validate()


# -- file IO -----------------------------------------------------------------------------------


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise ValueError(f"unsupported mesh file type {suffix!r} ({path}); use one of {MESH_SUFFIXES}")
    return suffix


def load_mesh(path: str | Path, device: torch.device | str = "cpu") -> TriMesh:
    """Read .obj/.ply/.stl (taken as Z-up) or .glb/.gltf (Y-up, converted to Z-up); all parts of a
    scene are merged into one mesh with their scene transforms applied."""
    path = Path(path)
    suffix = _suffix(path)
    loaded = trimesh.load(str(path), process=False)
    if isinstance(loaded, trimesh.Scene):
        parts = list(loaded.dump(concatenate=False)) if hasattr(loaded, "dump") else list(loaded.geometry.values())
        parts = [p for p in parts if isinstance(p, trimesh.Trimesh) and len(p.faces)]
        if not parts:
            raise ValueError(f"{path} holds no triangle mesh")
        tm = parts[0] if len(parts) == 1 else trimesh.util.concatenate(parts)
    elif isinstance(loaded, trimesh.Trimesh):
        tm = loaded
    else:
        raise ValueError(f"{path} holds no triangle mesh (got {type(loaded).__name__})")
    if len(tm.faces) == 0:
        raise ValueError(f"{path} holds no triangles")

    vertices = np.asarray(tm.vertices, dtype=np.float64)
    faces = np.asarray(tm.faces, dtype=np.int64)
    if suffix in Y_UP_SUFFIXES:
        vertices = gltf_to_blender(vertices).astype(np.float64)
    uvs = None
    uv = getattr(tm.visual, "uv", None)
    if uv is not None and len(uv) == len(vertices):
        uvs = np.asarray(uv, dtype=np.float32)[faces]
    colors = None
    if getattr(tm.visual, "kind", None) == "vertex":
        colors = np.asarray(tm.visual.vertex_colors, dtype=np.float32)[:, :3] / 255.0
        if suffix in Y_UP_SUFFIXES:
            colors = linear_to_srgb(colors)  # glTF COLOR_0 is linear
    mesh = TriMesh(
        torch.as_tensor(vertices, dtype=torch.float32, device=device),
        torch.as_tensor(faces, device=device),
        None if uvs is None else torch.as_tensor(uvs, device=device),
        None if colors is None else torch.as_tensor(colors, device=device),
    )
    if suffix == ".stl":
        # STL stores three separate corners per triangle: weld them back into a connected mesh.
        mesh = merge_close_vertices(mesh, tolerance=1e-9)
    return mesh


def save_mesh(mesh: TriMesh, path: str | Path) -> Path:
    """Write .obj/.ply/.stl in our Z-up frame, or .glb/.gltf converted to glTF's Y-up.

    Per-corner UVs are stored by splitting vertices where corners disagree (files keep
    UVs per vertex); vertex colours are written as 8-bit sRGB RGBA, linear in .gltf, and as
    linear floats in .glb (protocol/gltf.py's writer).
    """
    path = Path(path)
    suffix = _suffix(path)
    mesh = mesh.detach().to("cpu")
    if suffix == ".glb":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(mesh_to_glb(mesh.to_payload(), name=path.stem))
        return path
    vertices = mesh.vertices.numpy().astype(np.float64)
    faces = mesh.faces.numpy()
    colors = None if mesh.vertex_colors is None else mesh.vertex_colors.numpy()
    if colors is not None and suffix in Y_UP_SUFFIXES:
        colors = srgb_to_linear(colors)  # glTF COLOR_0 is linear
    if mesh.uvs is not None and suffix != ".stl":
        # One file vertex per distinct (vertex, uv) corner.
        corner_uv = mesh.uvs.numpy().reshape(-1, 2)
        key = np.concatenate([faces.reshape(-1, 1).astype(np.float64), corner_uv.astype(np.float64)], axis=1)
        unique, inverse = np.unique(key, axis=0, return_inverse=True)
        source = unique[:, 0].astype(np.int64)
        vertices, faces = vertices[source], inverse.reshape(-1, 3)
        colors = None if colors is None else colors[source]
        visual = trimesh.visual.TextureVisuals(uv=unique[:, 1:])
    elif colors is not None:
        rgba = np.concatenate([np.clip(colors, 0, 1), np.ones((len(colors), 1))], axis=1)
        visual = trimesh.visual.ColorVisuals(vertex_colors=np.round(rgba * 255).astype(np.uint8))
    else:
        visual = None
    if suffix in Y_UP_SUFFIXES:
        vertices = blender_to_gltf(vertices).astype(np.float64)
    tm = trimesh.Trimesh(vertices=vertices, faces=faces, visual=visual, process=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tm.export(str(path))
    return path


# -- normalisation and clean-up ------------------------------------------------------------------


def normalize_to_unit(mesh: TriMesh, radius: float = 0.5) -> tuple[TriMesh, Tensor]:
    """Move the bounding-box centre to the origin and scale so that the bounding sphere about it
    has `radius` (the documented object frame).

    Returns (normalised mesh, transform [4,4]) with original = transform @ normalised
    (homogeneous coordinates), i.e. the object-to-world transform of the normalised mesh.
    """
    lo, hi = mesh.bounds()
    centre = 0.5 * (lo + hi)
    extent = (mesh.vertices - centre).norm(dim=-1).max()
    if float(extent) <= 0:
        raise ValueError("cannot normalise a mesh whose vertices all coincide")
    scale = extent / radius
    transform = torch.eye(4, dtype=torch.float32, device=mesh.device)
    transform[:3, :3] *= scale
    transform[:3, 3] = centre
    return mesh.with_vertices((mesh.vertices - centre) / scale), transform


def _subset_faces(mesh: TriMesh, keep: np.ndarray) -> TriMesh:
    keep_t = torch.as_tensor(keep, device=mesh.device)
    return TriMesh(mesh.vertices, mesh.faces[keep_t], None if mesh.uvs is None else mesh.uvs[keep_t],
                   mesh.vertex_colors)


def remove_unreferenced_vertices(mesh: TriMesh) -> TriMesh:
    """Drop vertices no face uses, renumbering the faces."""
    used = torch.zeros(mesh.num_vertices, dtype=torch.bool, device=mesh.device)
    used[mesh.faces.reshape(-1)] = True
    new_index = torch.cumsum(used.long(), 0) - 1
    return TriMesh(mesh.vertices[used], new_index[mesh.faces], mesh.uvs,
                   None if mesh.vertex_colors is None else mesh.vertex_colors[used])


def remove_degenerate_faces(mesh: TriMesh, min_area: float = 1e-12) -> TriMesh:
    """Drop faces that repeat a vertex or whose area is at most `min_area`, then unused vertices."""
    f = mesh.faces
    distinct = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    area = 0.5 * mesh.face_normals(normalize=False).detach().norm(dim=-1)
    keep = (distinct & (area > min_area)).cpu().numpy()
    if not keep.all():
        log.debug("removing %d degenerate faces", int((~keep).sum()))
    return remove_unreferenced_vertices(_subset_faces(mesh, keep))


def face_components(mesh: TriMesh) -> np.ndarray:
    """[F] connected-component label of every face (faces connect through shared vertices)."""
    f = mesh.faces.cpu().numpy()
    n = mesh.num_vertices
    # Vertex graph: each face links its first vertex to the other two.
    rows = np.concatenate([f[:, 0], f[:, 0]])
    cols = np.concatenate([f[:, 1], f[:, 2]])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, vertex_label = connected_components(graph, directed=False)
    return vertex_label[f[:, 0]]


def keep_largest_components(mesh: TriMesh, min_fraction: float = 0.05) -> TriMesh:
    """Keep the largest connected component and every other one with at least `min_fraction`
    of its face count (floaters and specks from marching go), then drop unused vertices."""
    if mesh.num_faces == 0:
        return mesh
    label = face_components(mesh)
    counts = np.bincount(label)
    keep_labels = counts >= max(1.0, min_fraction * counts.max())
    keep = keep_labels[label]
    if not keep.all():
        log.debug("keeping %d of %d components", int(keep_labels.sum()), int((counts > 0).sum()))
    return remove_unreferenced_vertices(_subset_faces(mesh, keep))


def merge_close_vertices(mesh: TriMesh, tolerance: float = 1e-6) -> TriMesh:
    """Weld vertices closer than `tolerance` (each cluster becomes its first vertex), then drop
    faces that collapsed and unused vertices. Per-corner UVs are kept as they are."""
    v = mesh.vertices.detach().cpu().numpy()
    pairs = cKDTree(v).query_pairs(r=tolerance, output_type="ndarray")
    if len(pairs) == 0:
        return mesh
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(len(v), len(v)))
    _, label = connected_components(graph, directed=False)
    # Representative of each cluster: its lowest vertex index.
    first = np.full(label.max() + 1, len(v), dtype=np.int64)
    np.minimum.at(first, label, np.arange(len(v)))
    remap = torch.as_tensor(first[label], device=mesh.device)
    merged = TriMesh(mesh.vertices, remap[mesh.faces], mesh.uvs, mesh.vertex_colors)
    return remove_degenerate_faces(merged, min_area=-1.0)


def clean_mesh(mesh: TriMesh, min_component_fraction: float = 0.05, weld_tolerance: float = 1e-6) -> TriMesh:
    """The standard clean-up after mesh extraction: weld, drop degenerate faces, drop floaters."""
    mesh = merge_close_vertices(mesh, weld_tolerance)
    mesh = remove_degenerate_faces(mesh)
    return keep_largest_components(mesh, min_component_fraction)


def simplify_mesh(mesh: TriMesh, target_faces: int) -> TriMesh:
    """Quadric-error decimation to about `target_faces` triangles (fast-simplification); vertex colours
    follow from the nearest original vertex, UVs are dropped (the caller unwraps the result anew)."""
    if mesh.num_faces <= target_faces:
        return mesh
    import fast_simplification  # a backend dependency; imported here because only texturing needs it

    verts = mesh.vertices.detach().cpu().numpy().astype(np.float32)
    faces = mesh.faces.detach().cpu().numpy().astype(np.int64)
    new_v, new_f = fast_simplification.simplify(verts, faces, target_count=int(target_faces))
    colors = None
    if mesh.vertex_colors is not None:
        nearest = cKDTree(verts).query(new_v)[1]
        colors = mesh.vertex_colors.detach().cpu()[torch.as_tensor(nearest)].to(mesh.vertices.device)
    out = TriMesh(torch.as_tensor(new_v, dtype=torch.float32, device=mesh.vertices.device),
                  torch.as_tensor(new_f, dtype=torch.int64, device=mesh.vertices.device), vertex_colors=colors)
    return remove_degenerate_faces(out)
