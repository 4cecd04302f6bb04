"""A job as the store holds it in memory: the Job, the index of its events, and the events the store
can rebuild from the job's state when a record is lost (job_store.py writes them, store_repair.py
rebuilds a Job from its folder)."""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.errors import INTERNAL_ERROR, ProtocolError
from dreampolish.protocol.fields import MAX_ID_CHARS, MAX_MESSAGE_CHARS
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.payloads import JobInfo

from .pipeline_api import ResumePoint
from .store_records import read_frames


@dataclass
class EventIndex:
    """Where one event of a job is kept: a record in events.log or a result file, or memory."""

    seq: int
    type: str
    offset: int
    """Payload offset in its file."""
    length: int
    source: Path | None = None
    """The file holding the record; None = the job's events.log."""
    frames: list[bytes | memoryview] | None = None
    """The event itself, for one the store could not take (disk full): served from memory."""


@dataclass
class Job:
    """One job, in memory. The store folder holds everything needed to rebuild it."""

    job_id: str
    spec: JobSpec
    folder: Path
    state: str = "queued"
    spec_on_disk: bool = False
    """True when spec holds no input mesh or image because spec.msg has them (JobStore.full_spec reads it)."""
    owner: str = ""
    """The submitting client's key (ZAP User-Id); "" without CURVE (the one user)."""
    created_unix: float = field(default_factory=time.time)
    error: str = ""
    error_code: str = ""
    stages_done: list[str] = field(default_factory=list)
    resume: ResumePoint | None = None
    """What the next run starts from: None for a fresh job, ResumePoint(...) to continue one."""
    events: list[EventIndex] = field(default_factory=list)
    """Every event, in seq order, seqs 1, 2, 3 ... without gaps."""
    results: dict[tuple[str, int], int] = field(default_factory=dict)
    """(stage, index) -> seq of its recorded stage result: a stage is recorded once."""
    seq_mark: int = 0
    """No published seq exceeds this (kept in state.json, raised in steps before a seq passes it)."""
    damage: list[str] = field(default_factory=list)
    """What the store lost of this job, for its one-line report."""
    live_damage: set[int] = field(default_factory=set)
    """Seqs whose records were found damaged while the backend ran (rebuilt or sent as placeholders)."""
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0

    @property
    def work_dir(self) -> Path:
        return self.folder / "work"

    @property
    def results_dir(self) -> Path:
        return self.folder / "results"

    def damage_line(self) -> str:
        notes = list(self.damage)
        if self.live_damage:
            notes.append(f"events {spans(sorted(self.live_damage))} damaged while the backend ran (rebuilt)")
        return ("store damage: " + "; ".join(notes)) if notes else ""

    def info(self) -> JobInfo:
        error = self.error
        if self.damage or self.live_damage:
            error = f"{error} ({self.damage_line()})" if error else self.damage_line()
        return JobInfo(
            job_id=self.job_id,
            state=self.state,
            prompt=self.spec.prompt,
            mode=self.spec.mode,
            preset=self.spec.preset,
            created_unix=self.created_unix,
            last_seq=self.last_seq,
            stages_done=list(self.stages_done),
            error=error[: MAX_MESSAGE_CHARS],
        )


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


SEQ_STEP = 128
"""How far the seq mark runs ahead: one fsynced state.json write (about 10 ms) per this many events,
and at most this many placeholders after a damaged log tail."""


def spans(seqs: Sequence[int]) -> str:
    """[3, 4, 5, 9] -> "3-5, 9"."""
    parts: list[str] = []
    for s in sorted(seqs):
        if parts and s == int(parts[-1].rsplit("-", 1)[-1]) + 1:
            parts[-1] = parts[-1].split("-")[0] + f"-{s}"
        else:
            parts.append(str(s))
    return ", ".join(parts)


def keep_mesh_on_disk(job: Job) -> None:
    """Drop the input mesh and the reference image from the job in memory once spec.msg holds them: a
    submitted mesh or picture (tens to hundreds of MB, viewing the received frames) is not held while
    the job waits, nor after it is cancelled or ends; the run reads them back (JobStore.full_spec)."""
    if job.spec.input_mesh is not None or job.spec.image is not None or job.spec.views:
        job.spec = dataclasses.replace(job.spec, input_mesh=None, image=None, views=[])
        job.spec_on_disk = True


def read_spec(folder: Path) -> tuple[JobSpec | None, str]:
    try:
        submit = codec.decode(read_frames(folder / "spec.msg"))
    except FileNotFoundError:
        return None, "spec.msg missing"
    except (OSError, ValueError, ProtocolError):
        return None, "spec.msg damaged"
    if not isinstance(submit, m.Submit):
        return None, "spec.msg holds no submit message"
    return submit.spec, ""


def rebuilt_event(job: Job, kind: str) -> m.Message | None:
    """The event of type kind as the job's state says it was (None when the state cannot say)."""
    if kind == m.Done.TYPE:
        return m.Done()
    if kind == m.Cancelled.TYPE:
        return m.Cancelled()
    if kind == m.Failed.TYPE:
        return m.Failed(
            code=(job.error_code or INTERNAL_ERROR)[: MAX_ID_CHARS],
            message=(job.error or "the failure message was lost")[: MAX_MESSAGE_CHARS],
        )
    if kind == m.Paused.TYPE and job.stages_done:
        return m.Paused(stage=job.stages_done[-1])
    if kind == m.Resumed.TYPE:
        return m.Resumed(with_edited_mesh=False)
    return None


def placeholder(job: Job, seq: int) -> m.Message:
    """What stands in for a lost event: a progress report without steps, so the seqs stay contiguous."""
    msg = m.Progress(stage=job.stages_done[-1] if job.stages_done else "reference", step=0, total=0)
    msg.job_id, msg.seq, msg.msg_id = job.job_id, seq, f"{job.job_id}:{seq}"
    return msg
