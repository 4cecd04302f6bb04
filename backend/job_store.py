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
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import secrets
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.errors import ProtocolError
from dreampolish.protocol.job import JobSpec

from .pipeline_api import ResumePoint

log = logging.getLogger(__name__)


class StoreError(ProtocolError):
    """A write to the job store failed (the job or request it served cannot go on)."""

    code = "internal_error"


class DiskFull(StoreError):
    """The store's disk is full (ENOSPC) or over quota (EDQUOT)."""

    code = "disk_full"


def store_error(exc: OSError, what: str) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(
            f"the job store's disk is full: cannot write {what}. Free some space, then try again."
        )
    return StoreError(f"cannot write {what}: {exc}")


# --- framed records on disk ----------------------------------------------------------------------

_RECORD = struct.Struct("<4sIQ")  # magic, crc32 of payload, payload length
_MAGIC = b"DPEV"
HEADER_BYTES = _RECORD.size


def pack_frames(frames: Sequence[bytes | memoryview]) -> bytes:
    lens = struct.pack(f"<I{len(frames)}Q", len(frames), *(memoryview(f).nbytes for f in frames))
    return lens + b"".join(bytes(f) for f in frames)


def unpack_frames(payload: bytes | memoryview) -> list[memoryview]:
    """The frames of a payload; raises ValueError when the payload is not a frame list."""
    view = memoryview(payload)
    try:
        (n,) = struct.unpack_from("<I", view, 0)
        lens = struct.unpack_from(f"<{n}Q", view, 4)
    except struct.error as exc:
        raise ValueError(f"not a frame list: {exc}") from exc
    pos = 4 + 8 * n
    if pos + sum(lens) != view.nbytes:
        raise ValueError("frame lengths do not add up to the record")
    frames = []
    for length in lens:
        frames.append(view[pos : pos + length])
        pos += length
    return frames


def record(frames: Sequence[bytes | memoryview]) -> bytes:
    payload = pack_frames(frames)
    return _RECORD.pack(_MAGIC, zlib.crc32(payload), len(payload)) + payload


def intact_at(data: bytes | memoryview, pos: int) -> int:
    """Payload length of an intact record at pos, or -1."""
    if pos + HEADER_BYTES > len(data):
        return -1
    magic, crc, length = _RECORD.unpack_from(data, pos)
    start = pos + HEADER_BYTES
    if magic != _MAGIC or start + length > len(data) or zlib.crc32(data[start : start + length]) != crc:
        return -1
    return int(length)


@dataclass
class LogScan:
    records: list[tuple[int, int]] = field(default_factory=list)
    """(payload offset, payload length) of every intact record, in file order."""
    bad_regions: int = 0
    """Damaged stretches skipped between intact records."""
    end: int = 0
    """End of the last intact record: what follows is a torn or damaged tail."""


def scan_records(data: bytes) -> LogScan:
    """Every intact record; a damaged one is skipped by searching for the next magic."""
    scan, pos = LogScan(), 0
    while pos + HEADER_BYTES <= len(data):
        length = intact_at(data, pos)
        if length >= 0:
            scan.records.append((pos + HEADER_BYTES, length))
            pos = scan.end = pos + HEADER_BYTES + length
            continue
        nxt = data.find(_MAGIC, pos + 1)
        if nxt < 0:
            break
        if scan.records or pos > 0:
            scan.bad_regions += 1
        pos = nxt
    if scan.records and scan.records[0][0] > HEADER_BYTES and scan.bad_regions == 0:
        scan.bad_regions = 1  # damage before the first intact record
    return scan


def read_frames(path: Path) -> list[memoryview]:
    """The frames of the first intact record in path (OSError when there is none)."""
    data = path.read_bytes()
    scan = scan_records(data)
    if not scan.records:
        raise OSError(f"{path.name} holds no intact record")
    offset, length = scan.records[0]
    try:
        return unpack_frames(memoryview(data)[offset : offset + length])
    except ValueError as exc:
        raise OSError(f"{path.name}: {exc}") from exc


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in path durable (POSIX: the directory entry is data too)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- jobs ----------------------------------------------------------------------------------------


@dataclass
class EventIndex:
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
    """True when spec holds no input mesh because spec.msg has it (JobStore.full_spec reads it)."""
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

    def info(self) -> m.JobInfo:
        error = self.error
        if self.damage or self.live_damage:
            error = f"{error} ({self.damage_line()})" if error else self.damage_line()
        return m.JobInfo(
            job_id=self.job_id,
            state=self.state,
            prompt=self.spec.prompt,
            mode=self.spec.mode,
            preset=self.spec.preset,
            created_unix=self.created_unix,
            last_seq=self.last_seq,
            stages_done=list(self.stages_done),
            error=error[: m.MAX_MESSAGE_CHARS],
        )


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


SEQ_STEP = 128
"""How far the seq mark runs ahead: one fsynced state.json write (about 10 ms) per this many events,
and at most this many placeholders after a damaged log tail."""


class JobStore:
    """The job folders under one root. Every write goes through _write_file or _append (a test store
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

    def _append(self, path: Path, data: bytes, durable: bool, what: str) -> int:
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
        state["crc32"] = _state_crc(state)
        self._write_file(job.folder / "state.json", json.dumps(state, indent=1).encode(), "the job's state")

    def append_event(
        self, job: Job, seq: int, kind: str, frames: Sequence[bytes | memoryview], durable: bool
    ) -> None:
        rec = record(frames)
        offset = self._append(job.folder / "events.log", rec, durable, f"event {seq} of job {job.job_id}")
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


def rebuilt_event(job: Job, kind: str) -> m.Message | None:
    """The event of type kind as the job's state says it was (None when the state cannot say)."""
    if kind == m.Done.TYPE:
        return m.Done()
    if kind == m.Cancelled.TYPE:
        return m.Cancelled()
    if kind == m.Failed.TYPE:
        return m.Failed(
            code=(job.error_code or "internal_error")[: m.MAX_ID_CHARS],
            message=(job.error or "the failure message was lost")[: m.MAX_MESSAGE_CHARS],
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


# --- loading, and the repair of damaged files -------------------------------------------------------

_STATE_FIELDS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("created_unix", (int, float)),
    ("error", str),
    ("error_code", str),
    ("prompt", str),
    ("mode", str),
    ("preset", str),
    ("owner", str),
    ("last_seq", int),
    ("seq_mark", int),
)
_STATE_AFTER_EVENT = {"done": "done", "failed": "failed", "cancelled": "cancelled", "paused": "paused"}


def _state_crc(state: dict[str, object]) -> int:
    return zlib.crc32(json.dumps(state, sort_keys=True).encode())


def read_state(folder: Path) -> tuple[dict[str, object] | None, str]:
    """state.json checked field by field: (fields, "") or (None, what is wrong with it)."""
    try:
        raw = json.loads((folder / "state.json").read_text())
    except FileNotFoundError:
        return None, "state.json missing"
    except (OSError, ValueError) as exc:
        return None, f"state.json unreadable ({type(exc).__name__})"
    if not isinstance(raw, dict) or raw.get("state") not in m.JOB_STATES:
        return None, "state.json has no valid state"
    crc = raw.pop("crc32", None)
    if crc is not None and crc != _state_crc(raw):  # files written before the checksum have none
        return None, "state.json damaged (checksum)"
    clean: dict[str, object] = {"state": raw["state"]}
    for key, kind in _STATE_FIELDS:
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, kind) or isinstance(value, bool):
            return None, f"state.json field {key!r} has the wrong type"
        clean[key] = value
    damage = raw.get("damage")
    clean["damage"] = [str(d) for d in damage] if isinstance(damage, list) else []
    return clean, ""


def keep_mesh_on_disk(job: Job) -> None:
    """Drop the input mesh from the job in memory once spec.msg holds it: a submitted mesh (tens of
    MB, viewing the received frames) is not held for the life of the process."""
    if job.spec.input_mesh is not None:
        job.spec = dataclasses.replace(job.spec, input_mesh=None)
        job.spec_on_disk = True


def read_owner(folder: Path, from_state: str) -> str:
    """The owner file's key; state.json's copy when the file is missing. A job whose owner is lost
    belongs to no client key: only an admin (or a backend without CURVE) may touch it."""
    try:
        text = (folder / "owner").read_bytes().decode("ascii").strip()
    except FileNotFoundError:
        return from_state
    except (OSError, UnicodeDecodeError):
        return ""
    # A Z85 CURVE public key is 40 characters (zmq.auth certificates).
    return text if len(text) == 40 else ""


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


@dataclass
class _Scanned:
    """events.log as found: its intact events by seq, and what the loader saw of damage."""

    by_seq: dict[int, EventIndex] = field(default_factory=dict)
    bodies: dict[int, dict[str, object]] = field(default_factory=dict)
    """Header body of each stage_result, paused, failed and resumed event."""
    bad_regions: int = 0
    torn_tail: bool = False
    damaged_tail: bool = False
    """The tail holds more than one torn write: events after the damage may have reached clients."""
    missing: bool = False


def scan_log(path: Path) -> _Scanned:
    out = _Scanned()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        out.missing = True
        return out
    scan = scan_records(data)
    out.bad_regions = scan.bad_regions
    for offset, length in scan.records:
        try:
            header = codec.decode_header(unpack_frames(memoryview(data)[offset : offset + length]))
            seq, kind = int(header["seq"]), str(header["type"])
        except (ValueError, KeyError, TypeError, ProtocolError):
            out.bad_regions += 1
            continue
        if seq < 1 or seq in out.by_seq:
            out.bad_regions += 1
            continue
        out.by_seq[seq] = EventIndex(seq, kind, offset, length)
        body = header.get("body")
        if kind in (m.StageResult.TYPE, m.Paused.TYPE, m.Failed.TYPE, m.Resumed.TYPE) and isinstance(
            body, dict
        ):
            out.bodies[seq] = body
    if scan.end < len(data):
        out.torn_tail = True
        out.damaged_tail = data.find(_MAGIC, scan.end + 1) >= 0
        try:
            with open(path, "r+b") as f:
                f.truncate(scan.end)  # the torn tail is cut off, so that new records follow intact ones
        except OSError as exc:
            log.warning("cannot cut the torn tail of %s: %s", path, exc)
    return out


def spans(seqs: Sequence[int]) -> str:
    """[3, 4, 5, 9] -> "3-5, 9"."""
    parts: list[str] = []
    for s in sorted(seqs):
        if parts and s == int(parts[-1].rsplit("-", 1)[-1]) + 1:
            parts[-1] = parts[-1].split("-")[0] + f"-{s}"
        else:
            parts.append(str(s))
    return ", ".join(parts)


class JobLoader:
    """Rebuilds one job from its folder, repairing what is damaged; never raises for damage."""

    def __init__(self, store: JobStore, folder: Path) -> None:
        self.store = store
        self.folder = folder
        self.notes: list[str] = []
        self.repairs: list[m.Message] = []
        self._lost_seqs: list[int] = []
        self.tail: m.Message | None = None
        """The lost event that ended or paused the job, rebuilt from state.json."""

    def load(self) -> Job:
        state, state_problem = read_state(self.folder)
        spec, spec_problem = read_spec(self.folder)
        fields = state or {}
        if spec is None:
            spec = JobSpec(
                prompt=str(fields.get("prompt", "")),
                mode=str(fields.get("mode", "generate")),  # type: ignore[arg-type]
                preset=str(fields.get("preset", "")),
            )
        job = Job(job_id=self.folder.name, spec=spec, folder=self.folder)
        keep_mesh_on_disk(job)
        job.owner = read_owner(self.folder, str(fields.get("owner", "")))
        job.created_unix = float(fields.get("created_unix", self._folder_time()))  # type: ignore[arg-type]
        job.error = str(fields.get("error", ""))
        job.error_code = str(fields.get("error_code", ""))
        job.seq_mark = int(fields.get("seq_mark", 0))  # type: ignore[call-overload]
        job.damage = list(fields.get("damage", []))  # type: ignore[call-overload]
        scanned = scan_log(self.folder / "events.log")
        self._index_results(job, scanned)
        self._settle_state(job, state, state_problem, scanned)
        self._fill_gaps(job, scanned, state)
        self._read_resume(job, scanned)
        if spec_problem:
            self._spec_lost(job, spec_problem)
        self._write_repairs(job)
        return job

    def _folder_time(self) -> float:
        try:
            return self.folder.stat().st_mtime
        except OSError:
            return 0.0

    def _index_results(self, job: Job, scanned: _Scanned) -> None:
        """Stage results from the log and from their own files; a file whose event is missing fills it."""
        for seq, body in scanned.bodies.items():
            if scanned.by_seq[seq].type == m.StageResult.TYPE:
                job.results[(str(body.get("stage")), int(body.get("index", 0)))] = seq  # type: ignore[call-overload]
        results_dir = job.results_dir
        if not results_dir.is_dir():
            return
        for path in sorted(results_dir.glob("*.msg")):
            try:
                data = path.read_bytes()
                length = intact_at(data, 0)
                if length < 0:
                    raise OSError("no intact record")
                msg = codec.decode(unpack_frames(memoryview(data)[HEADER_BYTES:]))
                if not isinstance(msg, m.StageResult) or msg.seq < 1:
                    raise OSError("not a stage result")
            except (OSError, ValueError, ProtocolError):
                self.notes.append(f"result file {path.name} damaged")
                continue
            known = scanned.by_seq.get(msg.seq)
            if known is None:
                # Written before its event: the crash came in between, or the event's record is damaged.
                scanned.by_seq[msg.seq] = EventIndex(msg.seq, msg.TYPE, HEADER_BYTES, length, source=path)
                scanned.bodies[msg.seq] = {"stage": msg.stage, "index": msg.index}
            elif known.type != m.StageResult.TYPE:
                log.warning("job %s: discarding %s, whose seq another event holds", job.job_id, path.name)
                path.unlink(missing_ok=True)
                continue
            job.results[(msg.stage, msg.index)] = msg.seq

    def _settle_state(self, job: Job, state: dict | None, problem: str, scanned: _Scanned) -> None:
        """The job's state: state.json's, unless the log is further on (or state.json is lost)."""
        order = sorted(scanned.by_seq)
        last_type = scanned.by_seq[order[-1]].type if order else ""
        from_log = _STATE_AFTER_EVENT.get(last_type, "running") if order else "queued"
        if last_type == m.Resumed.TYPE:
            from_log = "queued"
        job.stages_done = []
        for seq in sorted(job.results.values()):
            stage = str(scanned.bodies.get(seq, {}).get("stage", ""))
            if stage and stage not in job.stages_done:
                job.stages_done.append(stage)
        if state is None:
            self.notes.append(f"{problem}: state rebuilt from events.log")
            job.state = from_log
            if from_log == "failed":
                body = scanned.bodies.get(order[-1], {})
                job.error, job.error_code = str(body.get("message", "")), str(body.get("code", ""))
            return
        job.state = str(state["state"])
        if from_log in m.FINAL_STATES and job.state != from_log:
            job.state = from_log  # the final event is stored; state.json was not rewritten after it
        elif from_log == "paused" and job.state == "running":
            job.state = "paused"  # likewise for the pause: the job must not run past its gate
        elif job.state == "paused" and last_type == m.Resumed.TYPE:
            job.state = "queued"  # resumed, and state.json was not rewritten after it
        elif (job.state in m.FINAL_STATES and from_log not in m.FINAL_STATES) or (
            job.state == "paused" and from_log != "paused"
        ):
            self.tail = rebuilt_event(job, job.state if job.state != "paused" else m.Paused.TYPE)
            if self.tail is not None:
                self.notes.append(f"the {self.tail.TYPE} event was lost: rebuilt from state.json")

    def _fill_gaps(self, job: Job, scanned: _Scanned, state: dict | None) -> None:
        """Every seq from 1 on has an event: lost ones become placeholders, and numbering goes on
        after any seq a client may have seen."""
        top = max(scanned.by_seq, default=0)
        state_seq = int(state.get("last_seq", 0)) if state else 0  # type: ignore[call-overload]
        tail_lost = scanned.damaged_tail or state_seq > top or self.tail is not None
        if self.tail is not None and state_seq > top:
            # state.json is saved right after the event that ends (or pauses) a job: it had seq state_seq.
            top = state_seq - 1
        elif tail_lost:
            top = max(top, state_seq, job.seq_mark)
        lost = [s for s in range(1, top + 1) if s not in scanned.by_seq]
        if scanned.bad_regions or scanned.torn_tail and tail_lost:
            self.notes.append(f"events.log: {max(scanned.bad_regions, 1)} damaged stretch(es) skipped")
        elif scanned.missing and top:
            self.notes.append("events.log missing")
        if lost:
            self.notes.append(f"events {spans(lost)} lost (sent as placeholder progress)")
        job.events = [scanned.by_seq[s] for s in sorted(scanned.by_seq)]
        self.repairs[:0] = [placeholder(job, s) for s in lost] + ([self.tail] if self.tail else [])
        self._lost_seqs = lost

    def _read_resume(self, job: Job, scanned: _Scanned) -> None:
        path = self.folder / "resume.msg"
        if not path.exists():
            if job.state == "queued" and self._resume_pending(scanned):
                self._pause_again(job, "resume.msg missing")
            return
        try:
            msg = codec.decode(read_frames(path))
            if not isinstance(msg, m.Resume):
                raise ValueError("not a resume message")
            job.resume = ResumePoint(edited_mesh=msg.mesh)
            return
        except (OSError, ValueError, ProtocolError):
            pass
        if job.state == "queued" and job.stages_done:
            self._pause_again(job, "resume.msg damaged")
        else:
            job.resume = ResumePoint()
            self.notes.append(
                "resume.msg damaged: the job goes on from its checkpoint without the edited mesh"
            )
        path.unlink(missing_ok=True)

    @staticmethod
    def _resume_pending(scanned: _Scanned) -> bool:
        """A queued job whose last event is its pause, or a resume that brought an edited mesh, was
        resumed by a client: resume.msg (written before the state changed) should be there."""
        if not scanned.by_seq:
            return False
        last = max(scanned.by_seq)
        kind = scanned.by_seq[last].type
        return kind == m.Paused.TYPE or (
            kind == m.Resumed.TYPE and bool(scanned.bodies.get(last, {}).get("with_edited_mesh"))
        )

    def _pause_again(self, job: Job, problem: str) -> None:
        job.state, job.resume = "paused", None
        if job.stages_done:
            self.repairs.append(m.Paused(stage=job.stages_done[-1]))
        self.notes.append(f"{problem}: the edited mesh is lost; paused again, resume it again")

    def _spec_lost(self, job: Job, problem: str) -> None:
        if job.state in m.FINAL_STATES:
            self.notes.append(f"{problem}: the request is lost, its results are kept")
            return
        job.state, job.resume = "failed", None
        job.error_code = "spec_lost"
        job.error = f"{problem}: the request is lost; submit it again"
        self.notes.append(problem)
        self.repairs.append(m.Failed(code=job.error_code, message=job.error))

    def _write_repairs(self, job: Job) -> None:
        """Store the rebuilt events (placeholders first, in seq order) and the damage note, best effort:
        what cannot be written is served from memory until the next start rebuilds it again."""
        lost = iter(self._lost_seqs)
        for msg in self.repairs:
            seq = next(lost, None) or job.last_seq + 1
            msg.job_id, msg.seq, msg.msg_id = job.job_id, seq, f"{job.job_id}:{seq}"
            frames = codec.encode(msg)
            try:
                offset = self.store._append(
                    job.folder / "events.log", record(frames), True, "a repaired event"
                )
                entry = EventIndex(seq, msg.TYPE, offset + HEADER_BYTES, len(record(frames)) - HEADER_BYTES)
            except StoreError:
                entry = EventIndex(seq, msg.TYPE, 0, 0, frames=list(frames))
            job.events.append(entry)
            job.events.sort(key=lambda e: e.seq)
        # Damage that stays on disk (a skipped stretch of the log) is found at every start: said once.
        known = "; ".join(job.damage)
        fresh = [note for note in self.notes if note not in known]
        if not fresh:
            return
        line = "; ".join(fresh)
        job.damage.append(line)
        log.warning("job %s: store damage: %s", job.job_id, line)
        try:
            self.store.save_state(job)
        except StoreError as exc:
            log.warning("job %s: the repaired state is not saved: %s", job.job_id, exc)
