"""Who may talk to the backend: loopback by default, CURVE encryption and authentication otherwise."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

LOCAL_TRANSPORTS = ("ipc", "inproc")


class InsecureBindRefused(ValueError):
    """The backend would listen beyond this machine without CURVE keys."""


@dataclass(frozen=True)
class CurveKeys:
    """The server's CURVE key pair, Z85-encoded as ZeroMQ writes them."""

    public: bytes
    """Clients need this (the add-on's "server key" preference, `dreampolish --server-key`)."""
    secret: bytes


def load_server_keys(secret_key_file: Path) -> CurveKeys:
    """Read a key pair written by `dreampolish-backend keys` (the NAME.key_secret file)."""
    import zmq.auth

    if not Path(secret_key_file).is_file():
        raise OSError(f"CURVE secret key file {secret_key_file} does not exist")
    public, secret = zmq.auth.load_certificate(str(secret_key_file))
    if not secret:
        raise ValueError(
            f"{secret_key_file} holds no secret key; pass the .key_secret file, not the .key file"
        )
    return CurveKeys(public=public, secret=secret)


def is_loopback_endpoint(endpoint: str) -> bool:
    """True when a ZeroMQ endpoint can only be reached from this machine."""
    parts = urlsplit(endpoint)
    if parts.scheme in LOCAL_TRANSPORTS:
        return True
    if parts.scheme != "tcp":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # "*", an interface name or a host name: may be reachable from elsewhere.
        return False


def check_bind_allowed(endpoint: str, keys: CurveKeys | None) -> None:
    """Refuse to listen beyond loopback without authentication."""
    if keys is None and not is_loopback_endpoint(endpoint):
        raise InsecureBindRefused(
            f"refusing to bind {endpoint} without authentication: anyone who can reach it could run jobs "
            f"on this GPU. Create keys with `dreampolish-backend keys --out DIR` and start with "
            f"`--curve-secret-key DIR/server.key_secret`, or bind a loopback address such as "
            f"tcp://127.0.0.1:5557."
        )
    if keys is not None:
        log.info("CURVE enabled; clients need the server public key %s", keys.public.decode("ascii"))
