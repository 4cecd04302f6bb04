"""Refine Selected on part of an object: the mask is a vertex group of the selected mesh (assigned in Edit
Mode, or painted in Weight Paint), sent as one weight per vertex with the mesh, with a feathered border and
the region's own prompt (protocol/refine_mask.py). A masked refine sends the object's own base-colour image too
(Texture Only needs one; Geometry + Texture sends it when there is one): the backend repaints it inside the
mask and returns every other texel as it was.

Every check here runs before anything is sent and changes nothing of the object: a group that is gone or
names no vertex, a mask on an object that is not a mesh, a border wider than the object (validate_spec), a
masked Texture Only refine of an object without an image texture on its base colour."""

from __future__ import annotations

import bpy
import numpy as np

from .protocol.colour import linear_to_srgb
from .protocol.errors import ValidationError
from .protocol.gltf import png_file
from .protocol.image import PNG_SIGNATURE
from .protocol.refine_mask import RefineMask
from .protocol.scene import MeshPayload, TexturePayload


def draw(layout, context) -> None:
    """The mask's rows of the Refine panel: the vertex group, and with one its border and prompts."""
    s = context.scene.dreampolish
    obj = context.active_object
    if obj is None or obj.type != "MESH":
        layout.label(text="Mask: select a mesh (a vertex group of it)", icon="INFO")
        return
    layout.prop_search(s, "mask_group", obj, "vertex_groups", text="Mask")
    if s.mask_group:
        col = layout.column(align=True)
        col.prop(s, "mask_feather")
        col.prop(s, "mask_prompt")
        col.prop(s, "mask_negative_prompt")


def group_weights(obj: bpy.types.Object, depsgraph, name: str) -> np.ndarray:
    """float32 [V]: the weight of every vertex of the object's mesh as sent (modifiers evaluated, the order
    mesh_io.payload_from_object sends) in vertex group `name`; 0 where a vertex is not in it."""
    group = obj.vertex_groups.get(name)
    if group is None:
        raise ValidationError(f"{obj.name!r} has no vertex group {name!r} (renamed or deleted?): pick the mask's "
                              "group again in the Refine panel, or clear Mask")
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        weights = np.zeros(len(mesh.vertices), np.float32)
        index = group.index
        for v in mesh.vertices:
            for g in v.groups:
                if g.group == index:
                    weights[v.index] = g.weight
    finally:
        evaluated.to_mesh_clear()
    if not np.any(weights > 0):
        raise ValidationError(f"vertex group {name!r} of {obj.name!r} names no vertex with a weight above 0: assign "
                              "vertices to it (Edit Mode, Object Data > Vertex Groups > Assign) or paint it in "
                              "Weight Paint, then refine")
    return weights


def base_color_image(obj: bpy.types.Object) -> bpy.types.Image | None:
    """The image of the Image Texture node that feeds the Principled BSDF's Base Color of the object's active
    material, or None."""
    mat = obj.active_material
    if mat is None or not mat.use_nodes or mat.node_tree is None:
        return None
    for node in mat.node_tree.nodes:
        if node.type == "BSDF_PRINCIPLED":
            links = node.inputs["Base Color"].links
            if links and links[0].from_node.type == "TEX_IMAGE" and links[0].from_node.image is not None:
                return links[0].from_node.image
    return None


def image_texture(image: bpy.types.Image) -> TexturePayload:
    """The image's texels as a PNG, row 0 at the top, for the backend to repaint inside the mask and return
    unchanged outside it.

    An image that is a PNG file as Blender loaded it (packed, or on disk; not painted since) goes as the file's
    own bytes: every sample as stored, at its bit depth. That matters for 16 bits: Blender holds a 16-bit PNG as
    scene-linear floats (it converts the file's sRGB samples on loading), from which the file's samples do not
    come back exactly. Any other image goes as its pixels: an 8-bit one as its bytes, unchanged; a float one
    (scene linear) encoded to sRGB (unless it is data, Non-Color) as a 16-bit PNG."""
    w, h = image.size
    if w == 0 or h == 0:
        raise ValidationError(f"image {image.name!r} has no pixels (a missing file?): reload it, or refine without "
                              "a mask")
    own = _png_file_bytes(image)
    if own is not None:
        return TexturePayload("base_color", png=own)
    pixels = np.empty(w * h * 4, np.float32)
    image.pixels.foreach_get(pixels)
    rgb = pixels.reshape(h, w, 4)[::-1, :, :3]
    if not image.is_float:
        rgb8 = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
        return TexturePayload("base_color", png=png_file(np.ascontiguousarray(rgb8)))
    if not image.colorspace_settings.is_data:
        rgb = linear_to_srgb(rgb)
    rgb16 = np.clip(np.round(rgb * 65535.0), 0, 65535).astype(np.uint16)
    return TexturePayload("base_color", png=png_file(np.ascontiguousarray(rgb16)))


def _png_file_bytes(image: bpy.types.Image) -> bytes | None:
    """The PNG file the image was loaded from, when its pixels are still that file's (else None)."""
    if image.source != "FILE" or image.is_dirty or image.file_format != "PNG":
        return None
    if image.packed_file is not None:
        data = bytes(image.packed_file.data)
    else:
        try:
            with open(bpy.path.abspath(image.filepath, library=image.library), "rb") as f:
                data = f.read()
        except OSError:
            return None
    return data if data[:8] == PNG_SIGNATURE else None


def request_mask(context, obj: bpy.types.Object, mesh: MeshPayload, mode: str) -> RefineMask | None:
    """The panel's mask for a refine of `obj` sent as `mesh` (None without one); a masked Texture Only refine
    gets the object's base-colour image added to `mesh`. ValidationError says what is wrong."""
    s = context.scene.dreampolish
    if not s.mask_group:
        return None
    if obj is None or obj.type != "MESH":
        raise ValidationError("a mask is a vertex group of a mesh: select the mesh to refine, or clear Mask")
    weights = group_weights(obj, context.evaluated_depsgraph_get(), s.mask_group)
    image = base_color_image(obj) if mesh.uvs is not None else None
    if mode == "texture" and image is None:
        raise ValidationError(f"a masked Texture Only refine repaints {obj.name!r}'s texture inside the mask: "
                              "give its material an Image Texture on Base Color, or use Geometry + Texture")
    if image is not None:  # a masked geometry refine keeps the texture outside the mask too, when there is one
        mesh.textures = [t for t in mesh.textures if t.role != "base_color"] + [image_texture(image)]
    return RefineMask(weights, feather=float(s.mask_feather), prompt=s.mask_prompt,
                      negative_prompt=s.mask_negative_prompt)
