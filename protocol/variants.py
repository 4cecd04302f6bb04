"""Texture sets: N texture-only refines of one mesh (seeds, or prompts), each a texture set on the same
topology and UVs, and one .glb that holds them all as KHR_materials_variants.

A texture-only job returns the input's own vertices, faces and UVs exactly (protocol/README.md, mode
`texture`), so N of them differ only in their maps: `texture_set_specs` makes the N requests, and
`texture_sets_glb` writes the first result's mesh once with one material per set, switchable in any viewer
that reads KHR_materials_variants (the Khronos extension: a variant names a material for each primitive).
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

from .errors import ValidationError
from .gltf import _GlbWriter, _parse_glb, mesh_to_glb, texture_png
from .job import SEED_LIMIT, JobSpec, check_seed
from .scene import MeshPayload

MAX_TEXTURE_SETS = 8
"""Most texture sets one request fans out to (each a job of its own)."""

VARIANTS_EXTENSION = "KHR_materials_variants"


def texture_set_specs(spec: JobSpec, count: int, prompts: list[str] | None = None) -> list[JobSpec]:
    """`count` texture-only requests of spec's input_mesh: set i has seed spec.seed + i (modulo SEED_LIMIT) and,
    given `prompts`, prompt prompts[i]. Set 0 is spec itself (its seed and prompt)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 2 <= count <= MAX_TEXTURE_SETS:
        raise ValidationError(f"texture sets: a count in [2, {MAX_TEXTURE_SETS}], got {count!r}")
    if spec.mode != "texture" or spec.input_mesh is None:
        raise ValidationError("texture sets are texture-only refines of a mesh you send: mode 'texture' and "
                              "input_mesh (select a mesh, or pass --mesh)")
    if prompts is not None and len(prompts) != count:
        raise ValidationError(f"texture sets: {len(prompts)} prompts for {count} sets; give one per set")
    seed = check_seed(spec.seed)
    return [replace(spec, seed=(seed + i) % SEED_LIMIT, prompt=spec.prompt if prompts is None else prompts[i],
                    options=dict(spec.options), cameras=list(spec.cameras)) for i in range(count)]


def check_same_layout(results: list[MeshPayload]) -> None:
    """The sets share one mesh: same vertices, faces and UVs, bit for bit (ValidationError otherwise)."""
    first = results[0]
    for i, other in enumerate(results[1:], 1):
        same = (other.vertices.shape == first.vertices.shape and other.faces.shape == first.faces.shape
                and (other.vertices == first.vertices).all() and (other.faces == first.faces).all()
                and (first.uvs is None) == (other.uvs is None)
                and (first.uvs is None or (other.uvs == first.uvs).all()))
        if not same:
            raise ValidationError(f"texture set {i} is not on the same mesh and UVs as set 0")


def texture_sets_glb(results: list[MeshPayload], names: list[str], name: str = "DreamPolish") -> bytes:
    """One .glb: results[0]'s mesh, with one material per result (its maps) and a KHR_materials_variants
    variant per material, named `names`; the first set is the default material."""
    if len(results) != len(names) or not results:
        raise ValidationError("texture_sets_glb needs one name per texture set")
    check_same_layout(results)
    gltf, binary = _parse_glb(mesh_to_glb(results[0], name=name))
    w = _GlbWriter()
    w.gltf, w.bin = gltf, bytearray(binary)
    template = gltf["materials"][0]
    for i, result in enumerate(results[1:], 1):
        material = _material_for(w, template, result, f"{name}_{names[i]}")
        gltf["materials"].append(material)
    template["name"] = f"{name}_{names[0]}"
    primitive = gltf["meshes"][0]["primitives"][0]
    primitive.setdefault("extensions", {})[VARIANTS_EXTENSION] = {
        "mappings": [{"material": i, "variants": [i]} for i in range(len(results))]}
    gltf.setdefault("extensions", {})[VARIANTS_EXTENSION] = {"variants": [{"name": n} for n in names]}
    gltf["extensionsUsed"] = sorted(set(gltf.get("extensionsUsed", [])) | {VARIANTS_EXTENSION})
    return w.glb()


def _material_for(w: _GlbWriter, template: dict[str, Any], result: MeshPayload, name: str) -> dict[str, Any]:
    """A material like the template (mesh_to_glb's), pointing at this set's maps."""
    material = copy.deepcopy(template)
    material["name"] = name
    pbr = material["pbrMetallicRoughness"]
    slots = {"base_color": (pbr, "baseColorTexture"), "normal": (material, "normalTexture"),
             "roughness_metallic": (pbr, "metallicRoughnessTexture")}
    for role, (holder, key) in slots.items():
        texture = result.texture(role)
        if key in holder and texture is None:
            raise ValidationError(f"texture set {name!r} has no {role} map, which the first set has")
        if texture is not None and key in holder:
            holder[key] = {"index": w.image(texture_png(texture))}
    return material


def variant_names(glb: bytes) -> list[str]:
    """The KHR_materials_variants variant names of a .glb ([] without the extension)."""
    gltf, _ = _parse_glb(glb)
    return [v["name"] for v in gltf.get("extensions", {}).get(VARIANTS_EXTENSION, {}).get("variants", [])]


def variant_json(glb: bytes) -> dict[str, Any]:
    """The .glb's JSON chunk (for tests and tools)."""
    return json.loads(json.dumps(_parse_glb(glb)[0]))
