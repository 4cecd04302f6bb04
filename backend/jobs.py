"""The job system: job states and the runner that calls the pipeline; the store is job_store.py.

Every event goes to the store before it is published, so a client that
reconnects and attaches with the last seq it saw gets everything after it, and
a restarted backend still serves finished results. Jobs that were queued or
running when the backend stopped are queued again and run with ResumePoint().
A stage result is recorded once per (stage, index): a pipeline that reports a
stage again after a restart (restored from its checkpoint) sends nothing twice.
"""

from __future__ import annotations

import collections
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.errors import (
    BAD_STATE,
    DISK_FULL,
    INTERNAL_ERROR,
    NOT_YOUR_JOB,
    OUT_OF_MEMORY,
    QUEUE_FULL,
    UNKNOWN_JOB,
    ProtocolError,
    ValidationError,
)
from dreampolish.protocol.fields import MAX_ID_CHARS, MAX_MESSAGE_CHARS
from dreampolish.protocol.job import JobSpec, check_mesh_to_refine
from dreampolish.protocol.payloads import FINAL_STATES, JobInfo
from dreampolish.protocol.scene import MeshPayload

from .executor import Executor, WorkerLost
from .failures import DISK_FULL_HINT, classify_failure, release_memory
from .job_store import JobStore
from .pipeline_api import JobCancelled, Pipeline, ResumePoint, RunOutcome
from .store_records import DiskFull, StoreError
from .stored_job import SEQ_STEP, Job

__all__ = ["DiskFull", "Job", "JobManager", "JobStore", "StoreError", "classify_failure"]

log = logging.getLogger(__name__)

Publish = Callable[[str, int, list[bytes | memoryview]], None]
"""publish(job_id, seq, frames): hand an event to the server for live delivery. Must not block."""


class UnknownJob(ProtocolError):
    code = UNKNOWN_JOB


class BadJobState(ProtocolError):
    code = BAD_STATE


class NotYourJob(ProtocolError):
    """The job belongs to another client key (only its owner or an admin may touch it)."""

    code = NOT_YOUR_JOB


class QueueFull(ProtocolError):
    """The client's queue, or the backend's, holds as many queued jobs as it may; nothing was lost."""

    code = QUEUE_FULL


@dataclass(frozen=True)
class QueueLimits:
    """Queued (not yet running) jobs a backend takes: per client key and overall (announced in welcome)."""

    per_client: int = 100
    total: int = 1000


LISTING_PAGE = 200
"""Most jobs in one job_list page: with prompt and error cut to LISTING_TEXT_CHARS (4 bytes a character
at worst in UTF-8), 200 rows stay under half of max_header_bytes (1 MiB)."""
LISTING_TEXT_CHARS = 200


class JobInterrupted(JobCancelled):
    """Raised by check_cancel when the backend shuts down: the job stays resumable, it is not cancelled."""


def _parse_page_token(token: str) -> tuple[float, str]:
    """list_jobs' page token "CREATED/JOB_ID" (from the previous job_list) -> its sort key."""
    if not token:
        return (float("-inf"), "")
    created, sep, job_id = token.partition("/")
    try:
        return (float(created), job_id) if sep else _bad_token(token)
    except ValueError:
        return _bad_token(token)


def _bad_token(token: str) -> tuple[float, str]:
    raise ValidationError(f"list_jobs: page {token[:80]!r} is not a page token from a job_list reply")


# --- running jobs --------------------------------------------------------------------------------


class StoreJobContext:
    """pipeline_api.JobContext for one run of a job: every report becomes a stored, published event."""

    def __init__(self, manager: JobManager, job: Job, device: str) -> None:
        self._manager = manager
        self._job = job
        self.stage = ""
        """The stage that reported last (a progress or its result), for a failure's words."""
        self.stage_done = False
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
        self.stage, self.stage_done = stage, False
        msg = m.Progress(
            stage=stage, step=int(step), total=int(total), losses=dict(losses or {}), preview_png=preview_png
        )
        self._manager.emit(self._job, msg)

    def stage_result(self, stage: str, index: int, mesh: MeshPayload) -> None:
        """Durable and idempotent per (stage, index): reporting a recorded stage again sends nothing."""
        mesh.validate(require_faces=False)
        self.stage, self.stage_done = stage, True
        self._manager.emit(self._job, m.StageResult(stage=stage, index=int(index), mesh=mesh))

    def where(self, spec: JobSpec) -> str:
        """' in stage nerf at nerf.batch_size=64, nerf.render.n_samples=1024' (the request's options for
        that stage, else its preset): where a job was when it failed."""
        if not self.stage:
            return f" at preset {spec.preset!r}"
        stage = self.stage
        place = f" in the stage after {stage}" if self.stage_done else f" in stage {stage}"
        options = [f"{k}={v!r}" for k, v in sorted(spec.options.items()) if k.startswith(f"{stage}.")]
        return place + (f" at {', '.join(options)}" if options and not self.stage_done else f" at preset {spec.preset!r}")

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
        limits: QueueLimits | None = None,
    ) -> None:
        """pipelines: one Pipeline per executor device (pipelines[device] runs that device's jobs)."""
        self.limits = limits or QueueLimits()
        self.store = store
        self.executor = executor
        self.pipelines = pipelines
        self.publish = publish
        self.jobs: dict[str, Job] = {}
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._device_bytes: dict[str, int | None] | None = None
        """Memory of each device (memory_check.device_memory), read at the first submit that needs it."""
        self._storing: collections.Counter[str] = collections.Counter()
        """Submits being written to the store now, per owner (they count against the queue limits)."""

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
            if job.state == "running" and not job.work_dir.exists():
                self._settle_unrecorded_failure(job)
            elif job.state in ("queued", "running"):
                interrupted = job.state == "running"
                job.state = "queued"
                if job.resume is None and (interrupted or job.events):
                    job.resume = ResumePoint()
                self._save_state(job)
                if interrupted:
                    log.info("job %s was interrupted by a restart; queued to resume", job.job_id)
                    try:
                        self.emit(job, m.Resumed(with_edited_mesh=False))
                    except StoreError as exc:
                        log.warning("job %s: resumed event not stored: %s", job.job_id, exc)
                self.executor.enqueue(job.job_id, job.owner)
        log.info("job store %s: %d jobs", self.store.root, len(self.jobs))

    def _settle_unrecorded_failure(self, job: Job) -> None:
        """A job that was running and has no work folder ended while the disk was full: _record_final
        removed its work files, and neither its final event nor its state could be written. It failed
        (clients heard `failed` then); it is recorded as failed now instead of resuming."""
        log.warning("job %s ended on a full disk before its failure was recorded; recorded as failed", job.job_id)
        failed = m.Failed(code=DISK_FULL, message=DISK_FULL_HINT)
        self._finish(job, "failed", failed, error=DISK_FULL_HINT, error_code=DISK_FULL)

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stopping.set()
        self.executor.shutdown(timeout_s)

    def _save_state(self, job: Job) -> bool:
        """Save the state where it is a cache of the log (the events say the same): a failure is logged."""
        try:
            self.store.save_state(job)
            return True
        except StoreError as exc:
            log.warning("job %s: state not saved: %s", job.job_id, exc)
            return False

    # requests from clients (server thread) ------------------------------------------------------

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise UnknownJob(f"no job {job_id!r} on this backend")
        return job

    def owned(self, job_id: str, user: str, admin: bool = False) -> Job:
        """The job, when `user` may touch it: its owner, or an admin. Raises UnknownJob, NotYourJob."""
        job = self.get(job_id)
        if not admin and job.owner != user:
            raise NotYourJob(
                f"job {job_id} belongs to another client key; only its owner or an admin may use it"
            )
        return job

    def _check_queue(self, owner: str) -> None:
        """Raise QueueFull when owner's queue or the backend's is full. Holds self._lock; submits
        being stored (on the server thread and the submit thread) count as queued."""
        queued = collections.Counter(j.owner for j in self.jobs.values() if j.state == "queued")
        queued.update(self._storing)
        if queued.total() >= self.limits.total:
            raise QueueFull(
                f"the backend's queue is full ({self.limits.total} jobs waiting); submit again later"
            )
        if queued[owner] >= self.limits.per_client:
            raise QueueFull(
                f"you have {queued[owner]} jobs waiting, the most this backend queues per client; "
                f"submit again when one has started, or cancel one"
            )

    def submit(
        self, spec: JobSpec, submit_frames: Sequence[bytes | memoryview], owner: str = ""
    ) -> tuple[Job, int]:
        """Check the spec with the pipeline (raises ValidationError) and the queue limits (QueueFull),
        store it and queue it (raises DiskFull when it cannot be stored: nothing is left behind).
        Thread-safe: submits with frames are stored on the server's intake threads."""
        self.checker.check(spec)
        self._check_fits(spec)
        with self._lock:
            self._check_queue(owner)
            self._storing[owner] += 1
        try:
            job = self.store.create(spec, submit_frames, owner)
            with self._lock:
                self.jobs[job.job_id] = job
        finally:
            with self._lock:
                self._storing[owner] -= 1
        ahead = self.executor.enqueue(job.job_id, owner)
        log.info("job %s queued (%d ahead): %r", job.job_id, ahead, spec.prompt[:80])
        return job, ahead

    def _check_fits(self, spec: JobSpec) -> None:
        """Refuse a request whose options make a stage it runs need more memory than any device here holds
        (memory_check.check_request_fits, a lower bound), or whose preset does not fit the cards even with
        its idle priors in host memory (the dry run's figures); a pipeline without resolved presets passes."""
        resolve = getattr(self.checker, "resolve_preset", None)
        plan = getattr(self.checker, "stage_plan", None)
        if not callable(resolve) or not callable(plan):
            return
        from .memory_check import check_request_fits, device_memory  # torch: only for pipelines that use it

        if self._device_bytes is None:
            self._device_bytes = {d: device_memory(d) for d in self.executor.devices}
        check_request_fits(resolve(spec), self._device_bytes, list(plan(spec)), name=spec.preset)

    def cancel(self, job_id: str) -> None:
        job = self.get(job_id)
        with job.lock:
            state = job.state
            if state in FINAL_STATES:
                raise BadJobState(f"job {job_id} is already {state}")
            job.cancel_requested.set()
            if state == "running":
                # The worker sees the flag at the pipeline's next check_cancel (within one step).
                return
            job.state = "cancelled"
            job.resume = None
        self.emit(job, m.Cancelled(), final=True)
        self.store.clear_resume(job)
        self._save_state(job)

    def resume(self, job_id: str, mesh: MeshPayload | None) -> int:
        job = self.get(job_id)
        if mesh is not None:  # refused as a submitted input mesh is, before the job changes state
            check_mesh_to_refine(mesh, "resume.mesh")
        with job.lock:
            if job.state != "paused":
                raise BadJobState(f"job {job_id} is {job.state}, not paused; only a paused job can resume")
            # The edited mesh is durable before the job changes state (DiskFull refuses the resume).
            self.store.save_resume(job, codec.encode(m.Resume(mesh=mesh, job_id=job.job_id)))
            job.state = "queued"
            job.resume = ResumePoint(edited_mesh=mesh)
        self._save_state(job)
        self.emit(job, m.Resumed(with_edited_mesh=mesh is not None), final=True)
        return self.executor.enqueue(job.job_id, job.owner)

    def attach(self, job_id: str, last_seq: int) -> bool:
        """Check an attach; True when events follow (False: the client has seen the whole finished job)."""
        job = self.get(job_id)
        with job.lock:
            last, state = job.last_seq, job.state
        if last_seq > last:
            raise ValidationError(
                f"attach: last_seq {last_seq} is past the end of job {job_id}, whose last event is {last}"
            )
        return not (state in FINAL_STATES and last_seq == last)

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
            try:
                msg = codec.decode(frames)
            except ProtocolError as exc:
                log.warning("job %s: a stored stage result does not decode: %s", job_id, exc)
                continue
            if isinstance(msg, m.StageResult):
                results.append(msg)
        return job.state, results

    def list(self) -> list[JobInfo]:
        """Every job, oldest first (the backend's own view; clients get list_page)."""
        with self._lock:
            jobs = sorted(self.jobs.values(), key=lambda j: (j.created_unix, j.job_id))
        return [j.info() for j in jobs]

    def list_page(
        self, user: str, admin: bool, after: str = "", limit: int = LISTING_PAGE
    ) -> tuple[list[JobInfo], str]:
        """One page of the jobs user may see, oldest first, after the page token `after`; returns the
        rows (prompt and error cut to LISTING_TEXT_CHARS) and the next page's token ("" at the end)."""
        start = _parse_page_token(after)
        limit = max(1, min(limit or LISTING_PAGE, LISTING_PAGE))
        with self._lock:
            jobs = [j for j in self.jobs.values() if admin or j.owner == user]
        keyed = sorted(((j.created_unix, j.job_id), j) for j in jobs if (j.created_unix, j.job_id) > start)
        page = [j for _, j in keyed[:limit]]
        rows = []
        for j in page:
            info = j.info()
            info.prompt = info.prompt[:LISTING_TEXT_CHARS]
            info.error = info.error[:LISTING_TEXT_CHARS]
            rows.append(info)
        more = len(keyed) > limit
        return rows, (f"{page[-1].created_unix!r}/{page[-1].job_id}" if more else "")

    def delete(self, job_id: str) -> None:
        """Remove a finished job and its folder (the caller checked ownership)."""
        job = self.get(job_id)
        with job.lock:
            if job.state not in FINAL_STATES:
                raise BadJobState(f"job {job_id} is {job.state}; only a finished job can be deleted (cancel it first)")
            with self._lock:
                self.jobs.pop(job_id, None)
        self.store.delete(job)
        log.info("job %s deleted", job_id)

    def expire(self, older_than_s: float, now: float | None = None) -> int:
        """Delete every finished job created more than older_than_s ago; returns how many."""
        cutoff = (time.time() if now is None else now) - older_than_s
        with self._lock:
            old = [j.job_id for j in self.jobs.values() if j.state in FINAL_STATES and j.created_unix < cutoff]
        for job_id in old:
            try:
                self.delete(job_id)
            except (UnknownJob, BadJobState):
                continue
        return len(old)

    # events --------------------------------------------------------------------------------------

    def emit(self, job: Job, msg: m.Message, final: bool = False) -> int:
        """Give msg the job's next seq, store it, then publish it. Thread-safe; never blocks on clients.

        Raises StoreError (DiskFull) when the store cannot take it, except with final=True (the final
        events and answers to requests): those are published anyway and served from memory, so a
        waiting client always hears how its job ended. A stage result already recorded is not sent
        again (returns its seq)."""
        with job.lock:
            if isinstance(msg, m.StageResult) and (msg.stage, msg.index) in job.results:
                log.info("job %s: %s result already recorded; not sent again", job.job_id, msg.stage)
                return job.results[(msg.stage, msg.index)]
            seq = job.last_seq + 1
            msg.job_id, msg.seq = job.job_id, seq
            msg.msg_id = f"{job.job_id}:{seq}"
            frames = codec.encode(msg)
            try:
                # Only events every client can decode are stored: a bad one would be replayed forever.
                codec.decode(frames)
            except ProtocolError as exc:
                raise ValidationError(f"the pipeline reported an invalid {msg.TYPE}: {exc}") from exc
            try:
                self._store_event(job, seq, msg, frames)
            except StoreError:
                if not final:
                    raise
                log.warning("job %s: event %d (%s) kept in memory only", job.job_id, seq, msg.TYPE)
                self.store.keep_in_memory(job, seq, msg.TYPE, frames)
        self.publish(job.job_id, seq, frames)
        return seq

    def _store_event(self, job: Job, seq: int, msg: m.Message, frames: list[bytes | memoryview]) -> None:
        if seq > job.seq_mark:
            # state.json holds a mark no published seq passes, so numbering after a damaged log
            # tail resumes beyond every seq a client may have seen.
            job.seq_mark = seq + SEQ_STEP
            self.store.save_state(job)
        if isinstance(msg, m.StageResult):
            self.store.record_stage_result(job, seq, msg.stage, msg.index, frames)
            if msg.stage not in job.stages_done:
                job.stages_done.append(msg.stage)
        else:
            self.store.append_event(job, seq, msg.TYPE, frames, durable=not isinstance(msg, m.Progress))

    # the worker side -----------------------------------------------------------------------------

    def run_job(self, job_id: str, device: str) -> None:
        """Executor callback: run one job to its next rest (done, failed, cancelled, paused, interrupted).
        After a failure, the memory the job held is given back (release_memory)."""
        if self._run_job(job_id, device):
            release_memory()

    def _run_job(self, job_id: str, device: str) -> bool:
        """run_job's work; True when the job failed (its exception and frames are gone on return)."""
        job = self.jobs.get(job_id)
        if job is None:
            log.warning("executor asked for unknown job %s", job_id)
            return False
        with job.lock:
            if job.state != "queued":
                return False  # cancelled (or resumed twice) while it waited
            if self.stopping.is_set():
                return False
            job.state = "running"
            resume = job.resume
        log.info("job %s running on %s%s", job_id, device, " (resuming)" if resume else "")
        ctx, spec = StoreJobContext(self, job, device), job.spec
        try:
            self.store.save_state(job)
            spec = self.store.full_spec(job)
            outcome: RunOutcome = self.pipelines[device].run(spec, ctx, resume)
        except JobInterrupted:
            log.info("job %s interrupted by shutdown; it resumes after a restart", job_id)
            return False  # state stays "running": start() queues it again
        except WorkerLost as exc:
            self._requeue_lost(job, exc)
            return False
        except JobCancelled:
            self._finish(job, "cancelled", m.Cancelled())
            return False
        except Exception as exc:  # a pipeline failure ends this job only
            self._fail(job, exc, ctx.where(spec))
            return True
        if outcome.paused_after is not None and job.cancel_requested.is_set():
            # Cancelled during the stage that ended at the gate: the cancel wins over the pause.
            self._finish(job, "cancelled", m.Cancelled())
        elif outcome.paused_after is not None:
            self._finish(job, "paused", m.Paused(stage=outcome.paused_after))
            log.info("job %s paused after %s", job_id, outcome.paused_after)
        else:
            self._finish(job, "done", m.Done())
        return False

    def _requeue_lost(self, job: Job, exc: WorkerLost) -> None:
        """The worker running job went away: queue it again to resume from its last finished stage
        (its checkpoints and results are in the store), as a backend restart does."""
        if self.stopping.is_set():
            log.info("job %s lost its worker during shutdown; it resumes after a restart", job.job_id)
            return  # state stays "running": start() queues it again
        if job.cancel_requested.is_set():  # cancelled while running on the lost worker
            self._finish(job, "cancelled", m.Cancelled())
            return
        log.warning("job %s lost its worker (%s); queued to resume on another", job.job_id, exc)
        with job.lock:
            job.state = "queued"
            if job.resume is None:
                job.resume = ResumePoint()
        self._save_state(job)
        try:
            self.emit(job, m.Resumed(with_edited_mesh=False))
        except StoreError as store_exc:
            log.warning("job %s: resumed event not stored: %s", job.job_id, store_exc)
        self.executor.enqueue(job.job_id, job.owner)

    def _fail(self, job: Job, exc: Exception, where: str = "") -> None:
        code, message = classify_failure(exc, where)
        if code == INTERNAL_ERROR:
            log.exception("job %s failed", job.job_id)
        elif code == OUT_OF_MEMORY:  # the allocator's own words, for whoever reads the log
            log.warning("job %s failed (%s): %s [%s: %s]", job.job_id, code, message, type(exc).__name__, exc)
        else:
            log.warning("job %s failed (%s): %s", job.job_id, code, message)
        failed = m.Failed(code=code[:MAX_ID_CHARS], message=message[:MAX_MESSAGE_CHARS])
        self._finish(job, "failed", failed, error=message, error_code=code)

    def _finish(self, job: Job, state: str, event: m.Message, error: str = "", error_code: str = "") -> None:
        """The event first (stored, or kept in memory when the store fails), then the state file: the
        log is the record of how the job ended, and state.json follows it."""
        with job.lock:
            job.state = state
            job.error = error
            job.error_code = error_code
            job.resume = None
        if state not in FINAL_STATES:
            self.emit(job, event, final=True)
        else:
            self._record_final(job, event)
        self.store.clear_resume(job)
        if not self._save_state(job) and state in FINAL_STATES and self._drop_work_files(job):
            self._save_state(job)
        log.info("job %s %s", job.job_id, state)

    def _record_final(self, job: Job, event: m.Message) -> None:
        """Store a final event; when the store is full, the job's work files (its checkpoints: a finished
        job never runs again) are removed to make room, and then it is stored or kept in memory. A job
        left without its work folder is settled as failed at the next start (start()), never resumed,
        so the final word a client heard stays final."""
        try:
            self.emit(job, event)
        except StoreError as exc:
            log.warning("job %s: its %s event was not stored (%s)", job.job_id, event.TYPE, exc)
            self._drop_work_files(job)
            self.emit(job, event, final=True)

    def _drop_work_files(self, job: Job) -> bool:
        """Remove a finished job's work folder (no space is needed to remove); True if it was there."""
        if not job.work_dir.exists():
            return False
        shutil.rmtree(job.work_dir, ignore_errors=True)
        log.warning("job %s: its work files were removed to make room on a full disk", job.job_id)
        return True
