"""The job store's files at the byte level: checksummed records, durable folder entries, and the
errors a failed write raises.

A record is magic, CRC-32 of the payload, payload length, payload; the payload is a message's frames
(a frame count, each frame's length, the frames). events.log is a run of records; spec.msg,
resume.msg and each results/*.msg file hold one. state.json carries its own CRC-32 (state_crc).
This is the on-disk format: tests/backend/test_store_faults*.py pin it.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dreampolish.protocol.errors import DISK_FULL, INTERNAL_ERROR, ProtocolError


class StoreError(ProtocolError):
    """A write to the job store failed (the job or request it served cannot go on)."""

    code = INTERNAL_ERROR


class DiskFull(StoreError):
    """The store's disk is full (ENOSPC) or over quota (EDQUOT)."""

    code = DISK_FULL


def store_error(exc: OSError, what: str) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(
            f"the job store's disk is full: cannot write {what}. Free some space, then try again."
        )
    return StoreError(f"cannot write {what}: {exc}")


_RECORD = struct.Struct("<4sIQ")  # magic, crc32 of payload, payload length
MAGIC = b"DPEV"
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
    return _RECORD.pack(MAGIC, zlib.crc32(payload), len(payload)) + payload


def intact_at(data: bytes | memoryview, pos: int) -> int:
    """Payload length of an intact record at pos, or -1."""
    if pos + HEADER_BYTES > len(data):
        return -1
    magic, crc, length = _RECORD.unpack_from(data, pos)
    start = pos + HEADER_BYTES
    if magic != MAGIC or start + length > len(data) or zlib.crc32(data[start : start + length]) != crc:
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
        nxt = data.find(MAGIC, pos + 1)
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


def state_crc(state: dict[str, object]) -> int:
    """The checksum state.json carries: CRC-32 of its other fields as sorted-key JSON."""
    return zlib.crc32(json.dumps(state, sort_keys=True).encode())
