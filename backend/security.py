"""Who may talk to the backend: loopback by default, CURVE encryption and authentication otherwise."""

from __future__ import annotations

import ipaddress
import logging
import os
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


def check_bind_allowed(
    endpoint: str, keys: CurveKeys | None, clients: Path | None = None, allow_any_client: bool = False
) -> None:
    """Refuse to listen beyond loopback without authentication of the server (CURVE keys) and of
    its clients (an allow-list folder, or allow_any_client said in so many words)."""
    if keys is None and not is_loopback_endpoint(endpoint):
        raise InsecureBindRefused(
            f"refusing to bind {endpoint} without authentication: anyone who can reach it could run jobs "
            f"on this GPU. Create keys with `dreampolish-backend keys --out DIR` and start with "
            f"`--curve-secret-key DIR/server.key_secret`, or bind a loopback address such as "
            f"tcp://127.0.0.1:5557."
        )
    if keys is not None and clients is None and not allow_any_client and not is_loopback_endpoint(endpoint):
        raise InsecureBindRefused(
            f"refusing to bind {endpoint} without a client allow-list: the server's public key is handed "
            f"around, so anyone holding it could run jobs on this GPU. Put each client's public key "
            f"(`dreampolish-backend keys --client NAME --out DIR`, the NAME.key file) in a folder and "
            f"start with `--curve-clients FOLDER`, or pass `--allow-any-client` to serve every client key."
        )
    if keys is not None:
        log.info("CURVE enabled; clients need the server public key %s", keys.public.decode("ascii"))


class KeyFolder:
    """The public certificates (NAME.key files) in one folder, read again whenever the folder or a
    file in it changes: adding or removing an artist's key needs no restart."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise OSError(f"client key folder {self.folder} does not exist")
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._keys: frozenset[bytes] = frozenset()

    def _current_signature(self) -> tuple[tuple[str, int, int], ...]:
        try:
            entries = [(e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in os.scandir(self.folder)]
        except OSError as exc:
            log.warning("cannot read client key folder %s: %s", self.folder, exc)
            return ()
        return tuple(sorted(entries))

    def keys(self) -> frozenset[bytes]:
        """The Z85 public keys now in the folder (a file that does not read as a certificate, e.g.
        one still being copied, is left out until it changes again)."""
        signature = self._current_signature()
        if signature != self._signature:
            import zmq.auth

            keys = set()
            for path in sorted(self.folder.glob("*.key")):
                try:
                    public, _ = zmq.auth.load_certificate(str(path))
                except (OSError, ValueError) as exc:
                    log.warning("client key file %s not read: %s", path, exc)
                    continue
                if public:
                    keys.add(public)
            self._keys = frozenset(keys)
            self._signature = signature
            log.info("client keys in %s: %d", self.folder, len(self._keys))
        return self._keys

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            key = key.encode("ascii", "replace")
        return key in self.keys()


@dataclass
class ClientAccess:
    """Which client keys the backend serves (ZAP), and which of them are admins."""

    clients: KeyFolder | None = None
    """The allow-list (serve --curve-clients); None with allow_any serves every key."""
    admins: KeyFolder | None = None
    """Keys that see and cancel every job (serve --curve-admins); they are served too."""
    allow_any: bool = False

    def callback(self, domain: str, key: bytes) -> bool:
        """zmq.auth credentials-provider callback (ZAP thread): key is the client's Z85 public key."""
        allowed = self.allow_any or (self.clients is not None and key in self.clients)
        allowed = allowed or (self.admins is not None and key in self.admins)
        if not allowed:
            log.warning("refused client key %s: not in the client key folder", key[:8].decode("ascii", "replace"))
        return allowed

    def is_admin(self, user: str) -> bool:
        return bool(user) and self.admins is not None and user in self.admins
