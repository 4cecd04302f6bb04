"""Principled BSDF materials holding the backend's baked texture maps.

base_color -> Image Texture (sRGB) -> Base Color
normal -> Image Texture (Non-Color) -> Normal Map (tangent space, on the mesh's UV map) -> Normal
roughness_metallic -> Image Texture (Non-Color) -> Separate Color: G = roughness, B = metallic (glTF order)
"""

from __future__ import annotations

import logging
from pathlib import Path

import bpy
import numpy as np

from .mesh_io import UV_LAYER_NAME

log = logging.getLogger(__name__)

NODE_PREFIX = "DreamPolish "
"""Names of the nodes this module manages, so that a rebuild finds and replaces only its own."""


def load_image(role: str, path: Path, name: str) -> bpy.types.Image:
    """A Blender image for one cached texture map: a PNG file is loaded as is (it can be packed
    later); a float array (.npy, rows top to bottom) becomes a float image in memory."""
    if path.suffix == ".png":
        img = bpy.data.images.load(str(path), check_existing=False)
        img.name = name
    else:
        arr = np.asarray(np.load(path), dtype=np.float32)
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


def _set_colorspace(img: bpy.types.Image, role: str) -> None:
    # Base colour is sRGB colour; normal and roughness/metallic maps are data.
    if role != "base_color":
        img.colorspace_settings.name = "Non-Color"


def _node(nodes: bpy.types.Nodes, kind: str, label: str, location: tuple[float, float]) -> bpy.types.Node:
    node = nodes.new(kind)
    node.name = node.label = NODE_PREFIX + label
    node.location = location
    return node


def textured_material(name: str, images: dict[str, bpy.types.Image],
                      material: bpy.types.Material | None = None) -> bpy.types.Material:
    """Create (or rewire) a Principled BSDF material whose image texture nodes hold `images` by role."""
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

    uv = _node(nodes, "ShaderNodeUVMap", "UV", (-900, 0))
    uv.uv_map = UV_LAYER_NAME
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
        nmap.uv_map = UV_LAYER_NAME
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
    """Make `mat` the object's only material (a stage result replaces the previous look)."""
    obj.data.materials.clear()
    obj.data.materials.append(mat)


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
