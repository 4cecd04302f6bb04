"""A masked refine: which part of the input mesh a refine may change, how wide its feathered border is, and
what that part should become.

A request's `mask` carries one weight in [0, 1] per vertex of `input_mesh` (in its vertex order: Blender's
vertex indices, a .glb's POSITION order), a border width in the world's units (metres in Blender) and the
region's own prompt. The backend changes only the surface whose interpolated weight is above 0, plus the
border: points within `feather` of it, whose weight falls smoothly to 0 at that distance. Everything else
comes back bit-identical: vertices (a geometry refine moves only weighted vertices, on the input's own
topology) and texels (a texture refine repaints the input's base-colour texture only there).
Pure Python + numpy: the add-on checks a mask with this before sending it, the backend at submit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ValidationError
from .limits import LIMITS
from .scene import MeshPayload, object_to_world

MASK_MODES: tuple[str, ...] = ("geometry", "texture")
"""The job modes a mask applies to (the refines)."""

REMESHING_STAGES: tuple[str, ...] = ("dmtet", "finish")
"""The stages of a mode's chain (welcome.stage_chains) that a masked job leaves out: they make a new mesh, and a
masked refine keeps the input's topology (the backend's runners that re-mesh; a test holds the two equal)."""


def masked_chain(chain: list[str]) -> list[str]:
    """A mode's announced chain as a masked job runs it."""
    return [s for s in chain if s not in REMESHING_STAGES]


@dataclass
class RefineMask:
    weights: np.ndarray
    """float32 (N,): the weight of each vertex of input_mesh, in [0, 1]; 0 keeps a vertex (and the surface
    around it, beyond the border) exactly as it is."""
    feather: float = 0.0
    """Width of the border around the weighted surface, in world units (metres in Blender), where the
    change fades out; 0: none. At most the object's largest side."""
    prompt: str = ""
    """What the masked region should become ("" : the job's prompt)."""
    negative_prompt: str = ""
    """What it should not ("" : the job's negative prompt)."""

    @property
    def num_weighted(self) -> int:
        return int(np.count_nonzero(self.weights > 0))

    def validate(self, mesh: MeshPayload | None = None) -> RefineMask:
        """The mask on its own and, given the mesh it belongs to, against it (ValidationError saying which
        rule it broke and what to do)."""
        w = self.weights
        if not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.ndim != 1:
            got = f"{w.dtype} {w.shape}" if isinstance(w, np.ndarray) else type(w).__name__
            raise ValidationError(f"mask.weights must be a float32 array of one weight per vertex, got {got}")
        if not np.isfinite(w).all() or (w.size and (float(w.min()) < 0 or float(w.max()) > 1)):
            raise ValidationError("mask.weights must be finite and in [0, 1] (a vertex group's weights are)")
        if not np.any(w > 0):
            raise ValidationError("the mask is empty: no vertex has a weight above 0; paint the region to refine "
                                  "(Weight Paint, or assign vertices to the vertex group) or refine without a mask")
        if isinstance(self.feather, bool) or not isinstance(self.feather, (int, float)) \
                or not np.isfinite(self.feather) or self.feather < 0:
            raise ValidationError(f"mask.feather must be a finite width of 0 or more, got {self.feather!r}")
        for name, text in (("prompt", self.prompt), ("negative_prompt", self.negative_prompt)):
            if not isinstance(text, str):
                raise ValidationError(f"mask.{name} must be a string")
            if len(text) > LIMITS.max_prompt_chars:
                raise ValidationError(f"mask.{name} has {len(text)} characters; the limit is "
                                      f"{LIMITS.max_prompt_chars}")
        if mesh is not None:
            self._check_against(mesh)
        return self

    def _check_against(self, mesh: MeshPayload) -> None:
        if self.weights.shape[0] != mesh.num_vertices:
            raise ValidationError(f"the mask has {self.weights.shape[0]} weights but input_mesh has "
                                  f"{mesh.num_vertices} vertices: send one weight per vertex, in the mesh's "
                                  "vertex order (its POSITION order in a .glb)")
        width = object_width(mesh)
        if self.feather > width:
            raise ValidationError(f"the mask's border ({self.feather:g}) is wider than the object "
                                  f"({width:g} across its largest side): set a border narrower than the object")


def object_width(mesh: MeshPayload) -> float:
    """The largest side of the mesh's bounding box in the world (its transform applied)."""
    world = object_to_world(mesh.vertices, mesh.transform)
    return float(np.ptp(world, axis=0).max()) if world.size else 0.0


def check_mask(mode: str, mask: RefineMask | None, mesh: MeshPayload | None) -> None:
    """A request's mask (validate_spec): only on a refine, valid against its input_mesh, and a texture refine
    has the texture it keeps outside the mask (the input's UVs and base-colour map)."""
    if mask is None:
        return
    if not isinstance(mask, RefineMask):
        raise ValidationError(f"mask must be a RefineMask, got {type(mask).__name__}")
    if mode not in MASK_MODES or mesh is None:
        raise ValidationError(f"a mask refines part of a mesh you send: it needs mode 'geometry' or 'texture' "
                              f"and input_mesh, not mode {mode!r}")
    mask.validate(mesh)
    if mode == "texture" and (mesh.uvs is None or mesh.texture("base_color") is None):
        raise ValidationError("a masked texture refine repaints part of the object's texture and keeps the rest: "
                              "input_mesh needs its UVs and its base_color texture; send the object with its "
                              "texture (an image texture on its material), or refine without a mask")
