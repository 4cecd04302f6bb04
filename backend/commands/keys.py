"""`dreampolish-backend keys`: create a CURVE key pair for a backend reachable beyond loopback.

Writes NAME.key (public: give it to clients, e.g. the add-on's preferences) and
NAME.key_secret (secret: pass it to `serve --curve-secret-key`), in ZeroMQ's
certificate format (zmq.auth.load_certificate reads both).

With --client NAME it writes a client's pair instead: NAME.key goes into the folder the
backend serves (`serve --curve-clients DIR`), NAME.key_secret stays with the client
(`dreampolish --client-key`).
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
    p.add_argument(
        "--client",
        default=None,
        metavar="NAME",
        help="write a client's key pair NAME.key / NAME.key_secret (NAME: the artist or machine)",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    client = getattr(args, "client", None)
    name = client or args.name
    if not _safe_stem(name):
        log.error("key name %r must be a plain file name (letters, digits, '-', '_', '.')", name)
        return 1
    public = write_key_pair(args.out, name, args.force)
    if public is None:
        return 1
    print(f"public key file: {args.out / (name + '.key')}")
    print(f"secret key file: {args.out / (name + '.key_secret')}")
    if client:
        print(f"client public key (copy {name}.key into the backend's --curve-clients folder): {public}")
    else:
        print(f"server public key (for clients): {public}")
    return 0


def _safe_stem(name: str) -> bool:
    return bool(name) and name not in (".", "..") and all(c.isalnum() or c in "-_." for c in name)


def write_key_pair(out: Path, name: str, force: bool) -> str | None:
    """Write NAME.key and NAME.key_secret into out; the Z85 public key, or None if they exist."""
    import zmq.auth

    out.mkdir(parents=True, exist_ok=True)
    public_file = out / f"{name}.key"
    secret_file = out / f"{name}.key_secret"
    if not force and (public_file.exists() or secret_file.exists()):
        log.error("%s or %s exists; pass --force to overwrite", public_file, secret_file)
        return None
    zmq.auth.create_certificates(str(out), name)
    # The secret must not be readable by other users of the machine.
    os.chmod(secret_file, 0o600)
    public, _ = zmq.auth.load_certificate(str(public_file))
    return public.decode("ascii")
