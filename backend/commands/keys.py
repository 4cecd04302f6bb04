"""`dreampolish-backend keys`: create a CURVE key pair for a backend reachable beyond loopback.

Writes NAME.key (public: give it to clients, e.g. the add-on's preferences) and
NAME.key_secret (secret: pass it to `serve --curve-secret-key`), in ZeroMQ's
certificate format (zmq.auth.load_certificate reads both).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("keys", help="create a CURVE key pair (NAME.key, NAME.key_secret)")
    p.add_argument("--out", type=Path, default=Path("."), help="folder to write the key files into")
    p.add_argument("--name", default="server", help="file name stem (default: server)")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import zmq.auth

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    public_file = out / f"{args.name}.key"
    secret_file = out / f"{args.name}.key_secret"
    if not args.force and (public_file.exists() or secret_file.exists()):
        log.error("%s or %s exists; pass --force to overwrite", public_file, secret_file)
        return 1
    zmq.auth.create_certificates(str(out), args.name)
    # The secret must not be readable by other users of the machine.
    os.chmod(secret_file, 0o600)
    public, _ = zmq.auth.load_certificate(str(public_file))
    print(f"public key file: {public_file}")
    print(f"secret key file: {secret_file}")
    print(f"server public key (for clients): {public.decode('ascii')}")
    return 0
