"""Export stage: the final mesh and its baked maps as a protocol MeshPayload (what Blender imports)
and as a glTF binary in the job's folder.

Frames: the mesh's vertices are in its object frame and `transform` maps them to Blender's world;
the payload carries both unchanged, the .glb holds world positions converted to glTF's Y up (by
`bake.write_glb`, the one place that converts).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from dreampolish.protocol.scene import MeshPayload, TexturePayload

from .. import bake
from ..geometry.mesh import TriMesh

logger = logging.getLogger(__name__)


@dataclass
class ExportConfig:
    write_glb: bool = True
    """Write the final textured mesh as a glTF binary (RunOutcome.result_files["glb"])."""
    glb_name: str = "result.glb"
    """File name of the glTF binary inside the job folder."""
    normal_map_dtype: Literal["float16", "float32"] = "float16"
    """Precision of the raw normal-map array sent to Blender."""


def texture_payloads(base_color: np.ndarray | None, normal_map: np.ndarray | None,
                     normal_dtype: str = "float16") -> list[TexturePayload]:
    """Baked maps as protocol textures: base colour as an sRGB PNG, the normal map as a raw float
    array of unit vectors in [-1, 1] (tangent space, OpenGL +Y)."""
    textures = []
    if base_color is not None:
        textures.append(TexturePayload(role="base_color", png=bake.encode_png(base_color)))
    if normal_map is not None:
        textures.append(TexturePayload(role="normal", array=np.ascontiguousarray(normal_map.astype(normal_dtype))))
    return textures


def mesh_payload(mesh: TriMesh, transform: np.ndarray, textures: list[TexturePayload] | None = None) -> MeshPayload:
    """The mesh (object frame) with its object-to-world transform, for the wire."""
    return mesh.to_payload(textures=textures, transform=np.asarray(transform, np.float32))


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
        base = payload.texture("base_color")
        normal = payload.texture("normal")
        base_img = bake.decode_png(base.png) if base is not None and base.png is not None else None
        normal_img = None
        if normal is not None and normal.array is not None:
            normal_img = np.asarray(normal.array, np.float32)[..., :3]
        files["glb"] = bake.write_glb(
            Path(work_dir) / cfg.glb_name, payload.vertices, payload.faces.astype(np.int64),
            payload.uvs, base_img, normal_img if payload.uvs is not None else None, payload.transform,
        )
    return ExportResult(payload, files)
