"""The wire maps of the payloads that messages carry: textures, meshes, cameras, the reference
image, the job spec, and a job's row in a job list (JobInfo, with the states of a job).

Each payload has a `*_to_wire(payload, frames)` that returns its map, with arrays and blobs moved
into frames (frames.py), and a `*_from_wire(map, frames)` that checks every field (fields.py) and
returns the validated payload (scene.py, image.py, job.py). The maps are part of the wire format:
README.md specifies them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import LimitExceeded, ValidationError
from .fields import (
    MAX_ID_CHARS,
    MAX_MESSAGE_CHARS,
    MAX_NAME_CHARS,
    MAX_OPTIONS,
    read_float,
    read_int,
    read_list,
    read_map,
    read_required,
    read_str,
    read_str_list,
    refuse_unknown_fields,
)
from .frames import FrameReader, FrameWriter
from .image import ReferenceImage
from .job import MAX_STAGES, JobSpec, PictureView, check_mode, check_seed, check_stage_names, view_label
from .limits import LIMITS
from .mask_wire import mask_from_wire, mask_to_wire
from .names import check_file_name
from .scene import (
    MAX_LODS,
    SENSOR_FITS,
    TEXTURE_ROLES,
    CameraSpec,
    MeshPayload,
    TexturePayload,
)
from .udim import check_tile
from .wire_types import wire_type

# The fields of each payload map, as a request may carry them: the backend refuses any other field in a
# request (refuse_unknown_fields); replies and events are read leniently, so that a backend of a later
# minor version may add fields.
TEXTURE_FIELDS = ("role", "png", "array", "tile")
MESH_FIELDS = ("vertices", "faces", "uvs", "normals", "colors", "transform", "textures", "face_sizes", "face_corners",
               "lods")
CAMERA_FIELDS = ("matrix_world", "lens_mm", "sensor_width_mm", "sensor_height_mm", "sensor_fit", "resolution",
                 "shift", "name")
IMAGE_FIELDS = ("png", "array")
VIEW_FIELDS = ("image", "camera")
SPEC_FIELDS = ("prompt", "negative_prompt", "seed", "preset", "mode", "stages", "pause_after", "options", "cameras",
               "reference_camera", "input_mesh", "image", "mask", "udim_tiles", "views")


def refuse_unknown_mesh_fields(d: object, where: str) -> None:
    """A mesh in a request (input_mesh, resume's edit): its map and its textures' hold only known fields."""
    if isinstance(d, dict):
        refuse_unknown_fields(d, MESH_FIELDS, where)
        textures = d.get("textures")
        for i, texture in enumerate(textures if isinstance(textures, list) else []):
            if isinstance(texture, dict):
                refuse_unknown_fields(texture, TEXTURE_FIELDS, f"{where}.textures[{i}]")


def refuse_unknown_spec_fields(d: dict[str, Any]) -> None:
    refuse_unknown_fields(d, SPEC_FIELDS, "spec")
    cameras = d.get("cameras")
    for i, camera in enumerate(cameras if isinstance(cameras, list) else []):
        if isinstance(camera, dict):
            refuse_unknown_fields(camera, CAMERA_FIELDS, f"spec.cameras[{i}]")
    refuse_unknown_mesh_fields(d.get("input_mesh"), "spec.input_mesh")
    if isinstance(d.get("image"), dict):
        refuse_unknown_fields(d["image"], IMAGE_FIELDS, "spec.image")
    views = d.get("views")
    for i, view in enumerate(views if isinstance(views, list) else []):
        if isinstance(view, dict):
            refuse_unknown_fields(view, VIEW_FIELDS, f"spec.views[{i}]")
            if isinstance(view.get("image"), dict):
                refuse_unknown_fields(view["image"], IMAGE_FIELDS, f"spec.views[{i}].image")
            if isinstance(view.get("camera"), dict):
                refuse_unknown_fields(view["camera"], CAMERA_FIELDS, f"spec.views[{i}].camera")


JOB_STATES: tuple[str, ...] = ("queued", "running", "paused", "done", "failed", "cancelled")
"""Lifecycle of a job. done, failed and cancelled are final."""
FINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})


def texture_to_wire(t: TexturePayload, w: FrameWriter) -> dict[str, Any]:
    out: dict[str, Any] = {"role": t.role}
    if t.png is not None:
        out["png"] = w.blob(t.png)
    if t.array is not None:
        out["array"] = w.array(t.array)
    if t.tile:
        out["tile"] = int(t.tile)
    return out


def texture_from_wire(d: object, r: FrameReader) -> TexturePayload:
    if not isinstance(d, dict):
        raise ValidationError(f"texture must be a map, got {wire_type(d)}")
    role = read_str(d, "role")
    if role not in TEXTURE_ROLES:
        raise ValidationError(f"texture role must be one of {TEXTURE_ROLES}, got {role!r}")
    png = r.blob(d["png"], f"texture {role!r} png") if d.get("png") is not None else None
    array = r.array(d["array"], f"texture {role!r} array") if d.get("array") is not None else None
    return TexturePayload(role=role, png=png, array=array, tile=read_int(d, "tile", 0)).validate()


def _lod_from_wire(d: object, r: FrameReader, i: int) -> MeshPayload:
    if isinstance(d, dict) and d.get("lods"):
        raise ValidationError(f"mesh.lods[{i}] has levels of detail of its own (they are not nested)")
    return mesh_from_wire(d, r)


def mesh_to_wire(m: MeshPayload, w: FrameWriter) -> dict[str, Any]:
    """Every mesh carries its triangles (`faces`, per-triangle-corner `uvs`), so that a client of an earlier
    minor version reads a polygon mesh as triangles; a polygon mesh adds `face_sizes` and `face_corners`
    (its triangles are their fans: the reader checks that they agree)."""
    out: dict[str, Any] = {
        "vertices": w.array(m.vertices),
        "faces": w.array(m.faces),
        "transform": w.array(m.transform),
        "textures": [texture_to_wire(t, w) for t in m.textures],
    }
    if m.has_polygons:
        out["face_sizes"] = w.array(m.face_sizes)
        out["face_corners"] = w.array(m.face_corners)
    for name in ("uvs", "normals", "colors"):
        a = getattr(m, name)
        if a is not None:
            out[name] = w.array(a)
    if m.lods:
        out["lods"] = [mesh_to_wire(lod, w) for lod in m.lods]
    return out


def mesh_from_wire(d: object, r: FrameReader, *, require_faces: bool = True) -> MeshPayload:
    if not isinstance(d, dict):
        raise ValidationError(f"mesh must be a map, got {wire_type(d)}")

    def optional(name: str) -> np.ndarray | None:
        return r.array(d[name], f"mesh.{name}") if d.get(name) is not None else None

    transform = optional("transform")
    textures = read_list(d, "textures", [], max_items=len(TEXTURE_ROLES))
    lods = read_list(d, "lods", [], max_items=MAX_LODS)
    fields = {"normals": optional("normals"), "colors": optional("colors"),
              "transform": transform if transform is not None else np.eye(4, dtype=np.float32),
              "textures": [texture_from_wire(t, r) for t in textures],
              "lods": [_lod_from_wire(lod, r, i) for i, lod in enumerate(lods)]}
    mesh = MeshPayload(
        vertices=r.array(read_required(d, "vertices"), "mesh.vertices"),
        faces=r.array(read_required(d, "faces"), "mesh.faces"),
        uvs=optional("uvs"),
        face_sizes=optional("face_sizes"),
        face_corners=optional("face_corners"),
        **fields,
    )
    return mesh.validate(require_faces=require_faces)


def camera_to_wire(c: CameraSpec, w: FrameWriter) -> dict[str, Any]:
    return {
        "matrix_world": w.array(c.matrix_world),
        "lens_mm": float(c.lens_mm),
        "sensor_width_mm": float(c.sensor_width_mm),
        "sensor_height_mm": float(c.sensor_height_mm),
        "sensor_fit": c.sensor_fit,
        "resolution": [int(c.resolution[0]), int(c.resolution[1])],
        "shift": [float(c.shift[0]), float(c.shift[1])],
        "name": c.name,
    }


def camera_from_wire(d: object, r: FrameReader) -> CameraSpec:
    if not isinstance(d, dict):
        raise ValidationError(f"camera must be a map, got {wire_type(d)}")
    res = read_list(d, "resolution", [512, 512], max_items=2)
    shift = read_list(d, "shift", [0.0, 0.0], max_items=2)
    if len(res) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in res):
        raise ValidationError("camera.resolution must be two integers")
    if len(shift) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in shift):
        raise ValidationError("camera.shift must be two numbers")
    fit = read_str(d, "sensor_fit", "AUTO")
    if fit not in SENSOR_FITS:
        raise ValidationError(f"camera.sensor_fit must be one of {SENSOR_FITS}, got {fit!r}")
    cam = CameraSpec(
        matrix_world=r.array(read_required(d, "matrix_world"), "camera.matrix_world"),
        lens_mm=read_float(d, "lens_mm", 50.0),
        sensor_width_mm=read_float(d, "sensor_width_mm", 36.0),
        sensor_height_mm=read_float(d, "sensor_height_mm", 24.0),
        sensor_fit=fit,
        resolution=(res[0], res[1]),
        shift=(float(shift[0]), float(shift[1])),
        name=read_str(d, "name", ""),
    )
    return cam.validate()


def image_to_wire(image: ReferenceImage, w: FrameWriter) -> dict[str, Any]:
    if image.png is not None:
        return {"png": w.blob(image.png)}
    return {"array": w.array(image.array)}


def image_from_wire(d: object, r: FrameReader, where: str = "spec.image") -> ReferenceImage:
    if not isinstance(d, dict):
        raise ValidationError(f"{where} must be a map, got {wire_type(d)}")
    png = r.blob(d["png"], f"{where}.png") if d.get("png") is not None else None
    array = r.array(d["array"], f"{where}.array") if d.get("array") is not None else None
    return ReferenceImage(png=png, array=array).validate()


def view_to_wire(v: PictureView, w: FrameWriter) -> dict[str, Any]:
    return {"image": image_to_wire(v.image, w), "camera": camera_to_wire(v.camera, w)}


def views_from_wire(d: dict[str, Any], r: FrameReader) -> list[PictureView]:
    """spec.views: each picture and its camera decoded as `image` and a camera are, errors naming the picture."""
    views = read_list(d, "views", [], max_items=LIMITS.max_reference_views)
    out = []
    for i, item in enumerate(views):
        try:
            if not isinstance(item, dict):
                raise ValidationError(f"must be a map, got {wire_type(item)}")
            out.append(PictureView(image_from_wire(read_required(item, "image"), r, "image"),
                                   camera_from_wire(read_required(item, "camera"), r)))
        except ValidationError as exc:
            camera = item.get("camera") if isinstance(item, dict) else None
            raise type(exc)(f"spec.{view_label(i, camera.get('name') if isinstance(camera, dict) else '')}: "
                            f"{exc}") from None
    return out


def spec_to_wire(s: JobSpec, w: FrameWriter) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt": s.prompt,
        "negative_prompt": s.negative_prompt,
        "seed": int(s.seed),
        "preset": s.preset,
        "mode": s.mode,
        "stages": list(s.stages) if s.stages is not None else None,
        "pause_after": list(s.pause_after),
        "options": dict(s.options),
        "cameras": [camera_to_wire(c, w) for c in s.cameras],
        "reference_camera": int(s.reference_camera),
    }
    if s.input_mesh is not None:
        out["input_mesh"] = mesh_to_wire(s.input_mesh, w)
    if s.image is not None:
        out["image"] = image_to_wire(s.image, w)
    if s.mask is not None:
        out["mask"] = mask_to_wire(s.mask, w)
    if s.udim_tiles:
        out["udim_tiles"] = [int(t) for t in s.udim_tiles]
    if s.views:
        out["views"] = [view_to_wire(v, w) for v in s.views]
    return out


def spec_from_wire(d: object, r: FrameReader) -> JobSpec:
    if not isinstance(d, dict):
        raise ValidationError(f"spec must be a map, got {wire_type(d)}")
    # The field rules are job.py's, which validate_spec applies to the whole request at submit.
    refuse_unknown_spec_fields(d)
    mode = check_mode(read_str(d, "mode", "generate"))
    stages = read_str_list(d, "stages", None, max_items=MAX_STAGES) if d.get("stages") is not None else None
    pause_after = read_str_list(d, "pause_after", [], max_items=MAX_STAGES)
    check_stage_names("stages", stages or [])
    check_stage_names("pause_after", pause_after)
    options = read_map(d, "options", {})
    if len(options) > MAX_OPTIONS:
        raise LimitExceeded(f"spec.options has {len(options)} entries; the limit is {MAX_OPTIONS}")
    for k, v in options.items():
        if not isinstance(k, str) or len(k) > MAX_NAME_CHARS:
            raise ValidationError("spec.options keys must be short strings")
        if not isinstance(v, (bool, int, float, str)) or (isinstance(v, str) and len(v) > MAX_MESSAGE_CHARS):
            raise ValidationError(f"spec.options[{k!r}] must be a bool, number or short string")
    cameras = read_list(d, "cameras", [], max_items=LIMITS.max_cameras)
    reference_camera = read_int(d, "reference_camera", 0, hi=max(len(cameras) - 1, 0))
    input_mesh = mesh_from_wire(d["input_mesh"], r) if d.get("input_mesh") is not None else None
    image = image_from_wire(d["image"], r) if d.get("image") is not None else None
    mask = mask_from_wire(d["mask"], r) if d.get("mask") is not None else None
    return JobSpec(
        prompt=read_str(d, "prompt", max_chars=LIMITS.max_prompt_chars),
        negative_prompt=read_str(d, "negative_prompt", "", max_chars=LIMITS.max_prompt_chars),
        seed=check_seed(read_int(d, "seed", 0, lo=-(2**63), hi=2**63 - 1)),
        preset=read_str(d, "preset", "tiny"),
        mode=mode,  # type: ignore[arg-type]
        stages=stages,
        pause_after=pause_after,
        options=dict(options),
        cameras=[camera_from_wire(c, r) for c in cameras],
        reference_camera=reference_camera,
        input_mesh=input_mesh,
        image=image,
        mask=mask,
        udim_tiles=[check_tile(t, "spec.udim_tiles[]") for t in read_list(d, "udim_tiles", [], max_items=100)],
        views=views_from_wire(d, r),
    )


@dataclass
class JobInfo:
    """One row of JobList."""

    job_id: str
    state: str
    prompt: str = ""
    mode: str = "generate"
    preset: str = ""
    created_unix: float = 0.0
    """Submit time, seconds since the epoch (for display only)."""
    last_seq: int = 0
    """Sequence number of the job's latest event."""
    stages_done: list[str] = field(default_factory=list)
    """Stages whose result is stored, in order."""
    error: str = ""
    """The failure message of a failed job."""

    def to_wire(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "prompt": self.prompt,
            "mode": self.mode,
            "preset": self.preset,
            "created_unix": float(self.created_unix),
            "last_seq": self.last_seq,
            "stages_done": list(self.stages_done),
            "error": self.error,
        }

    @classmethod
    def from_wire(cls, d: object) -> JobInfo:
        if not isinstance(d, dict):
            raise ValidationError(f"job info must be a map, got {wire_type(d)}")
        state = read_str(d, "state")
        if state not in JOB_STATES:
            raise ValidationError(f"job state must be one of {JOB_STATES}, got {state!r}")
        return cls(
            job_id=check_file_name(read_str(d, "job_id", max_chars=MAX_ID_CHARS), "field 'job_id'"),
            state=state,
            prompt=read_str(d, "prompt", "", max_chars=LIMITS.max_prompt_chars),
            mode=read_str(d, "mode", "generate"),
            preset=read_str(d, "preset", ""),
            created_unix=read_float(d, "created_unix", 0.0),
            last_seq=read_int(d, "last_seq", 0),
            stages_done=read_str_list(d, "stages_done", []),
            error=read_str(d, "error", "", max_chars=MAX_MESSAGE_CHARS),
        )
