"""MeshPayload <-> glTF 2.0 binary (.glb), with numpy, json and struct only.

The one place where Blender's Z-up world meets glTF's Y-up, for the add-on and
the backend alike (the backend's mesh files import `blender_to_gltf` and
`gltf_to_blender` from here): positions and normals go through BLENDER_TO_GLTF
= (x, y, z) -> (x, z, -y) on write and its inverse on read, and the object
transform T becomes C T C^-1. UV V is flipped (glTF's image origin is the
top-left corner, Blender's the bottom-left). This is also the one .glb writer.

Vertex colours (COLOR_0) are linear RGB, as the glTF 2.0 specification
(section 3.7.2.1) and the protocol's MeshPayload both define them: they are
written and read as they are.

Per-corner UVs (MeshPayload.uvs, (M,3,2)) are written by giving every face
corner its own vertex, as glTF has no per-corner attributes. With a normal map,
UVs and normals, TANGENT holds the tangent frame the normal map was baked in. Textures: PNG
base colour -> baseColorTexture, normal -> normalTexture, roughness_metallic
(G roughness, B metallic, as glTF packs them) -> metallicRoughnessTexture.
A texture sent as a float array (the backend sends the normal map so) is written as a 16-bit PNG
(`texture_png`): a normal map as glTF 2.0 (3.9.3) stores one, tangent space with +Y along +v, each
unit vector n as 0.5 n + 0.5; a base colour's linear values encoded sRGB; roughness_metallic as it is.
Row 0 of an array is the top row of the image (v = 1 in Blender's UVs), as in a PNG. A normal map
on a mesh without UVs has no tangent frame to live in and is left out (logged).
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from typing import Any

import numpy as np

from .colour import linear_to_srgb
from .errors import DecodeError, ValidationError
from .scene import MeshPayload, TexturePayload

log = logging.getLogger(__name__)

GLB_MAGIC = b"glTF"
CHUNK_JSON = 0x4E4F534A
CHUNK_BIN = 0x004E4942
FLOAT, UBYTE, USHORT, UINT = 5126, 5121, 5123, 5125
COMPONENT_DTYPES = {
    5120: np.int8,
    UBYTE: np.uint8,
    5122: np.int16,
    USHORT: np.uint16,
    UINT: np.uint32,
    FLOAT: np.float32,
}
TYPE_SIZES = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963

BLENDER_TO_GLTF = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], np.float32)
"""(x, y, z) Blender Z-up -> (x, z, -y) glTF Y-up, as a 4x4 acting on column vectors."""
GLTF_TO_BLENDER = BLENDER_TO_GLTF.T.copy()


def blender_to_gltf(points: np.ndarray) -> np.ndarray:
    """Points or directions [..., 3] from Blender's Z-up world to glTF's Y-up: (x, y, z) -> (x, z, -y)."""
    return (np.asarray(points) @ BLENDER_TO_GLTF[:3, :3].T).astype(np.float32)


def gltf_to_blender(points: np.ndarray) -> np.ndarray:
    """Points or directions [..., 3] from glTF's Y-up to Blender's Z-up: (x, y, z) -> (x, -z, y)."""
    return (np.asarray(points) @ GLTF_TO_BLENDER[:3, :3].T).astype(np.float32)


class _GlbWriter:
    def __init__(self) -> None:
        self.bin = bytearray()
        self.gltf: dict[str, Any] = {
            "asset": {"version": "2.0", "generator": "DreamPolish for Blender"},
            "buffers": [],
            "bufferViews": [],
            "accessors": [],
        }

    def view(self, data: bytes, target: int | None = None) -> int:
        self.bin.extend(b"\x00" * (-len(self.bin) % 4))  # every view starts 4-byte aligned
        view: dict[str, Any] = {"buffer": 0, "byteOffset": len(self.bin), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        self.bin.extend(data)
        self.gltf["bufferViews"].append(view)
        return len(self.gltf["bufferViews"]) - 1

    def accessor(self, a: np.ndarray, kind: str, component: int, target: int, bounds: bool = False) -> int:
        a = np.ascontiguousarray(a, dtype=COMPONENT_DTYPES[component])
        acc: dict[str, Any] = {
            "bufferView": self.view(a.tobytes(), target),
            "componentType": component,
            "count": int(a.shape[0]),
            "type": kind,
        }
        if bounds and a.shape[0]:
            acc["min"] = a.min(axis=0).tolist()
            acc["max"] = a.max(axis=0).tolist()
        self.gltf["accessors"].append(acc)
        return len(self.gltf["accessors"]) - 1

    def image(self, png: bytes) -> int:
        self.gltf.setdefault("images", []).append({"bufferView": self.view(png), "mimeType": "image/png"})
        self.gltf.setdefault(
            "samplers", [{"magFilter": 9729, "minFilter": 9987, "wrapS": 10497, "wrapT": 10497}]
        )
        self.gltf.setdefault("textures", []).append({"sampler": 0, "source": len(self.gltf["images"]) - 1})
        return len(self.gltf["textures"]) - 1

    def glb(self) -> bytes:
        self.gltf["buffers"] = [{"byteLength": len(self.bin)}]
        js = json.dumps(self.gltf, separators=(",", ":")).encode()
        js += b" " * (-len(js) % 4)
        binary = bytes(self.bin) + b"\x00" * (-len(self.bin) % 4)
        total = 12 + 8 + len(js) + 8 + len(binary)
        return (
            struct.pack("<4sII", GLB_MAGIC, 2, total)
            + struct.pack("<II", len(js), CHUNK_JSON)
            + js
            + struct.pack("<II", len(binary), CHUNK_BIN)
            + binary
        )


def corner_tangents(positions: np.ndarray, uvs: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """glTF TANGENT [C,4] (glTF axes) of split corners (every 3 consecutive corners one triangle; positions,
    Blender-convention UVs (v up) and unit normals in Blender's axes): xyz the direction of +u on the face,
    made orthogonal to the corner's normal; w = +1 or -1 so that cross(normal, xyz) * w points along +v, the
    normal texture's +Y (glTF 2.0, 3.7.2.1: "bitangent = cross(normal.xyz, tangent.xyz) * tangent.w"). That
    is the frame backend/bake.py's bake_normal_map expresses the map in."""
    p = positions.astype(np.float64).reshape(-1, 3, 3)
    t = uvs.astype(np.float64).reshape(-1, 3, 2)
    n = normals.astype(np.float64).reshape(-1, 3, 3)
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    d1, d2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    det = np.where(np.abs(det) < 1e-20, 1e-20, det)[:, None]
    tangent = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) / det
    bitangent = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) / det
    tan = np.repeat(tangent[:, None], 3, 1)
    tan = tan - n * np.sum(tan * n, -1, keepdims=True)
    # A face without a usable UV direction gets any tangent perpendicular to its normal.
    fallback = np.cross(n, np.where(np.abs(n[..., :1]) < 0.9, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]))
    length = np.linalg.norm(tan, axis=-1, keepdims=True)
    tan = np.where(length > 1e-12, tan, fallback)
    tan /= np.maximum(np.linalg.norm(tan, axis=-1, keepdims=True), 1e-12)
    sign = np.sign(np.sum(np.cross(n, tan) * bitangent[:, None], -1, keepdims=True))
    sign = np.where(sign == 0, 1.0, sign)
    out = np.concatenate([blender_to_gltf(tan.reshape(-1, 3)), sign.reshape(-1, 1)], -1)
    return out.astype(np.float32)


PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
"""PNG colour type for each channel count: grey, grey + alpha, RGB, RGBA (PNG specification, 11.2.2)."""


def png_file(pixels: np.ndarray) -> bytes:
    """A PNG file of uint8 or uint16 pixels [H,W,C] (C 1-4), row 0 at the top. Every row has the Up filter
    (PNG specification, 9.2: each byte minus the byte above it, modulo 256), which a smooth map such as a
    normal map compresses far better with (about 4x at 16 bits)."""
    height, width, channels = pixels.shape
    depth = 16 if pixels.dtype == np.uint16 else 8
    rows = np.ascontiguousarray(pixels.astype(">u2" if depth == 16 else np.uint8)).reshape(height, -1).view(np.uint8)
    above = np.concatenate([np.zeros_like(rows[:1]), rows[:-1]])
    raw = np.concatenate([np.full((height, 1), 2, np.uint8), rows - above], axis=1)  # uint8: wraps modulo 256

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, depth, PNG_COLOUR_TYPES[channels], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + chunk(b"IEND", b""))


def texture_png(tex: TexturePayload) -> bytes:
    """The texture as the PNG a .glb holds: its own PNG, or its float array as a 16-bit PNG in glTF's
    encoding for its role (a normal map's unit vectors as 0.5 n + 0.5, a base colour sRGB-encoded)."""
    if tex.png is not None:
        return bytes(tex.png)
    values = np.asarray(tex.array, np.float32)
    if tex.role == "normal":
        values = values[..., :3] * 0.5 + 0.5
    elif tex.role == "base_color":
        values = values.copy()
        values[..., :3] = linear_to_srgb(values[..., :3])
    return png_file(np.round(np.clip(values, 0.0, 1.0) * 65535.0).astype(np.uint16))


def mesh_to_glb(mesh: MeshPayload, name: str = "DreamPolish") -> bytes:
    """One mesh, one node (carrying mesh.transform), one material with the textures as PNGs; each level of
    detail (mesh.lods) a node of its own beside it, `<name>_LOD1` ..., with the same transform and its own
    mesh and material. A polygon mesh is written as its triangles (MeshPayload.faces, the polygons' fans)."""
    mesh.validate(require_faces=False)
    w = _GlbWriter()
    w.gltf["materials"], w.gltf["meshes"], w.gltf["nodes"] = [], [], []
    for i, part in enumerate([mesh, *mesh.lods]):
        label = name if i == 0 else f"{name}_LOD{i}"
        node: dict[str, Any] = {"name": label, "mesh": _add_mesh(w, part, label)}
        if not np.allclose(mesh.transform, np.eye(4)):
            t = BLENDER_TO_GLTF @ mesh.transform.astype(np.float32) @ GLTF_TO_BLENDER
            node["matrix"] = t.T.reshape(-1).tolist()  # glTF matrices are column-major
        w.gltf["nodes"].append(node)
    w.gltf["scenes"] = [{"nodes": list(range(len(w.gltf["nodes"])))}]
    w.gltf["scene"] = 0
    return w.glb()


def _add_mesh(w: _GlbWriter, mesh: MeshPayload, name: str) -> int:
    """Write one mesh's primitive and its material into `w`; returns the mesh's index."""
    v, f = mesh.vertices, mesh.faces.astype(np.uint32)
    if mesh.uvs is not None:
        corners = f.reshape(-1)  # split: one vertex per face corner
        positions = v[corners]
        normals = mesh.normals[corners] if mesh.normals is not None else None
        colors = mesh.colors[corners] if mesh.colors is not None else None
        uvs = mesh.uvs.reshape(-1, 2).copy()
        indices = np.arange(corners.shape[0], dtype=np.uint32)
    else:
        positions, normals, colors, uvs, indices = v, mesh.normals, mesh.colors, None, f.reshape(-1)
    attributes = {"POSITION": w.accessor(blender_to_gltf(positions), "VEC3", FLOAT, ARRAY_BUFFER, bounds=True)}
    if normals is not None:
        attributes["NORMAL"] = w.accessor(blender_to_gltf(normals), "VEC3", FLOAT, ARRAY_BUFFER)
    if uvs is not None and normals is not None and mesh.texture("normal") is not None:
        # glTF ignores TANGENT without NORMAL; with both, viewers use this frame rather than generating one.
        attributes["TANGENT"] = w.accessor(corner_tangents(positions, uvs, normals), "VEC4", FLOAT, ARRAY_BUFFER)
    if uvs is not None:
        uvs[:, 1] = 1.0 - uvs[:, 1]
        attributes["TEXCOORD_0"] = w.accessor(uvs, "VEC2", FLOAT, ARRAY_BUFFER)
    if colors is not None:
        attributes["COLOR_0"] = w.accessor(colors, f"VEC{colors.shape[1]}", FLOAT, ARRAY_BUFFER)
    primitive: dict[str, Any] = {
        "attributes": attributes,
        "indices": w.accessor(indices, "SCALAR", UINT, ELEMENT_ARRAY_BUFFER),
        "mode": 4,
    }
    pbr: dict[str, Any] = {
        "baseColorFactor": [1.0, 1.0, 1.0, 1.0],
        "metallicFactor": 0.0,
        "roughnessFactor": 0.8,
    }
    material: dict[str, Any] = {"name": f"{name}_material", "pbrMetallicRoughness": pbr}
    for tex in mesh.textures:
        if tex.tile:  # glTF has no UDIM tiles (a texture covers the 0-1 square, repeated): mesh and UVs only
            log.info("the UDIM tile %d's %s map is left out of the .glb", tex.tile, tex.role)
            continue
        if tex.role == "normal" and uvs is None:
            log.info("the normal map is left out: a mesh without UVs has no tangent frame for it")
            continue
        index = w.image(texture_png(tex))
        if tex.role == "base_color":
            pbr["baseColorTexture"] = {"index": index}
        elif tex.role == "normal":
            material["normalTexture"] = {"index": index}
        elif tex.role == "roughness_metallic":
            pbr["metallicRoughnessTexture"] = {"index": index}
            pbr["metallicFactor"] = pbr["roughnessFactor"] = 1.0
    w.gltf["materials"].append(material)
    primitive["material"] = len(w.gltf["materials"]) - 1
    w.gltf["meshes"].append({"name": name, "primitives": [primitive]})
    return len(w.gltf["meshes"]) - 1


# --- reading -------------------------------------------------------------------------------------


def _parse_glb(data: bytes) -> tuple[dict[str, Any], memoryview]:
    view = memoryview(data)
    if len(data) < 20:
        raise DecodeError("file is too short to be a .glb")
    magic, version, total = struct.unpack_from("<4sII", view, 0)
    if magic != GLB_MAGIC or version != 2:
        raise DecodeError("not a glTF 2.0 binary (.glb) file")
    pos, gltf, binary = 12, None, memoryview(b"")
    while pos + 8 <= min(total, len(data)):
        length, kind = struct.unpack_from("<II", view, pos)
        chunk = view[pos + 8 : pos + 8 + length]
        if kind == CHUNK_JSON:
            gltf = json.loads(bytes(chunk))
        elif kind == CHUNK_BIN:
            binary = chunk
        pos += 8 + length
    if not isinstance(gltf, dict):
        raise DecodeError(".glb has no JSON chunk")
    unsupported = set(gltf.get("extensionsRequired", [])) - {"KHR_materials_emissive_strength"}
    if unsupported:
        raise DecodeError(f".glb needs extensions this reader does not support: {sorted(unsupported)}")
    return gltf, binary


def _view_bytes(gltf: dict[str, Any], binary: memoryview, index: int) -> tuple[memoryview, int | None]:
    bv = gltf["bufferViews"][index]
    if bv.get("buffer", 0) != 0:
        raise DecodeError("only the .glb's own binary buffer is supported")
    start = bv.get("byteOffset", 0)
    return binary[start : start + bv["byteLength"]], bv.get("byteStride")


def _accessor(gltf: dict[str, Any], binary: memoryview, index: int) -> np.ndarray:
    acc = gltf["accessors"][index]
    if "sparse" in acc or "bufferView" not in acc:
        raise DecodeError("sparse or buffer-less accessors are not supported")
    dtype = np.dtype(COMPONENT_DTYPES[acc["componentType"]])
    width = TYPE_SIZES[acc["type"]]
    data, stride = _view_bytes(gltf, binary, acc["bufferView"])
    offset, count = acc.get("byteOffset", 0), acc["count"]
    elem = dtype.itemsize * width
    stride = stride or elem
    if count and offset + stride * (count - 1) + elem > data.nbytes:
        raise DecodeError(f"accessor {index} runs past its buffer view")
    a = np.ndarray((count, width), dtype=dtype, buffer=data, offset=offset, strides=(stride, dtype.itemsize))
    a = a.copy()
    if acc.get("normalized") and dtype.kind in "ui":
        a = a.astype(np.float32) / np.iinfo(dtype).max
    return a.reshape(count) if width == 1 else a


def glb_to_mesh(data: bytes) -> MeshPayload:
    """Read the first mesh of a .glb (all its triangle primitives, merged) into Blender's Z-up convention.
    Raises DecodeError for a file it cannot read, ValidationError for a mesh it cannot use."""
    try:
        return _glb_to_mesh(data)
    except (KeyError, IndexError, TypeError, ValueError, struct.error) as exc:
        if isinstance(exc, ValidationError):
            raise
        raise DecodeError(f"cannot read the .glb: {type(exc).__name__}: {exc}") from exc


def _glb_to_mesh(data: bytes) -> MeshPayload:
    gltf, binary = _parse_glb(data)
    if not gltf.get("meshes"):
        raise ValidationError(".glb holds no mesh")
    vertices, faces, uvs, normals, colors = [], [], [], [], []
    base = 0
    primitives = gltf["meshes"][0]["primitives"]
    has_uv = all("TEXCOORD_0" in p["attributes"] for p in primitives)
    has_normals = all("NORMAL" in p["attributes"] for p in primitives)
    has_colors = all("COLOR_0" in p["attributes"] for p in primitives)
    for prim in primitives:
        if prim.get("mode", 4) != 4:
            raise ValidationError("only triangle primitives are supported")
        attrs = prim["attributes"]
        pos = _accessor(gltf, binary, attrs["POSITION"]).astype(np.float32)
        idx = (
            _accessor(gltf, binary, prim["indices"]).astype(np.uint32)
            if "indices" in prim
            else np.arange(len(pos), dtype=np.uint32)
        )
        if idx.size % 3:
            raise ValidationError("triangle indices are not a multiple of 3")
        tri = idx.reshape(-1, 3)
        vertices.append(gltf_to_blender(pos))
        faces.append(tri + base)
        if has_uv:
            uv = _accessor(gltf, binary, attrs["TEXCOORD_0"]).astype(np.float32)
            uv[:, 1] = 1.0 - uv[:, 1]
            uvs.append(uv[tri])
        if has_normals:
            normals.append(gltf_to_blender(_accessor(gltf, binary, attrs["NORMAL"]).astype(np.float32)))
        if has_colors:
            colors.append(_accessor(gltf, binary, attrs["COLOR_0"]).astype(np.float32))
        base += len(pos)
    mesh = MeshPayload(
        vertices=np.concatenate(vertices),
        faces=np.concatenate(faces).astype(np.uint32),
        uvs=np.concatenate(uvs) if has_uv else None,
        normals=np.concatenate(normals) if has_normals else None,
        colors=np.concatenate(colors) if has_colors else None,
        textures=_read_textures(gltf, binary, primitives[0].get("material")),
    )
    node = next((n for n in gltf.get("nodes", []) if n.get("mesh") == 0), None)
    if node is not None and "matrix" in node:
        t = np.array(node["matrix"], np.float32).reshape(4, 4).T
        mesh.transform = (GLTF_TO_BLENDER @ t @ BLENDER_TO_GLTF).astype(np.float32)
    return mesh.validate()


def _read_textures(gltf: dict[str, Any], binary: memoryview, material: int | None) -> list[TexturePayload]:
    if material is None:
        return []
    mat = gltf["materials"][material]
    pbr = mat.get("pbrMetallicRoughness", {})
    slots = [
        ("base_color", pbr.get("baseColorTexture")),
        ("normal", mat.get("normalTexture")),
        ("roughness_metallic", pbr.get("metallicRoughnessTexture")),
    ]
    out = []
    for role, ref in slots:
        if ref is None:
            continue
        image = gltf["images"][gltf["textures"][ref["index"]]["source"]]
        if image.get("mimeType") != "image/png" or "bufferView" not in image:
            log.info("texture %s is not an embedded PNG; left out", role)
            continue
        out.append(TexturePayload(role=role, png=bytes(_view_bytes(gltf, binary, image["bufferView"])[0])))
    return out
