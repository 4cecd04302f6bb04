"""`dreampolish-backend`: the compute server's command line.

    dreampolish-backend serve [--bind tcp://127.0.0.1:5557] [--store DIR] ...
    dreampolish-backend keys --out DIR

The subcommands live in backend/commands/ (one module each, listed in
commands.COMMAND_MODULES).
"""

from __future__ import annotations

import argparse
import logging
import sys

from .commands import command_modules


def build_parser() -> argparse.ArgumentParser:
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
    for module in command_modules():
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
