"""Every message of the protocol, as typed dataclasses, and their header bodies.

A message on the wire is a header (a msgpack map, see codec.py) plus binary
frames. The header's common fields are the protocol version, the message type,
a message id, `re` (the id of the request a reply answers), and for job events
the job id and the job's sequence number. Each class below owns the rest: its
`body` map, with arrays and blobs moved into frames (frames.py).

Readers tolerate unknown fields everywhere. Every field read from the wire is
checked here (type, range, size against limits.py) and raises a typed error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .errors import LimitExceeded, ValidationError
from .frames import FrameReader, FrameWriter
from .image import ReferenceImage
from .job import STAGES, JobSpec, check_mode, check_seed, check_stage_names
from .limits import LIMITS
from .names import check_file_name
from .scene import SENSOR_FITS, TEXTURE_ROLES, CameraSpec, MeshPayload, TexturePayload

JOB_STATES: tuple[str, ...] = ("queued", "running", "paused", "done", "failed", "cancelled")
"""Lifecycle of a job. done, failed and cancelled are final."""
FINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})

MAX_ID_CHARS = 64
MAX_NAME_CHARS = 256
MAX_MESSAGE_CHARS = 4096
MAX_OPTIONS = 256
MAX_LIST_ITEMS = 10_000

_MISSING = object()


# --- checked field readers -------------------------------------------------------------------------


def _get(body: dict[str, Any], key: str, default: Any) -> Any:
    value = body.get(key, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise ValidationError(f"field {key!r} is required")
        return default
    return value


def read_str(body: dict[str, Any], key: str, default: Any = _MISSING, max_chars: int = MAX_NAME_CHARS) -> Any:
    value = _get(body, key, default)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, str):
        raise ValidationError(f"field {key!r} must be a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise LimitExceeded(f"field {key!r} has {len(value)} characters; the limit is {max_chars}")
    return value


def read_int(
    body: dict[str, Any], key: str, default: Any = _MISSING, lo: int = 0, hi: int = 2**63 - 1
) -> Any:
    value = _get(body, key, default)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"field {key!r} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValidationError(f"field {key!r} must be in [{lo}, {hi}], got {value}")
    return value


def read_float(body: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    value = _get(body, key, default)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
        raise ValidationError(f"field {key!r} must be a finite number, got {value!r}")
    return float(value)


def read_bool(body: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    value = _get(body, key, default)
    if not isinstance(value, bool):
        raise ValidationError(f"field {key!r} must be true or false, got {type(value).__name__}")
    return value


def read_map(body: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    value = _get(body, key, default)
    if not isinstance(value, dict):
        raise ValidationError(f"field {key!r} must be a map, got {type(value).__name__}")
    return value


def read_list(
    body: dict[str, Any], key: str, default: Any = _MISSING, max_items: int = MAX_LIST_ITEMS
) -> Any:
    value = _get(body, key, default)
    if not isinstance(value, list):
        raise ValidationError(f"field {key!r} must be a list, got {type(value).__name__}")
    if len(value) > max_items:
        raise LimitExceeded(f"field {key!r} has {len(value)} items; the limit is {max_items}")
    return value


def read_str_list(body: dict[str, Any], key: str, default: Any = _MISSING, max_items: int = 256) -> list[str]:
    items = read_list(body, key, default, max_items)
    for item in items:
        if not isinstance(item, str) or len(item) > MAX_NAME_CHARS:
            raise ValidationError(f"field {key!r} must be a list of short strings")
    return list(items)


def read_stage(body: dict[str, Any], key: str) -> str:
    stage = read_str(body, key)
    if stage not in STAGES:
        raise ValidationError(f"field {key!r} must be one of {STAGES}, got {stage!r}")
    return stage


# --- scene payloads ------------------------------------------------------------------------------


def texture_to_wire(t: TexturePayload, w: FrameWriter) -> dict[str, Any]:
    out: dict[str, Any] = {"role": t.role}
    if t.png is not None:
        out["png"] = w.blob(t.png)
    if t.array is not None:
        out["array"] = w.array(t.array)
    return out


def texture_from_wire(d: object, r: FrameReader) -> TexturePayload:
    if not isinstance(d, dict):
        raise ValidationError("texture must be a map")
    role = read_str(d, "role")
    if role not in TEXTURE_ROLES:
        raise ValidationError(f"texture role must be one of {TEXTURE_ROLES}, got {role!r}")
    png = r.blob(d["png"], f"texture {role!r} png") if d.get("png") is not None else None
    array = r.array(d["array"], f"texture {role!r} array") if d.get("array") is not None else None
    return TexturePayload(role=role, png=png, array=array).validate()


def mesh_to_wire(m: MeshPayload, w: FrameWriter) -> dict[str, Any]:
    out: dict[str, Any] = {
        "vertices": w.array(m.vertices),
        "faces": w.array(m.faces),
        "transform": w.array(m.transform),
        "textures": [texture_to_wire(t, w) for t in m.textures],
    }
    for name in ("uvs", "normals", "colors"):
        a = getattr(m, name)
        if a is not None:
            out[name] = w.array(a)
    return out


def mesh_from_wire(d: object, r: FrameReader, *, require_faces: bool = True) -> MeshPayload:
    if not isinstance(d, dict):
        raise ValidationError("mesh must be a map")

    def optional(name: str) -> np.ndarray | None:
        return r.array(d[name], f"mesh.{name}") if d.get(name) is not None else None

    transform = optional("transform")
    textures = read_list(d, "textures", [], max_items=len(TEXTURE_ROLES))
    mesh = MeshPayload(
        vertices=r.array(_get(d, "vertices", _MISSING), "mesh.vertices"),
        faces=r.array(_get(d, "faces", _MISSING), "mesh.faces"),
        uvs=optional("uvs"),
        normals=optional("normals"),
        colors=optional("colors"),
        transform=transform if transform is not None else np.eye(4, dtype=np.float32),
        textures=[texture_from_wire(t, r) for t in textures],
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
        raise ValidationError("camera must be a map")
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
        matrix_world=r.array(_get(d, "matrix_world", _MISSING), "camera.matrix_world"),
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


def image_from_wire(d: object, r: FrameReader) -> ReferenceImage:
    if not isinstance(d, dict):
        raise ValidationError("spec.image must be a map")
    png = r.blob(d["png"], "spec.image.png") if d.get("png") is not None else None
    array = r.array(d["array"], "spec.image.array") if d.get("array") is not None else None
    return ReferenceImage(png=png, array=array).validate()


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
    return out


def spec_from_wire(d: object, r: FrameReader) -> JobSpec:
    if not isinstance(d, dict):
        raise ValidationError("spec must be a map")
    # The field rules are job.py's, which validate_spec applies to the whole request at submit.
    mode = check_mode(read_str(d, "mode", "generate"))
    stages = read_str_list(d, "stages", None, max_items=len(STAGES)) if d.get("stages") is not None else None
    pause_after = read_str_list(d, "pause_after", [], max_items=len(STAGES))
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
    )


# --- messages ------------------------------------------------------------------------------------


@dataclass
class Message:
    """Base of every message. Subclasses set TYPE and map their own fields to and from `body`."""

    TYPE: ClassVar[str] = ""
    IS_EVENT: ClassVar[bool] = False
    """Job events carry job_id and seq, are stored in the job's event log and replayed on attach."""

    msg_id: str = field(default="", kw_only=True)
    """Unique per sender; set by the codec when empty."""
    re: str = field(default="", kw_only=True)
    """For a reply: the msg_id of the request it answers."""
    job_id: str = field(default="", kw_only=True)
    seq: int = field(default=0, kw_only=True)
    """Per-job sequence number of an event, from 1, without gaps."""

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {}

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> Message:
        return cls(**common)


# Client -> backend ------------------------------------------------------------------------------


@dataclass
class Hello(Message):
    """Opens a session; the backend answers Welcome, or Error(version_mismatch)."""

    TYPE: ClassVar[str] = "hello"
    client: str = ""
    """Free text naming the client and its version, for the backend's log."""

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {"client": self.client}

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> Hello:
        return cls(client=read_str(body, "client", ""), **common)


@dataclass
class Submit(Message):
    """Queue a job. Answered by Accepted (with the new job id) or Error."""

    TYPE: ClassVar[str] = "submit"
    spec: JobSpec = field(default_factory=lambda: JobSpec(prompt=""))

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {"spec": spec_to_wire(self.spec, w)}

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> Submit:
        return cls(spec=spec_from_wire(_get(body, "spec", _MISSING), r), **common)


@dataclass
class Cancel(Message):
    """Cancel job_id: a queued or paused job at once, a running one within one optimisation step."""

    TYPE: ClassVar[str] = "cancel"


@dataclass
class Resume(Message):
    """Continue paused job job_id, optionally from an edited mesh. Answered by Accepted or Error."""

    TYPE: ClassVar[str] = "resume"
    mesh: MeshPayload | None = None

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {"mesh": mesh_to_wire(self.mesh, w)} if self.mesh is not None else {}

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> Resume:
        mesh = mesh_from_wire(body["mesh"], r) if body.get("mesh") is not None else None
        return cls(mesh=mesh, **common)


@dataclass
class Attach(Message):
    """Follow job job_id: the backend replays every stored event with seq > last_seq, then streams new ones."""

    TYPE: ClassVar[str] = "attach"
    last_seq: int = 0

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {"last_seq": self.last_seq}

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> Attach:
        return cls(last_seq=read_int(body, "last_seq", 0), **common)


@dataclass
class ListJobs(Message):
    """Ask for one page of the jobs this client may see (its own; an admin's: all). Answered by JobList."""

    TYPE: ClassVar[str] = "list_jobs"
    page: str = ""
    """"" for the first page; else the `next_page` of the previous job_list."""
    limit: int = 0
    """Most jobs in the page; 0 = the backend's page size (which also caps it)."""

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {"page": self.page, "limit": self.limit}

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> ListJobs:
        return cls(
            page=read_str(body, "page", "", max_chars=MAX_NAME_CHARS),
            limit=read_int(body, "limit", 0, hi=MAX_LIST_ITEMS),
            **common,
        )


@dataclass
class DeleteJob(Message):
    """Delete finished job job_id and everything stored for it (its owner or an admin). Answered by
    Accepted or Error."""

    TYPE: ClassVar[str] = "delete_job"


@dataclass
class FetchResult(Message):
    """Ask for the stage results of job job_id, from position `first` on. Answered by Result or Error."""

    TYPE: ClassVar[str] = "fetch_result"
    first: int = 0
    """Position in the job's list of stage results to start from (Result.more_from of the previous part)."""

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {"first": self.first}

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> FetchResult:
        return cls(first=read_int(body, "first", 0, hi=MAX_LIST_ITEMS), **common)


@dataclass
class Ping(Message):
    """Heartbeat; answered by Pong."""

    TYPE: ClassVar[str] = "ping"


# Backend -> client ------------------------------------------------------------------------------


@dataclass
class Welcome(Message):
    """Answer to Hello: what this backend is and offers."""

    TYPE: ClassVar[str] = "welcome"
    backend_version: str = ""
    devices: list[str] = field(default_factory=list)
    """Torch devices with one job worker each, e.g. ["cuda:0"]."""
    presets: list[str] = field(default_factory=list)
    default_preset: str = ""
    models: list[str] = field(default_factory=list)
    """Models the pipeline uses (hub ids or local folders), when the pipeline names them."""
    limits: dict[str, int] = field(default_factory=LIMITS.to_dict)
    """The published limits (limits.Limits as a map)."""
    max_queued_per_client: int = 0
    """Most queued (not yet running) jobs of one client; a submit past it gets queue_full. 0: not said."""
    max_queued_total: int = 0
    """Most queued jobs of all clients together. 0: not said."""

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {
            "backend_version": self.backend_version,
            "devices": self.devices,
            "presets": self.presets,
            "default_preset": self.default_preset,
            "models": self.models,
            "limits": self.limits,
            "max_queued_per_client": self.max_queued_per_client,
            "max_queued_total": self.max_queued_total,
        }

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> Welcome:
        limits = read_map(body, "limits", {})
        return cls(
            backend_version=read_str(body, "backend_version", ""),
            devices=read_str_list(body, "devices", []),
            presets=read_str_list(body, "presets", []),
            default_preset=read_str(body, "default_preset", ""),
            models=read_str_list(body, "models", []),
            limits={k: v for k, v in limits.items() if isinstance(k, str) and isinstance(v, int)},
            max_queued_per_client=read_int(body, "max_queued_per_client", 0),
            max_queued_total=read_int(body, "max_queued_total", 0),
            **common,
        )


@dataclass
class Accepted(Message):
    """A submit or resume was queued: job_id is the job's id."""

    TYPE: ClassVar[str] = "accepted"
    queue_position: int = 0
    """Jobs ahead of this one in the queue when it was accepted."""

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {"queue_position": self.queue_position}

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> Accepted:
        return cls(queue_position=read_int(body, "queue_position", 0), **common)


MEMORY_NEEDED_GB = "memory_needed_gb"
DEVICE_MEMORY_GB = "device_memory_gb"
"""The two losses of a job's first progress event (step 0 of 0) when its preset needs more GPU memory
than the card it runs on has: the preset's estimated peak and the card's memory, in GB."""


@dataclass
class Progress(Message):
    """Event: one optimisation step of a stage, with losses and an optional preview image."""

    TYPE: ClassVar[str] = "progress"
    IS_EVENT: ClassVar[bool] = True
    stage: str = "reference"
    step: int = 0
    total: int = 0
    losses: dict[str, float] = field(default_factory=dict)
    """Loss terms by name; may be NaN or infinite when an optimisation diverged."""
    preview_png: bytes | None = None
    """A PNG of the current state seen from the reference camera, when the pipeline sends one."""

    def body(self, w: FrameWriter) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stage": self.stage,
            "step": self.step,
            "total": self.total,
            "losses": {k: float(v) for k, v in self.losses.items()},
        }
        if self.preview_png is not None:
            out["preview_png"] = w.blob(self.preview_png)
        return out

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> Progress:
        losses = read_map(body, "losses", {})
        if len(losses) > MAX_OPTIONS:
            raise LimitExceeded("progress.losses has too many entries")
        clean: dict[str, float] = {}
        for k, v in losses.items():
            # NaN and infinity are allowed: they tell the artist the optimisation diverged.
            if not isinstance(k, str) or len(k) > MAX_NAME_CHARS:
                raise ValidationError("progress.losses keys must be short strings")
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ValidationError(f"progress.losses[{k!r}] must be a number")
            clean[k] = float(v)
        png = (
            r.blob(body["preview_png"], "progress.preview_png")
            if body.get("preview_png") is not None
            else None
        )
        if png is not None and png[:8] != b"\x89PNG\r\n\x1a\n":
            raise ValidationError("progress.preview_png is not a PNG file")
        return cls(
            stage=read_stage(body, "stage"),
            step=read_int(body, "step"),
            total=read_int(body, "total"),
            losses=clean,
            preview_png=png,
            **common,
        )


@dataclass
class StageResult(Message):
    """Event: the mesh (with its textures) a stage ended with."""

    TYPE: ClassVar[str] = "stage_result"
    IS_EVENT: ClassVar[bool] = True
    stage: str = "reference"
    index: int = 0
    """Position of the stage among the stages this job runs, from 0."""
    mesh: MeshPayload = field(
        default_factory=lambda: MeshPayload(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32))
    )

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {"stage": self.stage, "index": self.index, "mesh": mesh_to_wire(self.mesh, w)}

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> StageResult:
        return cls(
            stage=read_stage(body, "stage"),
            index=read_int(body, "index", hi=len(STAGES)),
            mesh=mesh_from_wire(_get(body, "mesh", _MISSING), r, require_faces=False),
            **common,
        )


@dataclass
class Paused(Message):
    """Event: the job stopped at a stage gate after `stage`; send Resume to continue."""

    TYPE: ClassVar[str] = "paused"
    IS_EVENT: ClassVar[bool] = True
    stage: str = "reference"

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {"stage": self.stage}

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> Paused:
        return cls(stage=read_stage(body, "stage"), **common)


@dataclass
class Resumed(Message):
    """Event: a paused or interrupted job was queued again (after Resume, or a backend restart)."""

    TYPE: ClassVar[str] = "resumed"
    IS_EVENT: ClassVar[bool] = True
    with_edited_mesh: bool = False

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {"with_edited_mesh": self.with_edited_mesh}

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> Resumed:
        return cls(with_edited_mesh=read_bool(body, "with_edited_mesh", False), **common)


@dataclass
class Done(Message):
    """Event (final): the job finished; every stage result was sent before it."""

    TYPE: ClassVar[str] = "done"
    IS_EVENT: ClassVar[bool] = True


@dataclass
class Failed(Message):
    """Event (final): the job failed. code is machine-readable (e.g. out_of_memory), message is for people."""

    TYPE: ClassVar[str] = "failed"
    IS_EVENT: ClassVar[bool] = True
    code: str = "internal_error"
    message: str = ""

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> Failed:
        return cls(
            code=read_str(body, "code", "internal_error", max_chars=MAX_ID_CHARS),
            message=read_str(body, "message", "", max_chars=MAX_MESSAGE_CHARS),
            **common,
        )


@dataclass
class Cancelled(Message):
    """Event (final): the job was cancelled."""

    TYPE: ClassVar[str] = "cancelled"
    IS_EVENT: ClassVar[bool] = True


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
            raise ValidationError("job info must be a map")
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


@dataclass
class JobList(Message):
    """Answer to ListJobs: one page of jobs, oldest first."""

    TYPE: ClassVar[str] = "job_list"
    jobs: list[JobInfo] = field(default_factory=list)
    next_page: str = ""
    """"" when this page ends the list; else the `page` to ask for next."""

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {"jobs": [j.to_wire() for j in self.jobs], "next_page": self.next_page}

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> JobList:
        return cls(
            jobs=[JobInfo.from_wire(j) for j in read_list(body, "jobs", [])],
            next_page=read_str(body, "next_page", "", max_chars=MAX_NAME_CHARS),
            **common,
        )


@dataclass
class Result(Message):
    """Answer to FetchResult: the job's state and its stage results from `first` on, in order, as many
    as fit in one message under the limits."""

    TYPE: ClassVar[str] = "result"
    state: str = "done"
    stage_results: list[StageResult] = field(default_factory=list)
    more_from: int = 0
    """0 when this part ends the list; else the `first` to ask for next."""

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {
            "state": self.state,
            "more_from": self.more_from,
            "stage_results": [
                {"stage": s.stage, "index": s.index, "seq": s.seq, "mesh": mesh_to_wire(s.mesh, w)}
                for s in self.stage_results
            ],
        }

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> Result:
        state = read_str(body, "state")
        if state not in JOB_STATES:
            raise ValidationError(f"result.state must be one of {JOB_STATES}, got {state!r}")
        results = []
        for d in read_list(body, "stage_results", [], max_items=len(STAGES) * 4):
            if not isinstance(d, dict):
                raise ValidationError("stage result must be a map")
            results.append(
                StageResult(
                    stage=read_stage(d, "stage"),
                    index=read_int(d, "index", hi=len(STAGES)),
                    mesh=mesh_from_wire(_get(d, "mesh", _MISSING), r, require_faces=False),
                    job_id=common.get("job_id", ""),
                    seq=read_int(d, "seq", 0),
                )
            )
        more_from = read_int(body, "more_from", 0, hi=MAX_LIST_ITEMS)
        return cls(state=state, stage_results=results, more_from=more_from, **common)


@dataclass
class Error(Message):
    """A request could not be served. code: an errors.ProtocolError code, or unknown_job, bad_state,
    busy; message says what to change."""

    TYPE: ClassVar[str] = "error"
    code: str = "protocol_error"
    message: str = ""

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> Error:
        return cls(
            code=read_str(body, "code", "protocol_error", max_chars=MAX_ID_CHARS),
            message=read_str(body, "message", "", max_chars=MAX_MESSAGE_CHARS),
            **common,
        )


@dataclass
class Pong(Message):
    """Answer to Ping."""

    TYPE: ClassVar[str] = "pong"


CLIENT_MESSAGES: tuple[type[Message], ...] = (
    Hello,
    Submit,
    Cancel,
    Resume,
    Attach,
    ListJobs,
    DeleteJob,
    FetchResult,
    Ping,
)
BACKEND_MESSAGES: tuple[type[Message], ...] = (
    Welcome,
    Accepted,
    Progress,
    StageResult,
    Paused,
    Resumed,
    Done,
    Failed,
    Cancelled,
    JobList,
    Result,
    Error,
    Pong,
)
MESSAGE_TYPES: dict[str, type[Message]] = {m.TYPE: m for m in CLIENT_MESSAGES + BACKEND_MESSAGES}
"""Every message type by its wire name."""
FINAL_EVENTS: frozenset[str] = frozenset({Done.TYPE, Failed.TYPE, Cancelled.TYPE})
