"""Export stage: the final mesh and its baked maps as a protocol MeshPayload (what Blender imports)
and as a glTF binary in the job's folder.

Frames: the mesh's vertices are in its object frame and `transform` maps them to Blender's world;
the payload carries both unchanged, the .glb holds world positions converted to glTF's Y up (by
protocol/gltf.py's `mesh_to_glb`, the one .glb writer and the one place that converts).

Colours: the payload's vertex colours are linear (TriMesh.to_payload converts the backend's display
values), and the .glb stores those same values as COLOR_0; the base-colour PNG stays sRGB-encoded,
as glTF defines baseColorTexture.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from dreampolish.protocol.gltf import mesh_to_glb
from dreampolish.protocol.names import check_file_name
from dreampolish.protocol.scene import MeshPayload, TexturePayload, triangle_corner_of_polygon_corner

from .. import bake
from ..config_fields import file_name
from ..geometry.mesh import TriMesh

logger = logging.getLogger(__name__)


@dataclass
class ExportConfig:
    write_glb: bool = True
    """Write the final textured mesh as a glTF binary (RunOutcome.result_files["glb"])."""
    glb_name: str = file_name("result.glb", ".glb")
    """File name of the glTF binary inside the job folder (a plain name ending in .glb)."""
    normal_map_dtype: Literal["float16", "float32"] = "float16"
    """Precision of the raw normal-map array sent to Blender."""


def texture_payloads(base_color: np.ndarray | None, normal_map: np.ndarray | None,
                     normal_dtype: str = "float16", roughness_metallic: np.ndarray | None = None
                     ) -> list[TexturePayload]:
    """Baked maps as protocol textures: base colour as an sRGB PNG, the normal map as a raw float
    array of unit vectors in [-1, 1] (tangent space, OpenGL +Y), roughness/metallic as a PNG of linear
    data in glTF's packing (G roughness, B metallic)."""
    textures = []
    if base_color is not None:
        textures.append(TexturePayload(role="base_color", png=bake.encode_png(base_color)))
    if normal_map is not None:
        textures.append(TexturePayload(role="normal", array=np.ascontiguousarray(normal_map.astype(normal_dtype))))
    if roughness_metallic is not None:
        textures.append(TexturePayload(role="roughness_metallic", png=bake.encode_png(roughness_metallic)))
    return textures


def mesh_payload(mesh: TriMesh, transform: np.ndarray, textures: list[TexturePayload] | None = None) -> MeshPayload:
    """The mesh (object frame) with its object-to-world transform, for the wire (linear vertex colours)."""
    return mesh.to_payload(textures=textures, transform=np.asarray(transform, np.float32))


def polygon_payload(payload: MeshPayload, sizes: np.ndarray | None) -> MeshPayload:
    """`payload` as the polygon mesh it is when its triangles are the fans of faces of `sizes` corners (the
    finish stage's mesh); unchanged when `sizes` is None."""
    if sizes is None:
        return payload
    corner = triangle_corner_of_polygon_corner(sizes)
    return MeshPayload.from_polygons(
        payload.vertices, np.asarray(sizes, np.uint32), payload.faces.reshape(-1)[corner],
        None if payload.uvs is None else payload.uvs.reshape(-1, 2)[corner], normals=payload.normals,
        colors=payload.colors, transform=payload.transform, textures=payload.textures).validate()


@dataclass
class ExportResult:
    payload: MeshPayload
    """What the final stage_result carries."""
    files: dict[str, Path]
    """Artefacts in the job folder, e.g. {"glb": path}."""


def run_export(cfg: ExportConfig, payload: MeshPayload, work_dir: Path) -> ExportResult:
    """Write the final artefacts for a finished mesh payload (vertices, faces, per-corner UVs,
    textures and transform as they go to Blender)."""
    payload.validate()
    files: dict[str, Path] = {}
    if cfg.write_glb:
        world = payload.in_world()  # a .glb holds world positions; mesh_to_glb encodes the normal map
        # The name may come from a request: it must stay a plain file name inside the job's folder.
        path = Path(work_dir) / check_file_name(cfg.glb_name, "export.glb_name", suffix=".glb")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(mesh_to_glb(world, name=Path(cfg.glb_name).stem))
        logger.info("wrote %s (%d vertices, %d faces)", path, world.num_vertices, world.num_faces)
        files["glb"] = path
    return ExportResult(payload, files)
