"""The job system: job states, the on-disk job store with its event logs, and the runner that calls
the pipeline.

Store layout, one folder per job (job ids never come from the wire as paths):

    STORE/<job_id>/state.json    state, prompt, stages done, error (rewritten atomically)
    STORE/<job_id>/spec.msg      the submit message as received (framed, see write_frames)
    STORE/<job_id>/events.log    every event, in seq order, as its encoded frames
    STORE/<job_id>/resume.msg    the pending resume message (edited mesh), until the job runs
    STORE/<job_id>/work/         the pipeline's own folder (checkpoints)

Every event goes to events.log before it is published, so a client that
reconnects and attaches with the last seq it saw gets everything after it, and
a restarted backend still serves finished results. Jobs that were queued or
running when the backend stopped are queued again and run with ResumePoint().
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.errors import ProtocolError, ValidationError
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.scene import MeshPayload

from .executor import Executor
from .pipeline_api import JobCancelled, JobFailed, Pipeline, ResumePoint, RunOutcome

log = logging.getLogger(__name__)

Publish = Callable[[str, int, list[bytes | memoryview]], None]
"""publish(job_id, seq, frames): hand an event to the server for live delivery. Must not block."""


class UnknownJob(ProtocolError):
    code = "unknown_job"


class BadJobState(ProtocolError):
    code = "bad_state"


class JobInterrupted(JobCancelled):
    """Raised by check_cancel when the backend shuts down: the job stays resumable, it is not cancelled."""


# --- framed records on disk ----------------------------------------------------------------------

_RECORD = struct.Struct("<4sIQ")  # magic, crc32 of payload, payload length
_MAGIC = b"DPEV"


def pack_frames(frames: Sequence[bytes | memoryview]) -> bytes:
    lens = struct.pack(f"<I{len(frames)}Q", len(frames), *(memoryview(f).nbytes for f in frames))
    return lens + b"".join(bytes(f) for f in frames)


def unpack_frames(payload: bytes | memoryview) -> list[memoryview]:
    view = memoryview(payload)
    (n,) = struct.unpack_from("<I", view, 0)
    lens = struct.unpack_from(f"<{n}Q", view, 4)
    pos = 4 + 8 * n
    frames = []
    for length in lens:
        frames.append(view[pos : pos + length])
        pos += length
    return frames


def record(frames: Sequence[bytes | memoryview]) -> bytes:
    payload = pack_frames(frames)
    return _RECORD.pack(_MAGIC, zlib.crc32(payload), len(payload)) + payload


def write_frames_atomic(path: Path, frames: Sequence[bytes | memoryview]) -> None:
    _write_atomic(path, record(frames))


def read_frames(path: Path) -> list[memoryview]:
    data = path.read_bytes()
    records = list(_scan_records(data))
    if not records:
        raise OSError(f"{path} holds no complete record")
    offset, length = records[0]
    return unpack_frames(memoryview(data)[offset : offset + length])


def _scan_records(data: bytes) -> Iterator[tuple[int, int]]:
    """(payload offset, payload length) of every intact record; stops at a torn or corrupt tail."""
    pos = 0
    while pos + _RECORD.size <= len(data):
        magic, crc, length = _RECORD.unpack_from(data, pos)
        start = pos + _RECORD.size
        if magic != _MAGIC or start + length > len(data) or zlib.crc32(data[start : start + length]) != crc:
            return
        yield start, length
        pos = start + length


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- jobs ----------------------------------------------------------------------------------------


@dataclass
class EventIndex:
    seq: int
    type: str
    offset: int
    """Payload offset in events.log."""
    length: int


@dataclass
class Job:
    """One job, in memory. The store folder holds everything needed to rebuild it."""

    job_id: str
    spec: JobSpec
    folder: Path
    state: str = "queued"
    created_unix: float = field(default_factory=time.time)
    error: str = ""
    stages_done: list[str] = field(default_factory=list)
    resume: ResumePoint | None = None
    """What the next run starts from: None for a fresh job, ResumePoint(...) to continue one."""
    events: list[EventIndex] = field(default_factory=list)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0

    @property
    def work_dir(self) -> Path:
        return self.folder / "work"

    def info(self) -> m.JobInfo:
        return m.JobInfo(
            job_id=self.job_id,
            state=self.state,
            prompt=self.spec.prompt,
            mode=self.spec.mode,
            preset=self.spec.preset,
            created_unix=self.created_unix,
            last_seq=self.last_seq,
            stages_done=list(self.stages_done),
            error=self.error,
        )


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


class JobStore:
    """The job folders under one root. Writes are atomic (state files) or append-only with checksums (events)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def create(self, spec: JobSpec, submit_frames: Sequence[bytes | memoryview]) -> Job:
        job_id = new_job_id()
        folder = self.root / job_id
        folder.mkdir()
        (folder / "work").mkdir()
        job = Job(job_id=job_id, spec=spec, folder=folder)
        write_frames_atomic(folder / "spec.msg", submit_frames)
        self.save_state(job)
        return job

    def save_state(self, job: Job) -> None:
        state = {
            "job_id": job.job_id,
            "state": job.state,
            "created_unix": job.created_unix,
            "error": job.error,
            "stages_done": job.stages_done,
        }
        _write_atomic(job.folder / "state.json", json.dumps(state, indent=1).encode())

    def append_event(
        self, job: Job, seq: int, kind: str, frames: Sequence[bytes | memoryview], durable: bool
    ) -> None:
        rec = record(frames)
        path = job.folder / "events.log"
        with open(path, "ab") as f:
            offset = f.tell()
            f.write(rec)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        job.events.append(EventIndex(seq, kind, offset + _RECORD.size, len(rec) - _RECORD.size))

    def read_events(self, job: Job, entries: Sequence[EventIndex]) -> Iterator[tuple[int, list[memoryview]]]:
        if not entries:
            return
        with open(job.folder / "events.log", "rb") as f:
            for e in entries:
                f.seek(e.offset)
                yield e.seq, unpack_frames(f.read(e.length))

    def save_resume(self, job: Job, mesh: MeshPayload | None) -> None:
        write_frames_atomic(job.folder / "resume.msg", codec.encode(m.Resume(mesh=mesh, job_id=job.job_id)))

    def clear_resume(self, job: Job) -> None:
        (job.folder / "resume.msg").unlink(missing_ok=True)

    def load_all(self) -> list[Job]:
        jobs = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            try:
                jobs.append(self._load(folder))
            except (OSError, ValueError, KeyError, ProtocolError) as exc:
                log.warning("skipping unreadable job folder %s: %s", folder, exc)
        return jobs

    def _load(self, folder: Path) -> Job:
        state = json.loads((folder / "state.json").read_text())
        submit = codec.decode(read_frames(folder / "spec.msg"))
        if not isinstance(submit, m.Submit):
            raise ValueError("spec.msg does not hold a submit message")
        job = Job(
            job_id=folder.name,
            spec=submit.spec,
            folder=folder,
            state=state["state"],
            created_unix=float(state["created_unix"]),
            error=state.get("error", ""),
            stages_done=list(state.get("stages_done", [])),
        )
        log_path = folder / "events.log"
        if log_path.exists():
            data = log_path.read_bytes()
            end = 0
            for offset, length in _scan_records(data):
                header = codec.decode_header(unpack_frames(memoryview(data)[offset : offset + length]))
                job.events.append(EventIndex(int(header["seq"]), str(header["type"]), offset, length))
                end = offset + length
            if end < len(data):
                log.warning("job %s: dropping a torn event record at the end of its log", job.job_id)
                with open(log_path, "r+b") as f:
                    f.truncate(end)
        resume_path = folder / "resume.msg"
        if resume_path.exists():
            msg = codec.decode(read_frames(resume_path))
            if isinstance(msg, m.Resume):
                job.resume = ResumePoint(edited_mesh=msg.mesh)
        return job


# --- running jobs --------------------------------------------------------------------------------


OOM_HINT = (
    "The GPU ran out of memory. Try a smaller preset, fewer or smaller cameras, or close other programs "
    "using the GPU, then submit again."
)


def classify_failure(exc: BaseException) -> tuple[str, str]:
    """(code, message) for the failed event of a job whose pipeline raised exc."""
    if isinstance(exc, JobFailed):
        return exc.code, exc.message
    if isinstance(exc, ValidationError):
        return exc.code, str(exc)
    if (
        type(exc).__name__ == "OutOfMemoryError"
        or isinstance(exc, MemoryError)
        or "out of memory" in str(exc)
    ):
        return "out_of_memory", f"{exc} {OOM_HINT}".strip()
    return "internal_error", f"{type(exc).__name__}: {exc}"


class StoreJobContext:
    """pipeline_api.JobContext for one run of a job: every report becomes a stored, published event."""

    def __init__(self, manager: JobManager, job: Job, device: str) -> None:
        self._manager = manager
        self._job = job
        self.job_id = job.job_id
        self.work_dir = job.work_dir
        self.device = device

    def progress(
        self,
        stage: str,
        step: int,
        total: int,
        losses: dict[str, float] | None = None,
        preview_png: bytes | None = None,
    ) -> None:
        msg = m.Progress(
            stage=stage, step=int(step), total=int(total), losses=dict(losses or {}), preview_png=preview_png
        )
        self._manager.emit(self._job, msg)

    def stage_result(self, stage: str, index: int, mesh: MeshPayload) -> None:
        mesh.validate(require_faces=False)
        self._manager.emit(self._job, m.StageResult(stage=stage, index=int(index), mesh=mesh))
        if stage not in self._job.stages_done:
            self._job.stages_done.append(stage)
            self._manager.store.save_state(self._job)

    def check_cancel(self) -> None:
        if self._job.cancel_requested.is_set():
            raise JobCancelled(f"job {self.job_id} was cancelled")
        if self._manager.stopping.is_set():
            raise JobInterrupted(f"backend stopping; job {self.job_id} will resume after a restart")


class JobManager:
    """Owns every job: submit, cancel, resume, attach replay, fetch; runs jobs through an Executor."""

    def __init__(
        self,
        store: JobStore,
        executor: Executor,
        pipelines: dict[str, Pipeline],
        publish: Publish,
    ) -> None:
        """pipelines: one Pipeline per executor device (pipelines[device] runs that device's jobs)."""
        self.store = store
        self.executor = executor
        self.pipelines = pipelines
        self.publish = publish
        self.jobs: dict[str, Job] = {}
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def checker(self) -> Pipeline:
        """The pipeline that checks specs at submit time (no GPU work)."""
        return next(iter(self.pipelines.values()))

    # lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the store, queue again what was queued or interrupted, and start the executor."""
        for job in self.store.load_all():
            self.jobs[job.job_id] = job
        self.executor.start(self.run_job)
        for job in sorted(self.jobs.values(), key=lambda j: j.created_unix):
            if job.state in ("queued", "running"):
                interrupted = job.state == "running"
                job.state = "queued"
                if job.resume is None and (interrupted or job.events):
                    job.resume = ResumePoint()
                self.store.save_state(job)
                if interrupted:
                    log.info("job %s was interrupted by a restart; queued to resume", job.job_id)
                    self.emit(job, m.Resumed(with_edited_mesh=False))
                self.executor.enqueue(job.job_id)
        log.info("job store %s: %d jobs", self.store.root, len(self.jobs))

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stopping.set()
        self.executor.shutdown(timeout_s)

    # requests from clients (server thread) ------------------------------------------------------

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise UnknownJob(f"no job {job_id!r} on this backend")
        return job

    def submit(self, spec: JobSpec, submit_frames: Sequence[bytes | memoryview]) -> tuple[Job, int]:
        """Check the spec with the pipeline (raises ValidationError), store it and queue it."""
        self.checker.check(spec)
        job = self.store.create(spec, submit_frames)
        with self._lock:
            self.jobs[job.job_id] = job
        ahead = self.executor.enqueue(job.job_id)
        log.info("job %s queued (%d ahead): %r", job.job_id, ahead, spec.prompt[:80])
        return job, ahead

    def cancel(self, job_id: str) -> None:
        job = self.get(job_id)
        with job.lock:
            state = job.state
            if state in m.FINAL_STATES:
                raise BadJobState(f"job {job_id} is already {state}")
            job.cancel_requested.set()
            if state == "running":
                # The worker sees the flag at the pipeline's next check_cancel (within one step).
                return
            job.state = "cancelled"
        self.store.clear_resume(job)
        self.store.save_state(job)
        self.emit(job, m.Cancelled())

    def resume(self, job_id: str, mesh: MeshPayload | None) -> int:
        job = self.get(job_id)
        with job.lock:
            if job.state != "paused":
                raise BadJobState(f"job {job_id} is {job.state}, not paused; only a paused job can resume")
            job.state = "queued"
            job.resume = ResumePoint(edited_mesh=mesh)
        self.store.save_resume(job, mesh)
        self.store.save_state(job)
        self.emit(job, m.Resumed(with_edited_mesh=mesh is not None))
        return self.executor.enqueue(job.job_id)

    def events_after(self, job_id: str, last_seq: int) -> Iterator[tuple[int, list[memoryview]]]:
        job = self.get(job_id)
        with job.lock:
            entries = [e for e in job.events if e.seq > last_seq]
        return self.store.read_events(job, entries)

    def event_type(self, job_id: str, seq: int) -> str:
        """The message type of a stored event ("" if there is none)."""
        job = self.jobs.get(job_id)
        if job is None or not 1 <= seq <= len(job.events):
            return ""
        entry = job.events[seq - 1]  # seqs run 1, 2, 3 ... without gaps
        return entry.type if entry.seq == seq else ""

    def stage_results(self, job_id: str) -> tuple[str, list[m.StageResult]]:
        job = self.get(job_id)
        with job.lock:
            entries = [e for e in job.events if e.type == m.StageResult.TYPE]
        results = []
        for _, frames in self.store.read_events(job, entries):
            msg = codec.decode(frames)
            if isinstance(msg, m.StageResult):
                results.append(msg)
        return job.state, results

    def list(self) -> list[m.JobInfo]:
        with self._lock:
            jobs = sorted(self.jobs.values(), key=lambda j: (j.created_unix, j.job_id))
        return [j.info() for j in jobs]

    # events --------------------------------------------------------------------------------------

    def emit(self, job: Job, msg: m.Message) -> int:
        """Give msg the job's next seq, store it, then publish it. Thread-safe; never blocks on clients."""
        with job.lock:
            seq = job.last_seq + 1
            msg.job_id, msg.seq = job.job_id, seq
            msg.msg_id = f"{job.job_id}:{seq}"
            frames = codec.encode(msg)
            try:
                # Only events every client can decode are stored: a bad one would be replayed forever.
                codec.decode(frames)
            except ProtocolError as exc:
                raise ValidationError(f"the pipeline reported an invalid {msg.TYPE}: {exc}") from exc
            durable = msg.TYPE != m.Progress.TYPE
            self.store.append_event(job, seq, msg.TYPE, frames, durable=durable)
        self.publish(job.job_id, seq, frames)
        return seq

    # the worker side -----------------------------------------------------------------------------

    def run_job(self, job_id: str, device: str) -> None:
        """Executor callback: run one job to its next rest (done, failed, cancelled, paused, interrupted)."""
        job = self.jobs.get(job_id)
        if job is None:
            log.warning("executor asked for unknown job %s", job_id)
            return
        with job.lock:
            if job.state != "queued":
                return  # cancelled (or resumed twice) while it waited
            if self.stopping.is_set():
                return
            job.state = "running"
            resume = job.resume
        self.store.save_state(job)
        log.info("job %s running on %s%s", job_id, device, " (resuming)" if resume else "")
        ctx = StoreJobContext(self, job, device)
        pipeline = self.pipelines[device]
        try:
            outcome: RunOutcome = pipeline.run(job.spec, ctx, resume)
        except JobInterrupted:
            log.info("job %s interrupted by shutdown; it resumes after a restart", job_id)
            return  # state stays "running": start() queues it again
        except JobCancelled:
            self._finish(job, "cancelled", m.Cancelled())
            return
        except Exception as exc:  # a pipeline failure ends this job only
            code, message = classify_failure(exc)
            if code == "internal_error":
                log.exception("job %s failed", job_id)
            else:
                log.warning("job %s failed (%s): %s", job_id, code, message)
            failed = m.Failed(code=code[: m.MAX_ID_CHARS], message=message[: m.MAX_MESSAGE_CHARS])
            self._finish(job, "failed", failed, error=message)
            return
        if outcome.paused_after is not None and job.cancel_requested.is_set():
            # Cancelled during the stage that ended at the gate: the cancel wins over the pause.
            self._finish(job, "cancelled", m.Cancelled())
        elif outcome.paused_after is not None:
            with job.lock:
                job.state = "paused"
                job.resume = None
            self.store.clear_resume(job)
            self.store.save_state(job)
            self.emit(job, m.Paused(stage=outcome.paused_after))
            log.info("job %s paused after %s", job_id, outcome.paused_after)
        else:
            self._finish(job, "done", m.Done())

    def _finish(self, job: Job, state: str, event: m.Message, error: str = "") -> None:
        with job.lock:
            job.state = state
            job.error = error
            job.resume = None
        self.store.clear_resume(job)
        self.store.save_state(job)
        self.emit(job, event)
        log.info("job %s %s", job.job_id, state)
