"""The Backend Address preference as the connection uses it: trimmed, and checked before ZeroMQ sees it
(ZeroMQ answers a malformed one with "Invalid argument", and takes port 99999 silently, to wait for ever)."""

from __future__ import annotations

import re

SCHEMES = ("tcp", "ipc")
_TCP = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(?P<port>[^:/]*)$")


def problem(address: str) -> str:
    """Why the (trimmed) address cannot reach a backend, naming the field and the rule; "" if it can."""
    text = address.strip()
    field = f"Backend Address {text!r}" if text else "Backend Address"
    if not text:
        return f"{field} is empty: write the backend's address, e.g. tcp://127.0.0.1:5555"
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in SCHEMES:
        return f"{field} must start with tcp:// (or ipc://), e.g. tcp://127.0.0.1:5555"
    if scheme == "ipc":
        return "" if rest else f"{field}: an ipc:// address needs a socket path after it"
    match = _TCP.match(text)
    if match is None:
        return f"{field} must read tcp://host:port, e.g. tcp://127.0.0.1:5555"
    if match["host"] == "*":
        return f"{field}: '*' is for a backend to listen on; connect to its host name or IP address"
    port = match["port"]
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"{field}: the port must be a whole number from 1 to 65535, not {port!r}"
    return ""
