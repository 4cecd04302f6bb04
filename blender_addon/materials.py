"""Principled BSDF materials holding the backend's baked texture maps, or a stage mesh's colours.

base_color -> Image Texture (sRGB) -> Base Color
normal -> Image Texture (Non-Color) -> Normal Map (tangent space, on the mesh's UV map) -> Normal
roughness_metallic -> Image Texture (Non-Color) -> Separate Color: G = roughness, B = metallic (glTF order)
colour attribute (before the texture stage) -> Color Attribute node -> Base Color
"""

from __future__ import annotations

import logging
from pathlib import Path

import bpy
import numpy as np

from .mesh_io import COLOR_ATTRIBUTE_NAME, UV_LAYER_NAME

log = logging.getLogger(__name__)

JOB_PROP = "dreampolish_job"
"""Custom property naming the job an object or material came from."""
NODE_PREFIX = "DreamPolish "
"""Names of the nodes this module manages, so that a rebuild finds and replaces only its own."""


def load_image(role: str, path: Path, name: str) -> bpy.types.Image:
    """A Blender image for one cached texture map, packed into the .blend at once: a PNG file as
    its bytes; a float array (.npy, rows top to bottom, e.g. the normal map) as a float image, which
    Blender packs losslessly as OpenEXR.

    Why packed, not saved as files beside the .blend: the maps must survive saving and reopening
    without Bake to Material, on this machine and on another. The cache folder they come from is
    the add-on's (it may be cleared, and it is not on the other machine); a float image made in
    memory is not a file at all and reopens empty. Packing works for a .blend never saved yet and
    travels with the one file the artist copies; files beside the .blend need a saved file first
    and must be copied along (Bake to Material > Save Beside .blend moves them out when wanted).
    """
    img = _image_from_cache(role, path, name)
    img.pack()
    return img


def _image_from_cache(role: str, path: Path, name: str) -> bpy.types.Image:
    if "<UDIM>" in path.name:  # UDIM tiles (protocol/udim.py): one tiled image of every tile's file
        first = sorted(path.parent.glob(path.name.replace("<UDIM>", "[0-9][0-9][0-9][0-9]")))[0]
        img = bpy.data.images.load(str(first), check_existing=False)
        img.source = "TILED"  # Blender finds the other tiles' files by the number in the name
        img.name = name
        _set_colorspace(img, role)
        return img
    if path.suffix == ".png":
        img = bpy.data.images.load(str(path), check_existing=False)
        img.name = name
    else:
        arr = np.asarray(np.load(path), dtype=np.float32)
        if role == "normal":
            arr = encode_normals(arr)
        h, w, c = arr.shape
        rgba = np.ones((h, w, 4), dtype=np.float32)
        rgba[:, :, :c] = arr
        if c == 1:
            rgba[:, :, 1:3] = arr
        img = bpy.data.images.new(name, w, h, alpha=c == 4, float_buffer=True)
        # Before the pixels: changing the colour space regenerates a generated image's buffer.
        _set_colorspace(img, role)
        # Texture rows run top to bottom on the wire; Blender's pixel rows start at the bottom.
        img.pixels.foreach_set(np.ascontiguousarray(rgba[::-1]).ravel())
        img.update()
        return img
    _set_colorspace(img, role)
    return img


def encode_normals(normals: np.ndarray) -> np.ndarray:
    """Signed tangent-space normals in [-1, 1] as the colours a Normal Map node decodes:
    c = 0.5 n + 0.5 (the inverse of the node's n = 2 c - 1; glTF 2.0's normalTexture uses the same
    encoding, so the GLB writer and this image agree)."""
    return 0.5 * normals + 0.5


def _set_colorspace(img: bpy.types.Image, role: str) -> None:
    # Base colour is sRGB colour; normal and roughness/metallic maps are data.
    if role != "base_color":
        img.colorspace_settings.name = "Non-Color"


def _node(nodes: bpy.types.Nodes, kind: str, label: str, location: tuple[float, float]) -> bpy.types.Node:
    node = nodes.new(kind)
    node.name = node.label = NODE_PREFIX + label
    node.location = location
    return node


def _principled(name: str, material: bpy.types.Material | None) -> tuple[bpy.types.Material, bpy.types.Node]:
    """The material (new, or the given one with this module's nodes removed) and its Principled BSDF."""
    mat = material or bpy.data.materials.new(name)
    if mat.node_tree is None:  # before Blender 5.0 a new material has no node tree until use_nodes
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    for node in [n for n in nodes if n.name.startswith(NODE_PREFIX)]:
        nodes.remove(node)
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        bsdf = nodes.new("ShaderNodeBsdfPrincipled")
    output = next((n for n in nodes if n.type == "OUTPUT_MATERIAL"), None)
    if output is None:
        output = nodes.new("ShaderNodeOutputMaterial")
        output.location = (300, 0)
    if not bsdf.outputs["BSDF"].links:
        links.new(bsdf.outputs["BSDF"], output.inputs["Surface"])
    return mat, bsdf


def color_attribute_material(name: str, material: bpy.types.Material | None = None,
                             attribute: str = COLOR_ATTRIBUTE_NAME) -> bpy.types.Material:
    """Create (or rewire) a material that shows the mesh's colour attribute as its base colour."""
    mat, bsdf = _principled(name, material)
    node = _node(mat.node_tree.nodes, "ShaderNodeVertexColor", "Color Attribute", (-400, 200))
    node.layer_name = attribute
    mat.node_tree.links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def textured_material(name: str, images: dict[str, bpy.types.Image],
                      material: bpy.types.Material | None = None,
                      uv_map: str = UV_LAYER_NAME) -> bpy.types.Material:
    """Create (or rewire) a Principled BSDF material whose image texture nodes hold `images` by role,
    sampled on the mesh's UV map `uv_map` (the one the textures were baked on)."""
    mat, bsdf = _principled(name, material)
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    uv = _node(nodes, "ShaderNodeUVMap", "UV", (-900, 0))
    uv.uv_map = uv_map
    if "base_color" in images:
        tex = _node(nodes, "ShaderNodeTexImage", "Base Color", (-500, 300))
        tex.image = images["base_color"]
        links.new(uv.outputs["UV"], tex.inputs["Vector"])
        links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    if "normal" in images:
        tex = _node(nodes, "ShaderNodeTexImage", "Normal", (-500, -300))
        tex.image = images["normal"]
        links.new(uv.outputs["UV"], tex.inputs["Vector"])
        nmap = _node(nodes, "ShaderNodeNormalMap", "Normal Map", (-200, -300))
        nmap.uv_map = uv_map
        links.new(tex.outputs["Color"], nmap.inputs["Color"])
        links.new(nmap.outputs["Normal"], bsdf.inputs["Normal"])
    if "roughness_metallic" in images:
        tex = _node(nodes, "ShaderNodeTexImage", "Roughness Metallic", (-500, 0))
        tex.image = images["roughness_metallic"]
        links.new(uv.outputs["UV"], tex.inputs["Vector"])
        sep = _node(nodes, "ShaderNodeSeparateColor", "Split RM", (-200, 0))
        links.new(tex.outputs["Color"], sep.inputs["Color"])
        links.new(sep.outputs["Green"], bsdf.inputs["Roughness"])
        links.new(sep.outputs["Blue"], bsdf.inputs["Metallic"])
    return mat


def material_images(mat: bpy.types.Material) -> list[bpy.types.Image]:
    if not mat or mat.node_tree is None:
        return []
    return [n.image for n in mat.node_tree.nodes if n.type == "TEX_IMAGE" and n.image is not None]


def assign_material(obj: bpy.types.Object, mat: bpy.types.Material) -> None:
    """Show `mat` on every face of `obj` (the baked textures cover the whole mesh). It takes the slot
    of an earlier DreamPolish material (one marked with JOB_PROP), else a new slot: the artist's
    own materials stay in their slots. A material it replaces is kept in the file."""
    slots = obj.data.materials
    index = next((i for i, m in enumerate(slots) if m == mat), None)
    if index is None:
        index = next((i for i, m in enumerate(slots) if m is not None and JOB_PROP in m), None)
        if index is None:
            slots.append(mat)
            index = len(slots) - 1
        else:
            _replace(slots, index, mat)
    polygons = obj.data.polygons
    polygons.foreach_set("material_index", np.full(len(polygons), index, dtype=np.int32))
    obj.active_material_index = index


def show_in_slot(obj: bpy.types.Object, mat: bpy.types.Material, slot: int) -> None:
    """Show `mat` on the faces of material slot `slot` only, in that slot's place: the faces of the
    other slots keep the artist's materials. The material the slot held is kept in the file. A slot
    the object no longer has (or -1) means every face (assign_material)."""
    slots = obj.data.materials
    if not 0 <= slot < len(slots):
        assign_material(obj, mat)
        return
    _replace(slots, slot, mat)
    obj.active_material_index = slot


def _replace(slots, index: int, mat: bpy.types.Material) -> None:
    """Put `mat` in slot `index`; the material it replaces gets a fake user, so that saving the file
    does not drop it: the artist can put it back from the material list."""
    old = slots[index]
    if old is not None and old != mat:
        old.use_fake_user = True
    slots[index] = mat


def bake_images(images: list[bpy.types.Image], save_dir: Path | None = None) -> int:
    """Make the images part of the .blend: pack them, or save them under `save_dir` with paths
    relative to the .blend. Returns how many images changed."""
    changed = 0
    for img in images:
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            path = save_dir / (bpy.path.clean_name(img.name) + (".exr" if img.is_float else ".png"))
            img.filepath_raw = str(path)
            img.file_format = "OPEN_EXR" if img.is_float else "PNG"
            img.save()
            if img.packed_file is not None:
                img.unpack(method="REMOVE")
            img.filepath = bpy.path.relpath(str(path))
            changed += 1
        elif img.packed_file is None:
            img.pack()
            changed += 1
    log.info("baked %d images into the file", changed)
    return changed
