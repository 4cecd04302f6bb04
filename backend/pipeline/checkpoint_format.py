"""Meshes and payloads as checkpoint entries: plain tensors and values, so that CheckpointStore can load
them with torch.load(weights_only=True) (no pickled classes)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from dreampolish.protocol.scene import MeshPayload, TexturePayload
from torch import Tensor

from ..geometry.mesh import TriMesh


def mesh_to_ckpt(mesh: TriMesh) -> dict[str, Any]:
    m = mesh.detach().to("cpu")
    return {"vertices": m.vertices, "faces": m.faces, "uvs": m.uvs, "vertex_colors": m.vertex_colors}


def mesh_from_ckpt(d: dict[str, Any], device: torch.device | str) -> TriMesh:
    return TriMesh(d["vertices"], d["faces"], d["uvs"], d["vertex_colors"]).to(device)


def payload_to_ckpt(payload: MeshPayload) -> dict[str, Any]:
    def t(a: np.ndarray | None) -> Tensor | None:
        # torch has no uint32 tensors that every version saves: faces travel as int64.
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a).astype(
            np.int64 if a.dtype == np.uint32 else a.dtype))

    return {
        "vertices": t(payload.vertices), "faces": t(payload.faces), "uvs": t(payload.uvs),
        "normals": t(payload.normals), "colors": t(payload.colors), "transform": t(payload.transform),
        "textures": [{"role": x.role, "png": x.png, "array": t(x.array)} for x in payload.textures],
        "face_sizes": t(payload.face_sizes), "face_corners": t(payload.face_corners),
        "lods": [payload_to_ckpt(lod) for lod in payload.lods],
    }


def payload_from_ckpt(d: dict[str, Any]) -> MeshPayload:
    def a(x: Tensor | None, dtype: Any = None) -> np.ndarray | None:
        return None if x is None else np.ascontiguousarray(x.cpu().numpy().astype(dtype or x.cpu().numpy().dtype))

    return MeshPayload(
        vertices=a(d["vertices"]), faces=a(d["faces"], np.uint32), uvs=a(d["uvs"]), normals=a(d["normals"]),
        colors=a(d["colors"]), transform=a(d["transform"]),
        textures=[TexturePayload(role=x["role"], png=x["png"], array=a(x["array"])) for x in d["textures"]],
        face_sizes=a(d.get("face_sizes"), np.uint32), face_corners=a(d.get("face_corners"), np.uint32),
        lods=[payload_from_ckpt(lod) for lod in d.get("lods", [])],
    )
