"""What a client asks the backend to do: one job's specification.

The submit message carries a JobSpec; the backend's pipeline receives the same
object. Stage names are listed once, here, so that both sides agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from .errors import ValidationError
from .image import ReferenceImage
from .limits import LIMITS
from .refine_mask import RefineMask, check_mask
from .scene import CameraSpec, MeshPayload, object_to_world
from .udim import check_udim_tiles

MAX_STAGES = 32
"""Most stages in one mode's chain: the bound of a stage index and of a request's stage lists."""

MAX_STAGE_NAME_CHARS = 32
"""Longest stage name."""

# The protocol does not list the stages: each backend announces the stage chain of every mode in
# `welcome.stage_chains` (its pipeline's runners define them), and refuses a request that names a stage
# its chain does not have. Here a stage name is only checked for its form.

JobMode = Literal["generate", "geometry", "texture"]
JOB_MODES: tuple[str, ...] = ("generate", "geometry", "texture")
"""generate: from the prompt; geometry: refine input_mesh (dmtet → polish → texture);
texture: keep input_mesh's topology and UVs, texture only."""

OptionValue = bool | int | float | str

SEED_LIMIT = 2**63
"""Seeds are integers in [0, SEED_LIMIT): what the wire decodes and what validate_spec accepts."""


@dataclass
class PictureView:
    """One of the artist's pictures of the object with the camera that took it (a multi-view request)."""

    image: ReferenceImage
    camera: CameraSpec
    """The Blender world camera the picture was taken from (exact: its position, lens and resolution)."""


@dataclass
class JobSpec:
    prompt: str
    """What to make; for refine modes, what the mesh is. May be empty when `image` is given (it then only
    steers the text prior where it says something)."""
    negative_prompt: str = ""
    seed: int = 0
    """Seed of every random choice, in [0, 2^63); the same spec and seed on the same device reproduce the
    result."""
    preset: str = "tiny"
    """Name of a backend preset (welcome lists them)."""
    mode: JobMode = "generate"
    stages: list[str] | None = None
    """The stages to run (an unbroken run of the mode's chain, welcome.stage_chains), None = the whole chain."""
    pause_after: list[str] = field(default_factory=list)
    """Stages after which the job pauses until a resume message (stage gates)."""
    options: dict[str, OptionValue] = field(default_factory=dict)
    """Per-request overrides of preset fields, keyed "stage.field" (e.g. "nerf.steps")."""
    cameras: list[CameraSpec] = field(default_factory=list)
    """The scene's camera rig; cameras[reference_camera] is the reference view."""
    reference_camera: int = 0
    input_mesh: MeshPayload | None = None
    """The mesh to refine (geometry/texture modes)."""
    image: ReferenceImage | None = None
    """The artist's picture as the reference view (generate mode): seen from cameras[reference_camera]
    (or the default front camera); the reference stage prepares it instead of making one from the prompt."""
    udim_tiles: list[int] = field(default_factory=list)
    """Texture-only refines of a mesh whose UVs span UDIM tiles: the tiles (1001..1100) it is textured on, one
    base-colour map each (udim.py); empty: the UV square 0-1."""
    mask: RefineMask | None = None
    """A masked refine (refine_mask.py): per-vertex weights of input_mesh, a feathered border and the region's
    own prompt; outside mask and border the result is the input, bit for bit."""
    views: list[PictureView] = field(default_factory=list)
    """Several pictures, each with its camera (generate mode, at most LIMITS.max_reference_views): every one is
    a reference view, in one object frame found from their silhouettes; views[0]'s camera defines the front.
    Exclusive with `image`; one view means what `image` seen from its camera means."""


MAX_VARIANTS = 8
"""Most seed variants one request fans out to (each is a job of its own)."""


def variant_specs(spec: JobSpec, count: int, up_to: str) -> list[JobSpec]:
    """`count` seed variants of spec, each pausing after stage `up_to`: variant i has seed spec.seed + i
    (modulo SEED_LIMIT), so variant 0 is spec itself. Submitted as separate jobs, they run side by side
    on free GPUs; the artist resumes the one to continue and cancels the others."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_VARIANTS:
        raise ValidationError(f"variants must be an integer in [1, {MAX_VARIANTS}], got {count!r}")
    check_stage_names("variants' up_to", [up_to])
    seed = check_seed(spec.seed)
    gates = list(dict.fromkeys([*spec.pause_after, up_to]))
    return [replace(spec, seed=(seed + i) % SEED_LIMIT, pause_after=list(gates), options=dict(spec.options),
                    cameras=list(spec.cameras), views=list(spec.views)) for i in range(count)]


def reference_pictures(spec: JobSpec) -> list[tuple[ReferenceImage, CameraSpec | None]]:
    """The request's pictures with their cameras, whichever way it sent them: `views`, or `image` seen from
    cameras[reference_camera] (None: the default front camera); [] for a job from words alone."""
    if spec.views:
        return [(v.image, v.camera) for v in spec.views]
    if spec.image is not None:
        return [(spec.image, spec.cameras[spec.reference_camera] if spec.cameras else None)]
    return []


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
    """"nerf.steps=500, texture.guidance.objective=dsd" -> {"nerf.steps": 500, "texture.guidance.objective": "dsd"}."""
    return dict(parse_option(part) for part in text.split(",") if part.strip())


# --- validation -----------------------------------------------------------------------------------
# One validation of a request, shared by every side: the wire decoder (messages.spec_from_wire) uses the
# field rules below, the backend's pipelines call validate_spec at submit and before running, and a front
# end (CLI, add-on) may call it before sending. What depends on a backend's presets (preset names,
# options, model sets) is checked by that backend's pipeline after this.


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not (0 <= seed < SEED_LIMIT):
        raise ValidationError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    return seed


def check_mode(mode: object) -> str:
    if mode not in JOB_MODES:
        raise ValidationError(f"mode must be one of {', '.join(JOB_MODES)}, got {mode!r}")
    return str(mode)


def check_stage_name(stage: object, label: str) -> str:
    """A stage name of the right form: lower-case letters, digits and "_", starting with a letter, at most
    MAX_STAGE_NAME_CHARS (whether the backend has such a stage is the backend's check)."""
    if (not isinstance(stage, str) or not 0 < len(stage) <= MAX_STAGE_NAME_CHARS or not stage[0].isalpha()
            or not all(ch.isdigit() or ch == "_" or "a" <= ch <= "z" for ch in stage)):
        raise ValidationError(f"{label}: {stage!r} is not a stage name (lower-case letters, digits and '_', "
                              f"at most {MAX_STAGE_NAME_CHARS} characters)")
    return stage


def check_stage_names(label: str, names: list[str]) -> list[str]:
    if len(names) > MAX_STAGES:
        raise ValidationError(f"{label} names {len(names)} stages; the limit is {MAX_STAGES}")
    for stage in names:
        check_stage_name(stage, label)
    return names


def validate_spec(spec: JobSpec) -> JobSpec:
    """Refuse a request that no backend can run (ValidationError naming the field); returns the spec."""
    for name, text in (("prompt", spec.prompt), ("negative_prompt", spec.negative_prompt)):
        if not isinstance(text, str):
            raise ValidationError("prompt and negative_prompt must be strings")
        if len(text) > LIMITS.max_prompt_chars:
            raise ValidationError(f"{name} has {len(text)} characters; the limit is {LIMITS.max_prompt_chars}")
    check_mode(spec.mode)
    if spec.mode == "generate" and not spec.prompt.strip() and spec.image is None and not spec.views:
        raise ValidationError("prompt is empty: say what to make, or give a reference image")
    check_seed(spec.seed)
    if not isinstance(spec.preset, str) or not spec.preset:
        raise ValidationError(f"preset must be a preset name, got {spec.preset!r}")
    check_stage_names("stages", list(spec.stages or []))
    check_stage_names("pause_after", list(spec.pause_after))
    for key, value in spec.options.items():
        if not isinstance(key, str) or isinstance(value, (list, dict, tuple)) or value is None:
            raise ValidationError(f"option {key!r} must be a bool, number or string keyed by a name")
    _check_cameras(spec)
    _check_image(spec)
    _check_views(spec)
    _check_input_mesh(spec)
    check_mask(spec.mode, spec.mask, spec.input_mesh)
    check_udim_tiles(spec.mode, list(spec.udim_tiles), None if spec.input_mesh is None else spec.input_mesh.uvs,
                     spec.mask is not None)
    return spec


def _check_image(spec: JobSpec) -> None:
    if spec.image is None:
        return
    if not isinstance(spec.image, ReferenceImage):
        raise ValidationError(f"image must be a ReferenceImage, got {type(spec.image).__name__}")
    if spec.mode != "generate":
        raise ValidationError(f"a reference image is for generate jobs, not mode {spec.mode!r}")
    if spec.stages is not None and "reference" not in spec.stages:
        raise ValidationError("a job with a reference image runs the reference stage (it prepares the image)")
    spec.image.validate()


def _check_views(spec: JobSpec) -> None:
    """Each picture and its camera as `image` and a camera are checked, the error naming the picture by index."""
    if not spec.views:
        return
    if not isinstance(spec.views, list):
        raise ValidationError(f"views must be a list, got {type(spec.views).__name__}")
    if len(spec.views) > LIMITS.max_reference_views:
        raise ValidationError(f"views has {len(spec.views)} pictures; the limit is {LIMITS.max_reference_views}")
    if spec.image is not None:
        raise ValidationError("a request carries its pictures either as image or as views, not both")
    if spec.mode != "generate":
        raise ValidationError(f"reference pictures (views) are for generate jobs, not mode {spec.mode!r}")
    if spec.stages is not None and "reference" not in spec.stages:
        raise ValidationError("a job with reference pictures runs the reference stage (it prepares them)")
    for i, view in enumerate(spec.views):
        try:
            if not isinstance(view, PictureView):
                raise ValidationError(f"must be a PictureView, got {type(view).__name__}")
            if not isinstance(view.image, ReferenceImage):
                raise ValidationError(f"image must be a ReferenceImage, got {type(view.image).__name__}")
            if not isinstance(view.camera, CameraSpec):
                raise ValidationError(f"camera must be a CameraSpec, got {type(view.camera).__name__}")
            view.image.validate()
            view.camera.validate()
        except ValidationError as exc:
            raise type(exc)(f"{view_label(i, getattr(getattr(view, 'camera', None), 'name', ''))}: {exc}") from None


def view_label(index: int, camera_name: object = "") -> str:
    """How an error names a picture of `views`: by its index, and its camera's name where it has one."""
    return f"views[{index}]" + (f" (camera {camera_name!r})" if isinstance(camera_name, str) and camera_name else "")


def _check_cameras(spec: JobSpec) -> None:
    if len(spec.cameras) > LIMITS.max_cameras:
        raise ValidationError(f"{len(spec.cameras)} cameras; the limit is {LIMITS.max_cameras}")
    for camera in spec.cameras:
        camera.validate()
    if spec.cameras and not (0 <= spec.reference_camera < len(spec.cameras)):
        raise ValidationError(f"reference_camera {spec.reference_camera} is not one of the "
                              f"{len(spec.cameras)} cameras")


def _check_input_mesh(spec: JobSpec) -> None:
    if spec.mode == "generate":
        if spec.input_mesh is not None:
            raise ValidationError("a generate job takes no input_mesh; use mode 'geometry' or 'texture' to refine")
        return
    if spec.input_mesh is None:
        raise ValidationError(f"mode {spec.mode!r} refines a mesh: input_mesh is missing")
    check_mesh_to_refine(spec.input_mesh, "input_mesh")


def check_mesh_to_refine(mesh: MeshPayload, name: str) -> MeshPayload:
    """A mesh the stages will refine (a job's input_mesh, or the edited mesh a resume carries): valid, with
    faces, finite and with a surface once placed; ValidationError naming `name` and the rule it broke."""
    mesh = mesh.validate(require_faces=True)
    # The stages see the mesh placed in the world (its transform applied), so that is what must have a
    # size: a zero scale or an overflow there would leave nothing to normalise.
    with np.errstate(all="ignore"):
        world = object_to_world(mesh.vertices, mesh.transform)
    # The stages place it in float32: beyond float32's range a coordinate becomes infinite there.
    if not np.all(np.abs(world) < np.finfo(np.float32).max):
        raise ValidationError(f"{name} is not finite once its transform is applied (float32)")
    extent = float(np.linalg.norm(np.ptp(world, axis=0)))
    if extent <= 0:
        raise ValidationError(f"{name} has no extent: all its vertices coincide")
    tri = world[mesh.faces.astype(np.int64)]
    area = 0.5 * float(np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1).sum())
    # Relative to the mesh's size: float32 vertices resolve areas down to about 1e-7 of extent².
    if area <= 1e-10 * extent * extent:
        raise ValidationError(f"{name} has no surface: its {mesh.num_faces} faces all have zero area")
    return mesh
