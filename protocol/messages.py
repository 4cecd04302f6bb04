"""Every message of the protocol, as typed dataclasses, and their header bodies.

A message on the wire is a header (a msgpack map, see codec.py) plus binary
frames. The header's common fields are the protocol version, the message type,
a message id, `re` (the id of the request a reply answers), and for job events
the job id and the job's sequence number. Each class below owns the rest: its
`body` map, with arrays and blobs moved into frames (frames.py).

Readers tolerate unknown fields everywhere. Every field read from the wire is
checked (fields.py for single fields, payloads.py for meshes, cameras and the job
spec) and raises a typed error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .errors import INTERNAL_ERROR, PROTOCOL_ERROR, LimitExceeded, ValidationError
from .fields import (
    MAX_ID_CHARS,
    MAX_LIST_ITEMS,
    MAX_MESSAGE_CHARS,
    MAX_NAME_CHARS,
    MAX_OPTIONS,
    read_bool,
    read_int,
    read_list,
    read_map,
    read_required,
    read_stage,
    read_stage_chains,
    read_str,
    read_str_list,
)
from .frames import FrameReader, FrameWriter
from .job import MAX_STAGES, JobSpec
from .limits import LIMITS
from .payloads import (
    JOB_STATES,
    JobInfo,
    mesh_from_wire,
    mesh_to_wire,
    refuse_unknown_mesh_fields,
    spec_from_wire,
    spec_to_wire,
)
from .scene import MeshPayload
from .wire_types import wire_type

# --- messages ------------------------------------------------------------------------------------


@dataclass
class Message:
    """Base of every message. Subclasses set TYPE and map their own fields to and from `body`."""

    TYPE: ClassVar[str] = ""
    IS_EVENT: ClassVar[bool] = False
    """Job events carry job_id and seq, are stored in the job's event log and replayed on attach."""
    BODY_FIELDS: ClassVar[tuple[str, ...]] = ()
    """A request's body fields: the backend refuses a request whose body holds any other (codec.decode)."""

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
    BODY_FIELDS: ClassVar[tuple[str, ...]] = ("client",)
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
    BODY_FIELDS: ClassVar[tuple[str, ...]] = ("spec",)
    spec: JobSpec = field(default_factory=lambda: JobSpec(prompt=""))

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {"spec": spec_to_wire(self.spec, w)}

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> Submit:
        return cls(spec=spec_from_wire(read_required(body, "spec"), r), **common)


@dataclass
class Cancel(Message):
    """Cancel job_id: a queued or paused job at once, a running one within one optimisation step."""

    TYPE: ClassVar[str] = "cancel"


@dataclass
class Resume(Message):
    """Continue paused job job_id, optionally from an edited mesh. Answered by Accepted or Error."""

    TYPE: ClassVar[str] = "resume"
    BODY_FIELDS: ClassVar[tuple[str, ...]] = ("mesh",)
    mesh: MeshPayload | None = None

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {"mesh": mesh_to_wire(self.mesh, w)} if self.mesh is not None else {}

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> Resume:
        refuse_unknown_mesh_fields(body.get("mesh"), "resume.mesh")
        mesh = mesh_from_wire(body["mesh"], r) if body.get("mesh") is not None else None
        return cls(mesh=mesh, **common)


@dataclass
class Attach(Message):
    """Follow job job_id: the backend replays every stored event with seq > last_seq, then streams new ones."""

    TYPE: ClassVar[str] = "attach"
    BODY_FIELDS: ClassVar[tuple[str, ...]] = ("last_seq",)
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
    BODY_FIELDS: ClassVar[tuple[str, ...]] = ("page", "limit")
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
    BODY_FIELDS: ClassVar[tuple[str, ...]] = ("first",)
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
    stage_chains: dict[str, list[str]] = field(default_factory=dict)
    """Job mode -> the stages a job of that mode runs, in order, that a request may name (`stages`,
    `pause_after`): its pipeline's runners define them. Stages that follow by themselves (export after
    texture) are left out. Empty from a 1.0 backend, which does not say."""
    preset_memory_gb: dict[str, float] = field(default_factory=dict)
    """Preset -> the GPU memory it needs on this backend's card, in GB (its dry-run peak, with the idle priors
    in host memory where the backend offloads them for that card), for presets the backend has a figure
    of. Empty from a backend before 1.2, or one without figures."""

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
            "stage_chains": self.stage_chains,
            "preset_memory_gb": self.preset_memory_gb,
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
            stage_chains=read_stage_chains(body, "stage_chains"),
            preset_memory_gb={k: float(v) for k, v in read_map(body, "preset_memory_gb", {}).items()
                              if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)},
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
PRIORS_OFFLOADED = "priors_offloaded"
"""A loss of a job's first progress event (step 0 of 0), 1.0 when the preset fits the job's card only with the
priors a stage does not use in host memory, and runs so (preset field `offload`: "auto"); each stage switch
then moves models between the card and host memory (BENCHMARKS.md)."""
SLOW_RASTERIZER = "slow_rasterizer"
"""A loss of a job's first progress event (step 0 of 0), 1.0 when the fast CUDA rasteriser (nvdiffrast) is not
usable on the job's card and meshes are rasterised with the slower PyTorch one (the backend's log says why)."""
REMESH_FALLBACK = "remesh_fallback"
"""A loss of the finish stage's progress, 1.0 when the remesher failed, ran past its time limit or missed the
face budget by more than the tolerance, and quadric decimation made the mesh instead (the backend's log says
which)."""
BUDGET_CAPPED = "budget_capped"
"""A loss of the finish stage's progress, 1.0 when the face budget was more than the polished mesh's own face
count and the stage used that count instead."""


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
            index=read_int(body, "index", hi=MAX_STAGES),
            mesh=mesh_from_wire(read_required(body, "mesh"), r, require_faces=False),
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
    code: str = INTERNAL_ERROR
    message: str = ""

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> Failed:
        return cls(
            code=read_str(body, "code", INTERNAL_ERROR, max_chars=MAX_ID_CHARS),
            message=read_str(body, "message", "", max_chars=MAX_MESSAGE_CHARS),
            **common,
        )


@dataclass
class Cancelled(Message):
    """Event (final): the job was cancelled."""

    TYPE: ClassVar[str] = "cancelled"
    IS_EVENT: ClassVar[bool] = True


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
        for d in read_list(body, "stage_results", [], max_items=MAX_STAGES * 4):
            if not isinstance(d, dict):
                raise ValidationError(f"stage result must be a map, got {wire_type(d)}")
            results.append(
                StageResult(
                    stage=read_stage(d, "stage"),
                    index=read_int(d, "index", hi=MAX_STAGES),
                    mesh=mesh_from_wire(read_required(d, "mesh"), r, require_faces=False),
                    job_id=common.get("job_id", ""),
                    seq=read_int(d, "seq", 0),
                )
            )
        more_from = read_int(body, "more_from", 0, hi=MAX_LIST_ITEMS)
        return cls(state=state, stage_results=results, more_from=more_from, **common)


@dataclass
class Error(Message):
    """A request could not be served. code: one of errors.ERROR_CODES (README.md lists them); message
    says what to change."""

    TYPE: ClassVar[str] = "error"
    code: str = PROTOCOL_ERROR
    message: str = ""

    def body(self, w: FrameWriter) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_body(cls, body: dict[str, Any], r: FrameReader, **common: Any) -> Error:
        return cls(
            code=read_str(body, "code", PROTOCOL_ERROR, max_chars=MAX_ID_CHARS),
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
