"""The on-disk job store: one folder per job, checksummed records, and the repair of damaged files.

Layout (job ids never come from the wire as paths):

    STORE/<job_id>/state.json             state, prompt, mode, preset, error, seq mark (rewritten atomically)
    STORE/<job_id>/spec.msg               the submit message as received (one record)
    STORE/<job_id>/owner                  the Z85 public key of the client that submitted it (CURVE only)
    STORE/<job_id>/events.log             every event as one record each, appended
    STORE/<job_id>/results/<i>-<stage>.msg  each stage result (one record), written before its event
    STORE/<job_id>/resume.msg             the pending resume message (edited mesh), until the job runs
    STORE/<job_id>/work/                  the pipeline's own folder (checkpoints)

A record is magic, CRC-32 of the payload, payload length, payload (the message's frames). The
promises, and what each kind of damage costs:

- What was acknowledged survives a crash: submit is acknowledged after spec.msg and state.json are
  fsynced; every event but progress is fsynced before it is published; a stage result is written
  to its own file (fsynced) and then its event appended, and a result file whose event is missing
  after a crash is completed on load.
- A damaged record costs that record: the loader skips bad records one by one and resynchronises
  on the next magic; a lost stage result is served from its result file, a lost final event is
  rebuilt from state.json, any other lost event becomes a placeholder progress event, so that the
  sequence numbers clients have seen stay what they were and never go back (state.json carries a
  mark no published seq exceeds; a damaged tail resumes numbering after it).
- A damaged state.json is rebuilt from events.log; a damaged spec.msg keeps a finished job
  servable (its prompt, mode and preset are in state.json) and fails an unfinished one with a
  clear message; a damaged resume.msg puts the job back to paused. Each damaged job says what was
  lost in one line (its `error` field and the log).

This module writes and reads the folders (JobStore); the record format is store_records.py, the job
in memory stored_job.py, and loading with its repairs store_repair.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.errors import ProtocolError
from dreampolish.protocol.job import JobSpec

from .store_records import (
    HEADER_BYTES,
    StoreError,
    fsync_dir,
    intact_at,
    read_frames,
    record,
    state_crc,
    store_error,
    unpack_frames,
)
from .store_repair import JobLoader
from .stored_job import (
    SEQ_STEP,
    EventIndex,
    Job,
    keep_mesh_on_disk,
    new_job_id,
    placeholder,
    read_spec,
    rebuilt_event,
)

log = logging.getLogger(__name__)


class JobStore:
    """The job folders under one root. Every write goes through _write_file or append_record (a test store
    overrides _open to make writes fail on demand)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # low-level writes ------------------------------------------------------------------------------

    def _open(self, path: Path, mode: str) -> BinaryIO:
        return open(path, mode)  # noqa: SIM115 - closed by the callers' with blocks

    def _write_file(self, path: Path, data: bytes, what: str) -> None:
        """Write path whole (temporary name, fsync, rename, fsync of the folder)."""
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with self._open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise store_error(exc, what) from exc
        fsync_dir(path.parent)

    def append_record(self, path: Path, data: bytes, durable: bool, what: str) -> int:
        """Append data; returns its offset. A failed append is cut off again, so the log stays whole."""
        try:
            with self._open(path, "ab") as f:
                offset = f.tell()
                try:
                    f.write(data)
                    f.flush()
                    if durable:
                        os.fsync(f.fileno())
                except OSError:
                    f.truncate(offset)
                    raise
        except OSError as exc:
            raise store_error(exc, what) from exc
        return offset

    # jobs ------------------------------------------------------------------------------------------

    def create(self, spec: JobSpec, submit_frames: Sequence[bytes | memoryview], owner: str = "") -> Job:
        """A new job folder with its spec, owner and state, all durable; nothing is left behind on failure."""
        job_id = new_job_id()
        folder = self.root / job_id
        try:
            folder.mkdir()
            (folder / "work").mkdir()
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise store_error(exc, "a new job folder") from exc
        job = Job(job_id=job_id, spec=spec, folder=folder, seq_mark=SEQ_STEP, owner=owner)
        try:
            if owner:
                # Its own file, so that a damaged state.json never hands the job to another client.
                self._write_file(folder / "owner", owner.encode("ascii"), "the job's owner")
            self._write_file(folder / "spec.msg", record(submit_frames), "the job's spec")
            self.save_state(job)
        except StoreError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        fsync_dir(self.root)
        keep_mesh_on_disk(job)
        return job

    def full_spec(self, job: Job) -> JobSpec:
        """The job's spec with its input mesh, read again from spec.msg when only the disk holds it."""
        if not job.spec_on_disk:
            return job.spec
        spec, problem = read_spec(job.folder)
        if spec is None:
            raise StoreError(f"the job's input mesh is lost ({problem}); submit the job again")
        return spec

    def save_state(self, job: Job) -> None:
        state = {
            "job_id": job.job_id,
            "state": job.state,
            "created_unix": job.created_unix,
            "error": job.error,
            "error_code": job.error_code,
            "stages_done": job.stages_done,
            "prompt": job.spec.prompt,
            "mode": job.spec.mode,
            "preset": job.spec.preset,
            "owner": job.owner,
            "last_seq": job.last_seq,
            "seq_mark": max(job.seq_mark, job.last_seq),
            "damage": job.damage,
        }
        state["crc32"] = state_crc(state)
        self._write_file(job.folder / "state.json", json.dumps(state, indent=1).encode(), "the job's state")

    def append_event(
        self, job: Job, seq: int, kind: str, frames: Sequence[bytes | memoryview], durable: bool
    ) -> None:
        rec = record(frames)
        offset = self.append_record(job.folder / "events.log", rec, durable, f"event {seq} of job {job.job_id}")
        job.events.append(EventIndex(seq, kind, offset + HEADER_BYTES, len(rec) - HEADER_BYTES))

    def result_path(self, job: Job, stage: str, index: int) -> Path:
        return job.results_dir / f"{int(index):02d}-{stage}.msg"

    def record_stage_result(
        self, job: Job, seq: int, stage: str, index: int, frames: Sequence[bytes | memoryview]
    ) -> None:
        """One durable step: the result file (atomic, fsynced), then its event (fsynced)."""
        path = self.result_path(job, stage, index)
        try:
            path.parent.mkdir(exist_ok=True)
        except OSError as exc:
            raise store_error(exc, "the job's results folder") from exc
        self._write_file(path, record(frames), f"the {stage} result of job {job.job_id}")
        self.append_event(job, seq, m.StageResult.TYPE, frames, durable=True)
        job.results[(stage, int(index))] = seq

    def keep_in_memory(self, job: Job, seq: int, kind: str, frames: Sequence[bytes | memoryview]) -> None:
        """An event the store could not take: clients still get it (from memory) until a restart."""
        job.events.append(EventIndex(seq, kind, 0, 0, frames=list(frames)))

    def save_resume(self, job: Job, frames: Sequence[bytes | memoryview]) -> None:
        self._write_file(job.folder / "resume.msg", record(frames), "the job's resume message")

    def clear_resume(self, job: Job) -> None:
        try:
            (job.folder / "resume.msg").unlink(missing_ok=True)
        except OSError as exc:
            log.warning("job %s: cannot remove resume.msg: %s", job.job_id, exc)

    def delete(self, job: Job) -> None:
        """Remove a job's folder: first renamed out of the store (one atomic step, so a crash never
        leaves half a job to load), then removed; a leftover is removed at the next start."""
        trash = self.root / f".deleted-{job.job_id}"
        try:
            os.replace(job.folder, trash)
        except OSError as exc:
            raise store_error(exc, f"the folder of job {job.job_id}") from exc
        fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def load_all(self) -> list[Job]:
        """Every job folder, each repaired as far as it can be; one job's files never stop the others."""
        jobs = []
        for trash in self.root.glob(".deleted-*"):
            shutil.rmtree(trash, ignore_errors=True)
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not any((folder / name).exists() for name in ("state.json", "spec.msg", "events.log")):
                log.warning("skipping %s: not a job folder", folder)
                continue
            try:
                jobs.append(JobLoader(self, folder).load())
            except Exception:  # a bug in the repair itself: that job stays on disk, the backend starts
                log.exception("skipping job folder %s: it could not be loaded", folder)
        return jobs

    # reading events --------------------------------------------------------------------------------

    def read_events(self, job: Job, entries: Sequence[EventIndex]) -> Iterator[tuple[int, list[memoryview]]]:
        """Each entry's frames; a record damaged since it was written is served from its result file,
        or as a placeholder (noted in the job's damage), so a reader never fails and never sees a gap."""
        files: dict[Path, BinaryIO] = {}
        try:
            for e in entries:
                frames = self._read_entry(job, e, files)
                if frames is None:
                    frames = self._recover(job, e)
                yield e.seq, frames
        finally:
            for f in files.values():
                f.close()

    def _read_entry(self, job: Job, e: EventIndex, files: dict[Path, BinaryIO]) -> list[memoryview] | None:
        if e.frames is not None:
            return [memoryview(bytes(f)) for f in e.frames]
        path = e.source or job.folder / "events.log"
        try:
            f = files.get(path)
            if f is None:
                f = files[path] = open(path, "rb")  # noqa: SIM115 - closed in read_events
            f.seek(e.offset - HEADER_BYTES)
            data = f.read(HEADER_BYTES + e.length)
        except OSError:
            return None
        if intact_at(data, 0) != e.length:
            return None
        try:
            frames = unpack_frames(memoryview(data)[HEADER_BYTES:])
            header = codec.decode_header(frames)
        except (ValueError, ProtocolError):
            return None
        return frames if header.get("seq") == e.seq else None

    def _recover(self, job: Job, e: EventIndex) -> list[memoryview]:
        """A record damaged since it was indexed: a stage result from its own file, an event that
        says how the job stands rebuilt from the job's state, anything else a placeholder."""
        if e.seq not in job.live_damage:
            job.live_damage.add(e.seq)
            log.warning("job %s: event %d (%s) damaged while the backend ran", job.job_id, e.seq, e.type)
        for (stage, index), seq in job.results.items():
            if seq == e.seq and e.type == m.StageResult.TYPE:
                try:
                    frames = read_frames(self.result_path(job, stage, index))
                    if codec.decode_header(frames).get("seq") == e.seq:
                        return frames
                except (OSError, ValueError, ProtocolError):
                    break
        msg = rebuilt_event(job, e.type) or placeholder(job, e.seq)
        msg.job_id, msg.seq, msg.msg_id = job.job_id, e.seq, f"{job.job_id}:{e.seq}"
        return [memoryview(f) if isinstance(f, bytes) else f for f in codec.encode(msg)]
