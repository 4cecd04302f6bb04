"""Typed errors of the protocol. Wire input is checked by code that raises these, never by assert."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class: a message could not be used. `code` is the machine-readable error code on the wire."""

    code = "protocol_error"


class ValidationError(ProtocolError):
    """A message decoded but a field has the wrong type, range, dtype, shape or size."""

    code = "invalid_message"


class DecodeError(ProtocolError):
    """The frames are not a message at all (bad msgpack, missing frames, bad buffer references)."""

    code = "malformed_message"


class LimitExceeded(ValidationError):
    """A message or field is larger than a published limit."""

    code = "limit_exceeded"


class VersionMismatch(ProtocolError):
    """The peer speaks another major protocol version."""

    code = "version_mismatch"
