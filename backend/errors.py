"""Failures the backend reports to the client by name: below the job contract and the models, so that
both can raise them without one importing the other."""

from __future__ import annotations


class JobFailed(Exception):
    """A pipeline's clear, user-facing failure (bad input found late, missing model ...)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
