"""What a value read from the wire is called in an error message: by the names of the wire format
(msgpack: nil, a boolean, an integer, a number, a string, binary, a list, a map), never by Python's
(NoneType, dict, ...), so that a client written in any language reads which rule its field broke."""

from __future__ import annotations

WIRE_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),  # before int: a Python bool is an int
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    ((bytes, bytearray, memoryview), "binary data"),  # type: ignore[arg-type]
    (list, "a list"),
    (tuple, "a list"),
    (dict, "a map"),
)


def wire_type(value: object) -> str:
    """'nil', 'a boolean', 'an integer', 'a number', 'a string', 'binary data', 'a list' or 'a map'."""
    if value is None:
        return "nil"
    for kind, name in WIRE_TYPES:
        if isinstance(value, kind):
            return name
    return "a value of no wire type"
