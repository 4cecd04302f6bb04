"""Subcommands of `dreampolish-backend`.

Each module listed in COMMAND_MODULES defines `register(subparsers)`, which adds
its parser and sets `run=<callable(args) -> int>` as the parser default. To add
a command, write `backend/commands/<name>.py` and add one line below.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Protocol

COMMAND_MODULES: tuple[str, ...] = (
    "serve",
    "keys",
    "render",
    "models",
    "fidelity",
    "dryrun",
)
"""Subcommand modules in the order `--help` lists them."""


class CommandModule(Protocol):
    def register(self, subparsers: argparse._SubParsersAction) -> None: ...


def command_modules(names: tuple[str, ...] = COMMAND_MODULES) -> list[CommandModule]:
    """Import the listed subcommand modules (relative to this package), by default all of them."""
    return [importlib.import_module(f"{__name__}.{name}") for name in names]
