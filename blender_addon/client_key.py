"""This Blender's own CURVE client key pair, which a backend with an allow-list (`serve
--curve-clients DIR`) must know before it serves the add-on.

The pair is made on first use in ZeroMQ's certificate format (zmq.auth.create_certificates): NAME.key
holds the public key, the file the artist sends to the backend's administrator; NAME.key_secret
holds both keys and never leaves this machine. Both live in the extension's user folder, which
survives add-on updates and is never saved into a .blend file.

Main thread only (bpy.utils.extension_path_user); the connection receives the secret file's path.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import bpy

ADDON_ID = __package__
KEY_FOLDER = "keys"


@dataclass(frozen=True)
class ClientKey:
    public_file: Path
    """NAME.key: what the administrator copies into the backend's clients folder."""
    secret_file: Path
    """NAME.key_secret: this Blender's own; passed to the client as its key pair."""
    public_key: str
    """The public key's Z85 text (40 characters)."""


def key_folder() -> Path:
    return Path(bpy.utils.extension_path_user(ADDON_ID, path=KEY_FOLDER, create=True))


def _key_name() -> str:
    """blender-USER-HOST: every artist's file lands in the same clients folder, so the name must
    tell them apart (and say whose key it is to the administrator)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        user = "user"
    raw = f"blender-{user}-{socket.gethostname().split('.')[0]}"
    return re.sub(r"[^A-Za-z0-9_-]+", "_", raw)[:80]


def existing() -> ClientKey | None:
    """The pair made earlier, or None."""
    import zmq.auth

    folder = key_folder()
    for secret_file in sorted(folder.glob("*.key_secret")):
        public_file = secret_file.with_suffix(".key")
        if not public_file.is_file():
            continue
        try:
            public, secret = zmq.auth.load_certificate(str(secret_file))
        except (OSError, ValueError):
            continue  # an unreadable file is not ours to delete; the next one (or a new pair) is used
        if public and secret:
            return ClientKey(public_file, secret_file, public.decode("ascii"))
    return None


def ensure() -> ClientKey:
    """The pair, made now if there is none yet."""
    return existing() or _create(key_folder())


def _create(folder: Path) -> ClientKey:
    import zmq.auth

    os.chmod(folder, 0o700)
    # Written in a private folder first, then moved: the secret file is never readable by others,
    # not even for a moment, and a reader never sees half a pair.
    staging = Path(tempfile.mkdtemp(prefix=".new-", dir=folder))
    try:
        public_tmp, secret_tmp = (Path(p) for p in zmq.auth.create_certificates(staging, _key_name()))
        os.chmod(secret_tmp, 0o600)
        public_file, secret_file = folder / public_tmp.name, folder / secret_tmp.name
        os.replace(public_tmp, public_file)
        os.replace(secret_tmp, secret_file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    public, _ = zmq.auth.load_certificate(str(public_file))
    return ClientKey(public_file, secret_file, public.decode("ascii"))
