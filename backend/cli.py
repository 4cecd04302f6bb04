"""`dreampolish-backend`: the compute server's command line.

    dreampolish-backend serve [--bind tcp://127.0.0.1:5557] [--store DIR] ...
    dreampolish-backend keys --out DIR                  (the server's pair)
    dreampolish-backend keys --client NAME --out DIR    (a client's pair; NAME.key goes in --curve-clients)

The subcommands live in backend/commands/ (one module each, listed in
commands.COMMAND_MODULES).
"""

from __future__ import annotations

import argparse
import logging
import sys

from .commands import COMMAND_MODULES, command_modules


def build_parser(commands: tuple[str, ...] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dreampolish-backend",
        description="DreamPolish compute backend: text or mesh to a polished, textured mesh.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging verbosity (default INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in command_modules(commands):
        module.register(subparsers)
    return parser


def _named_command(argv: list[str]) -> tuple[str, ...]:
    """The command named in argv alone, when there is one: some command modules import torch and
    the pipeline at import time (seconds), which `serve` must not wait for to refuse a bind."""
    named = [a for a in argv if a in COMMAND_MODULES]
    return (named[0],) if named and "-h" not in argv[: argv.index(named[0])] else COMMAND_MODULES


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_named_command(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
