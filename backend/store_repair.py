"""Loading a job from its folder, and the repair of damaged files (the promises are in job_store.py).

JobLoader rebuilds one Job from state.json, spec.msg, owner, events.log, results/ and resume.msg,
checking each: what is damaged is rebuilt from what is left, every seq a client may have seen keeps
its event (a placeholder when it is lost), and the job says what was lost in one line.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dreampolish.protocol import codec
from dreampolish.protocol import messages as m
from dreampolish.protocol.errors import SPEC_LOST, ProtocolError
from dreampolish.protocol.job import JobSpec
from dreampolish.protocol.payloads import FINAL_STATES, JOB_STATES

from .pipeline_api import ResumePoint
from .store_records import (
    HEADER_BYTES,
    MAGIC,
    StoreError,
    intact_at,
    read_frames,
    record,
    scan_records,
    state_crc,
    unpack_frames,
)
from .stored_job import EventIndex, Job, keep_mesh_on_disk, placeholder, read_spec, rebuilt_event, spans

log = logging.getLogger(__name__)


class RepairWrites(Protocol):
    """The writes a repair makes: job_store.JobStore's, failing with StoreError."""

    def append_record(self, path: Path, data: bytes, durable: bool, what: str) -> int: ...

    def save_state(self, job: Job) -> None: ...


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


def read_state(folder: Path) -> tuple[dict[str, object] | None, str]:
    """state.json checked field by field: (fields, "") or (None, what is wrong with it)."""
    try:
        raw = json.loads((folder / "state.json").read_text())
    except FileNotFoundError:
        return None, "state.json missing"
    except (OSError, ValueError) as exc:
        return None, f"state.json unreadable ({type(exc).__name__})"
    if not isinstance(raw, dict) or raw.get("state") not in JOB_STATES:
        return None, "state.json has no valid state"
    crc = raw.pop("crc32", None)
    if crc is not None and crc != state_crc(raw):  # files written before the checksum have none
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
        out.damaged_tail = data.find(MAGIC, scan.end + 1) >= 0
        try:
            with open(path, "r+b") as f:
                f.truncate(scan.end)  # the torn tail is cut off, so that new records follow intact ones
        except OSError as exc:
            log.warning("cannot cut the torn tail of %s: %s", path, exc)
    return out


class JobLoader:
    """Rebuilds one job from its folder, repairing what is damaged; never raises for damage."""

    def __init__(self, store: RepairWrites, folder: Path) -> None:
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
        if from_log in FINAL_STATES and job.state != from_log:
            job.state = from_log  # the final event is stored; state.json was not rewritten after it
        elif from_log == "paused" and job.state == "running":
            job.state = "paused"  # likewise for the pause: the job must not run past its gate
        elif job.state == "paused" and last_type == m.Resumed.TYPE:
            job.state = "queued"  # resumed, and state.json was not rewritten after it
        elif (job.state in FINAL_STATES and from_log not in FINAL_STATES) or (
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
        if job.state in FINAL_STATES:
            self.notes.append(f"{problem}: the request is lost, its results are kept")
            return
        job.state, job.resume = "failed", None
        job.error_code = SPEC_LOST
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
                offset = self.store.append_record(
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
