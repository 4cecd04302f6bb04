"""Messages <-> ZeroMQ multipart frames.

Frame 0 is the header, a msgpack map:

    {"v": "1.2", "type": "submit", "id": "c1-7", "re": "", "job": "", "seq": 0, "body": {...}}

Frames 1..n are the binary buffers the body references (frames.py). Decoding
checks the published limits before it touches the content, never copies an
array it can view, and raises only errors.ProtocolError subclasses.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

import msgpack

from . import PROTOCOL_VERSION
from .errors import DecodeError, LimitExceeded, ProtocolError, ValidationError, VersionMismatch
from .fields import MAX_ID_CHARS, read_int, read_str, refuse_unknown_fields
from .frames import FrameReader, FrameWriter
from .limits import LIMITS
from .messages import CLIENT_MESSAGES, MESSAGE_TYPES, Message
from .names import check_file_name
from .wire_types import wire_type

_counter = itertools.count(1)
_prefix = os.urandom(4).hex()


def new_message_id() -> str:
    return f"{_prefix}-{next(_counter)}"


def major(version: str) -> str:
    return version.split(".", 1)[0]


def encode(msg: Message) -> list[bytes | memoryview]:
    """Encode a message into its frames (header first). Arrays are not copied when contiguous."""
    w = FrameWriter()
    body = msg.body(w)
    header = {
        "v": PROTOCOL_VERSION,
        "type": msg.TYPE,
        "id": msg.msg_id or new_message_id(),
        "re": msg.re,
        "job": msg.job_id,
        "seq": msg.seq,
        "body": body,
    }
    return [msgpack.packb(header, use_bin_type=True), *w.frames]


def _buffer(frame: Any) -> memoryview:
    # zmq.Frame (recv copy=False) exposes .buffer; bytes/bytearray/memoryview are used as they are.
    buf = getattr(frame, "buffer", frame)
    try:
        view = memoryview(buf)
    except TypeError as exc:
        raise DecodeError(f"frame of type {type(frame).__name__} is not a buffer") from exc
    if not view.c_contiguous:
        raise DecodeError("frame buffer is not contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def decode_header(frames: Sequence[Any]) -> dict[str, Any]:
    """Unpack and check the header frame only (limits, version, type). Raises ProtocolError."""
    if not frames:
        raise DecodeError("empty message")
    if len(frames) > LIMITS.max_frames:
        raise LimitExceeded(f"message has {len(frames)} frames; the limit is {LIMITS.max_frames}")
    head = _buffer(frames[0])
    if head.nbytes > LIMITS.max_header_bytes:
        raise LimitExceeded(f"header has {head.nbytes} bytes; the limit is {LIMITS.max_header_bytes}")
    try:
        header = msgpack.unpackb(head, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        # strict_map_key's own words name Python's types ("NoneType is not allowed for map key").
        reason = "a map key is not a string" if "map key" in str(exc) else str(exc)
        raise DecodeError(f"header is not valid msgpack: {reason}") from exc
    if not isinstance(header, dict):
        raise DecodeError(f"header must be a map, got {wire_type(header)}")
    version = read_str(header, "v", max_chars=32)
    if major(version) != major(PROTOCOL_VERSION):
        raise VersionMismatch(
            f"the peer speaks protocol {version}, this side speaks {PROTOCOL_VERSION}; "
            f"update the older of the add-on and the backend so the major versions match"
        )
    kind = read_str(header, "type", max_chars=MAX_ID_CHARS)
    if kind not in MESSAGE_TYPES:
        raise ValidationError(f"unknown message type {kind!r}")
    return header


def peek_message_id(frames: Sequence[Any]) -> str:
    """The header's message id, or "" when there is none to read; for answering even a refused message."""
    try:
        head = _buffer(frames[0])
        if head.nbytes > LIMITS.max_header_bytes:
            return ""
        header = msgpack.unpackb(head, raw=False, strict_map_key=True)
        msg_id = header.get("id", "") if isinstance(header, dict) else ""
        return msg_id if isinstance(msg_id, str) and len(msg_id) <= MAX_ID_CHARS else ""
    except Exception:  # this is best effort by design: the caller is already handling a bad message
        return ""


def decode(frames: Sequence[Any]) -> Message:
    """Decode and validate one message. Raises errors.ProtocolError (never anything else)."""
    header = decode_header(frames)
    views = [_buffer(f) for f in frames]
    total = sum(v.nbytes for v in views)
    if total > LIMITS.max_message_bytes:
        raise LimitExceeded(f"message has {total} bytes; the limit is {LIMITS.max_message_bytes}")
    for i, v in enumerate(views[1:], start=1):
        if v.nbytes > LIMITS.max_frame_bytes:
            raise LimitExceeded(f"frame {i} has {v.nbytes} bytes; the limit is {LIMITS.max_frame_bytes}")
    body = header.get("body", {})
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ValidationError(f"body must be a map, got {wire_type(body)}")
    common = {
        "msg_id": read_str(header, "id", "", max_chars=MAX_ID_CHARS),
        "re": read_str(header, "re", "", max_chars=MAX_ID_CHARS),
        "job_id": read_str(header, "job", "", max_chars=MAX_ID_CHARS),
        "seq": read_int(header, "seq", 0),
    }
    if common["job_id"]:
        check_file_name(common["job_id"], "header field 'job'")  # a job id names its folder in the store
    cls = MESSAGE_TYPES[header["type"]]
    if cls in CLIENT_MESSAGES:  # a request: only the fields this version defines (README.md, Frames)
        refuse_unknown_fields(body, cls.BODY_FIELDS, f"{cls.TYPE}'s body")
    try:
        return cls.from_body(body, FrameReader(views), **common)
    except ProtocolError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
        # Anything the field readers did not anticipate is still the sender's fault.
        raise ValidationError(f"{cls.TYPE}: {exc}") from exc
