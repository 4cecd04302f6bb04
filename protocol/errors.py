"""The wire's error codes, each defined once with its meaning, and the typed errors of the protocol.

Every code a backend puts in an `error` reply or a `failed` event is one of the constants below; the
backend, the clients and the spec's table of codes (README.md, checked by a test) all take them from
here. Wire input is checked by code that raises these errors, never by assert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SentIn = Literal["error", "failed", "error, failed"]


@dataclass(frozen=True)
class ErrorCode:
    """One wire error code: the string on the wire, the message(s) that carry it, and what it means."""

    code: str
    sent_in: SentIn
    meaning: str


ERROR_CODES: dict[str, ErrorCode] = {}
"""Every wire error code by its string, in the order the spec's table lists them."""


def _code(code: str, sent_in: SentIn, meaning: str) -> str:
    ERROR_CODES[code] = ErrorCode(code, sent_in, meaning)
    return code


# -- requests refused (an `error` reply, `re` set) ---------------------------------------------------
MALFORMED_MESSAGE = _code(
    "malformed_message", "error",
    "the frames are not a message: bad msgpack, a missing or extra frame, a bad buffer reference, a header "
    "that is not a map, or a backend-only message type sent by a client")
INVALID_MESSAGE = _code(
    "invalid_message", "error, failed",
    "a message decoded but a field is wrong (type, range, dtype, shape, an unknown field or message type, "
    "an unknown preset, stage or option); the message names the field and the rule")
LIMIT_EXCEEDED = _code(
    "limit_exceeded", "error",
    "a message or field is larger than a published limit (`welcome.limits`)")
VERSION_MISMATCH = _code(
    "version_mismatch", "error",
    "the peer speaks another major protocol version; the message names both")
UNKNOWN_JOB = _code("unknown_job", "error", "the backend has no job with that id")
BAD_STATE = _code(
    "bad_state", "error",
    "the job is not in a state that allows the request (resume of a job that is not paused, delete of an "
    "unfinished job)")
NOT_YOUR_JOB = _code("not_your_job", "error", "the job belongs to another client key (only its owner or an admin "
                                              "may use it)")
QUEUE_FULL = _code(
    "queue_full", "error",
    "the client's or the backend's queue holds as many jobs as it may; nothing queued was lost: submit again "
    "later")
DISK_FULL = _code("disk_full", "error, failed", "the backend's job store is full or over quota")
INTERNAL_ERROR = _code(
    "internal_error", "error, failed",
    "the backend failed in a way it did not foresee (a bug, or a write to its job store failed); the message "
    "names the exception")
PROTOCOL_ERROR = _code(
    "protocol_error", "error",
    "a protocol error with no more specific code (what a reader takes when an error reply has no code)")

# -- jobs that failed (a `failed` event) --------------------------------------------------------------
OUT_OF_MEMORY = _code(
    "out_of_memory", "failed",
    "the GPU (or the computer) ran out of memory; the message says what to make smaller")
MODEL_MISSING = _code("model_missing", "failed", "a model the preset needs is not installed on the backend")
MISSING_PACKAGE = _code("missing_package", "failed",
                        "a Python package the preset needs is not installed on the backend")
EMPTY_REFERENCE = _code("empty_reference", "failed",
                        "the reference image has no foreground: there is no object in it")
BACKGROUND_REMOVAL_FAILED = _code("background_removal_failed", "failed",
                                  "the background remover could not segment the reference image")
EMPTY_GEOMETRY = _code("empty_geometry", "failed",
                       "a geometry stage ended with no surface (try another seed or more steps)")
NO_GEOMETRY = _code("no_geometry", "failed", "a stage that refines a mesh was given none")
NO_TEXTURE = _code("no_texture", "failed", "the export stage ran without the texture stage's result")
SPEC_LOST = _code("spec_lost", "failed",
                  "a stored job's request could not be read back after a restart, so it cannot run again")
BAD_WORKER_FILE = _code("bad_worker_file", "failed",
                        "a cluster worker sent a result file outside the job's folder (refused)")


class ProtocolError(Exception):
    """Base class: a message could not be used. `code` is the machine-readable error code on the wire."""

    code = PROTOCOL_ERROR


class ValidationError(ProtocolError):
    """A message decoded but a field has the wrong type, range, dtype, shape or size."""

    code = INVALID_MESSAGE


class DecodeError(ProtocolError):
    """The frames are not a message at all (bad msgpack, missing frames, bad buffer references)."""

    code = MALFORMED_MESSAGE


class LimitExceeded(ValidationError):
    """A message or field is larger than a published limit."""

    code = LIMIT_EXCEEDED


class VersionMismatch(ProtocolError):
    """The peer speaks another major protocol version."""

    code = VERSION_MISMATCH
