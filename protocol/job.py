"""What a client asks the backend to do: one job's specification.

The submit message carries a JobSpec; the backend's pipeline receives the same
object. Stage names are listed once, here, so that both sides agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .errors import ValidationError
from .scene import CameraSpec, MeshPayload

STAGES: tuple[str, ...] = ("reference", "nerf", "neus", "dmtet", "polish", "texture", "export")
"""Every stage of the DreamPolish pipeline, in order."""

JobMode = Literal["generate", "geometry", "texture"]
JOB_MODES: tuple[str, ...] = ("generate", "geometry", "texture")
"""generate: from the prompt; geometry: refine input_mesh (dmtet → polish → texture);
texture: keep input_mesh's topology and UVs, texture only."""

OptionValue = bool | int | float | str


@dataclass
class JobSpec:
    prompt: str
    """What to make; for refine modes, what the mesh is."""
    negative_prompt: str = ""
    seed: int = 0
    """Seed of every random choice; the same spec and seed on the same device reproduce the result."""
    preset: str = "tiny"
    """Name of a backend preset (welcome lists them)."""
    mode: JobMode = "generate"
    stages: list[str] | None = None
    """Subset of STAGES to run, None = all that the mode uses."""
    pause_after: list[str] = field(default_factory=list)
    """Stages after which the job pauses until a resume message (stage gates)."""
    options: dict[str, OptionValue] = field(default_factory=dict)
    """Per-request overrides of preset fields, keyed "stage.field" (e.g. "nerf.steps")."""
    cameras: list[CameraSpec] = field(default_factory=list)
    """The scene's camera rig; cameras[reference_camera] is the reference view."""
    reference_camera: int = 0
    input_mesh: MeshPayload | None = None
    """The mesh to refine (geometry/texture modes)."""


def parse_option(item: str) -> tuple[str, OptionValue]:
    """"nerf.steps=500" -> ("nerf.steps", 500): the value becomes a bool, int or float where it reads as
    one, else stays a string. Used by every front end that lets a person type overrides."""
    key, sep, raw = (x.strip() for x in item.partition("="))
    if not sep or not key or not raw:
        raise ValidationError(f"override {item!r} must read stage.field=value")
    if raw.lower() in ("true", "false"):
        return key, raw.lower() == "true"
    for kind in (int, float):
        try:
            return key, kind(raw)
        except ValueError:
            pass
    return key, raw


def parse_options(text: str) -> dict[str, OptionValue]:
    """"nerf.steps=500, texture.objective=dsd" -> {"nerf.steps": 500, "texture.objective": "dsd"}."""
    return dict(parse_option(part) for part in text.split(",") if part.strip())
