"""The errors a BackendClient raises, and the one mapping of an Error reply to them.

BackendUnreachable and AccessRefused say the connection itself failed; RequestRejected (and
UnknownJobError) carry the code and message of the backend's Error reply; JobFailedError and
JobCancelledError end a followed job. Wire-level errors are errors.py's ProtocolError family
(VersionMismatch among them).
"""

from __future__ import annotations

from . import messages as m
from .errors import UNKNOWN_JOB, VersionMismatch


class ClientError(Exception):
    """Base of the client's own errors."""


class BackendUnreachable(ClientError):
    """No answer from the backend: not running, wrong address, network down, or wrong CURVE server key."""


class AccessRefused(BackendUnreachable):
    """The backend refused the connection itself: it does not know this client's key, the client and
    the backend disagree on CURVE, or the backend serves as many connections as it may. The message
    is one line that says which."""


class RequestRejected(ClientError):
    """The backend answered a request with an Error (code + message)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


class UnknownJobError(RequestRejected):
    """The backend has no job with that id."""


class JobFailedError(ClientError):
    def __init__(self, job_id: str, code: str, message: str):
        super().__init__(f"job {job_id} failed: {message} ({code})")
        self.job_id = job_id
        self.code = code
        self.message = message


class JobCancelledError(ClientError):
    def __init__(self, job_id: str):
        super().__init__(f"job {job_id} was cancelled")
        self.job_id = job_id


def checked_reply(reply: m.Message) -> m.Message:
    """The reply itself, or the exception an Error reply stands for."""
    if isinstance(reply, m.Error):
        if reply.code == VersionMismatch.code:
            raise VersionMismatch(reply.message)
        if reply.code == UNKNOWN_JOB:
            raise UnknownJobError(reply.code, reply.message)
        raise RequestRejected(reply.code, reply.message)
    return reply
