"""The wire map of a request's mask (spec.mask, protocol/README.md): refine_mask.RefineMask <-> map."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ValidationError
from .fields import read_float, read_required, read_str, refuse_unknown_fields
from .frames import FrameReader, FrameWriter
from .limits import LIMITS
from .refine_mask import RefineMask
from .wire_types import wire_type

MASK_FIELDS = ("weights", "feather", "prompt", "negative_prompt")


def mask_to_wire(mask: RefineMask, w: FrameWriter) -> dict[str, Any]:
    return {"weights": w.array(mask.weights), "feather": float(mask.feather), "prompt": mask.prompt,
            "negative_prompt": mask.negative_prompt}


def mask_from_wire(d: object, r: FrameReader) -> RefineMask:
    """The mask on its own; validate_spec checks it against input_mesh."""
    if not isinstance(d, dict):
        raise ValidationError(f"spec.mask must be a map, got {wire_type(d)}")
    refuse_unknown_fields(d, MASK_FIELDS, "spec.mask")
    return RefineMask(
        # a copy: the job keeps its mask while the received message (the mesh's frames) is let go
        weights=np.array(r.array(read_required(d, "weights"), "spec.mask.weights")),
        feather=read_float(d, "feather", 0.0),
        prompt=read_str(d, "prompt", "", max_chars=LIMITS.max_prompt_chars),
        negative_prompt=read_str(d, "negative_prompt", "", max_chars=LIMITS.max_prompt_chars),
    ).validate()
