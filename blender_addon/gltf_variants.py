"""The texture sets as data of Blender's own glTF exporter, so that File > Export > glTF 2.0 (and Export GLB)
writes them as KHR_materials_variants.

What the bundled exporter reads (io_scene_gltf2, the same in Blender 5.0 and 5.3: blender/exp/primitives.py,
`__gather_extensions`; the properties are defined in blender/com/gltf2_blender_ui.py, `variant_register`):
- its add-on preference `KHR_materials_variants_ui` ("Material Variants" in the glTF add-on's preferences). It
  is the exporter's only switch for variants (there is no export option for them), and turning it on is what
  registers the two properties below; while it is off the exporter writes no variant at all;
- `bpy.data.scenes[0].gltf2_KHR_materials_variants_variants`: the file's variants, each a name and its
  `variant_idx` (its index in that list; the exporter looks a variant up by it). Always the first scene's;
- `Mesh.gltf2_variant_mesh_data`: per (material slot index, material), the variants that material stands for on
  the slot's primitive. The slot's current material is the primitive's default material.

The add-on keeps `Mesh.gltf2_variant_default_materials` out of it: the exporter puts those materials back into
the slots before every export, which would change what the artist shows.

The entries and variants this module makes carry the custom property TAG, so that a rewrite replaces only them
and leaves variants the artist (or glTF import) made alone. A variant is the file's, found by its name: objects
whose sets have the same name switch together in a viewer, as glTF variants mean ("the red one").
"""

from __future__ import annotations

import logging

import bpy

log = logging.getLogger(__name__)

GLTF_ADDON = "io_scene_gltf2"
PREFERENCE = "KHR_materials_variants_ui"
VARIANTS = "gltf2_KHR_materials_variants_variants"
MESH_DATA = "gltf2_variant_mesh_data"
TAG = "dreampolish_texture_set"
"""Custom property on the variants and mesh entries this module made."""

SetsOfMesh = dict[bpy.types.Mesh, tuple[int, list[tuple[bpy.types.Material, str]]]]
"""mesh -> (its material slot showing texture sets, [(set material, variant name)] in set order)."""


def enable() -> bool:
    """Turn on the glTF exporter's Material Variants (which registers its variant properties). False when
    Blender's glTF add-on is not enabled: then there is no glTF exporter to write for."""
    addon = bpy.context.preferences.addons.get(GLTF_ADDON)
    if addon is None:
        return False
    if not getattr(addon.preferences, PREFERENCE):
        setattr(addon.preferences, PREFERENCE, True)
        log.info("turned on the glTF add-on's Material Variants, so that its exporter writes the texture sets")
    return registered()


def registered() -> bool:
    """The glTF exporter's variant properties exist (its Material Variants preference is on)."""
    return hasattr(bpy.types.Scene, VARIANTS) and hasattr(bpy.types.Mesh, MESH_DATA)


def write(sets: SetsOfMesh) -> None:
    """Make the exporter's variant data say `sets` and nothing else of this add-on's: every mesh's entries made
    here before are replaced (a set removed, or a mesh that shows none now, loses them), and variants made here
    that no entry names any more are removed. Turns Material Variants on when there are sets to write."""
    if sets:
        if not enable():
            log.warning("Blender's glTF add-on is not enabled: the texture sets are not written as glTF variants")
            return
    elif not registered():
        return
    variants = getattr(bpy.data.scenes[0], VARIANTS)
    for mesh in bpy.data.meshes:
        entries = getattr(mesh, MESH_DATA)
        for i in reversed(range(len(entries))):
            if entries[i].get(TAG):
                entries.remove(i)
    for mesh, (slot, named) in sets.items():
        entries = getattr(mesh, MESH_DATA)
        for material, name in named:
            entry = entries.add()
            entry[TAG] = True
            entry.material_slot_index = slot
            entry.material = material
            entry.variants.add().variant.variant_idx = _variant_index(variants, name)
    _remove_unused(variants)


def _variant_index(variants, name: str) -> int:
    """The index of the file's variant called `name`, made when there is none."""
    for i, variant in enumerate(variants):
        if variant.name == name:
            return i
    variant = variants.add()
    variant[TAG] = True
    # variant_idx first: Blender 5.3 makes a new name unique against the variants other than variant_idx's
    variant.variant_idx = len(variants) - 1
    variant.name = name
    return variant.variant_idx


def _remove_unused(variants) -> None:
    """Remove the variants this module made that no mesh entry names, renumbering the others and every
    mesh's references to them as the glTF add-on's own Remove Variant does (SCENE_OT_gltf2_variant_remove)."""
    used = {v.variant.variant_idx for mesh in bpy.data.meshes for e in getattr(mesh, MESH_DATA) for v in e.variants}
    for index in reversed(range(len(variants))):
        if not variants[index].get(TAG) or index in used:
            continue
        variants.remove(index)
        for later in variants[index:]:
            later.variant_idx -= 1
        for mesh in bpy.data.meshes:
            for entry in getattr(mesh, MESH_DATA):
                for v in entry.variants:
                    if v.variant.variant_idx > index:
                        v.variant.variant_idx -= 1
    scene = bpy.data.scenes[0]
    scene.gltf2_active_variant = min(scene.gltf2_active_variant, max(len(variants) - 1, 0))
