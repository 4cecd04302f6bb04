"""Binary frames of one message: arrays and byte blobs referenced from the header.

A header field that holds an array or a blob holds a reference map instead:

    {"frame": i, "dtype": "<f4", "shape": [N, 3]}   an array in frame i (C order, little-endian)
    {"frame": i}                                    raw bytes in frame i (e.g. a PNG file)

Frame 0 is the header itself, so i >= 1. Decoding an array is np.frombuffer on
the frame's buffer: no copy, read-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import DecodeError, LimitExceeded, ValidationError
from .limits import LIMITS
from .wire_types import wire_type

WIRE_DTYPES: dict[str, np.dtype] = {
    np.dtype(name).newbyteorder("<").str: np.dtype(name).newbyteorder("<")
    for name in ("float16", "float32", "float64", "uint8", "uint16", "uint32", "int32", "int64")
}
"""The only dtypes allowed on the wire, by their little-endian type string (e.g. "<f4", "|u1")."""

MAX_NDIM = 4


class FrameWriter:
    """Collects the binary frames of a message being encoded."""

    def __init__(self) -> None:
        self.frames: list[memoryview | bytes] = []

    def array(self, a: np.ndarray) -> dict[str, Any]:
        le = a.dtype.newbyteorder("<")
        if le.str not in WIRE_DTYPES:
            raise ValidationError(f"dtype {a.dtype} cannot travel on the wire")
        # Contiguous little-endian data is sent without a copy.
        a = np.ascontiguousarray(a, dtype=le)
        self.frames.append(memoryview(a).cast("B") if a.size else b"")
        return {"frame": len(self.frames), "dtype": le.str, "shape": list(a.shape)}

    def blob(self, data: bytes | bytearray | memoryview) -> dict[str, Any]:
        self.frames.append(data if isinstance(data, bytes) else bytes(data))
        return {"frame": len(self.frames)}


class FrameReader:
    """Resolves frame references of a decoded header against the message's frames (frames[0] unused)."""

    def __init__(self, frames: Sequence[memoryview]) -> None:
        self.frames = frames

    def _frame(self, ref: object, name: str) -> tuple[dict[str, Any], memoryview]:
        if not isinstance(ref, dict):
            raise ValidationError(f"{name} must be a frame reference, got {wire_type(ref)}")
        i = ref.get("frame")
        if not isinstance(i, int) or isinstance(i, bool) or not (1 <= i < len(self.frames)):
            raise DecodeError(f"{name} references frame {i!r}, but the message has {len(self.frames) - 1}")
        return ref, self.frames[i]

    def array(self, ref: object, name: str) -> np.ndarray:
        ref, buf = self._frame(ref, name)
        kind = ref.get("dtype")
        if not isinstance(kind, str):
            raise ValidationError(
                f"{name}.dtype must be a type string such as '<f4', got {wire_type(kind)}"
            )
        dtype = WIRE_DTYPES.get(kind)
        if dtype is None:
            raise ValidationError(f"{name} has dtype {ref.get('dtype')!r}; allowed: {sorted(WIRE_DTYPES)}")
        shape = ref.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_NDIM
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s for s in shape)
        ):
            raise ValidationError(f"{name}.shape must be a list of at most {MAX_NDIM} non-negative integers, "
                                  f"got {repr(shape)[:80]}")
        # Python ints do not overflow: a huge declared shape is caught here, before any allocation.
        nbytes = dtype.itemsize
        for s in shape:
            nbytes *= s
        if nbytes > LIMITS.max_frame_bytes:
            raise LimitExceeded(f"{name} declares {nbytes} bytes; the limit is {LIMITS.max_frame_bytes}")
        if nbytes != buf.nbytes:
            raise DecodeError(f"{name} declares {nbytes} bytes but its frame holds {buf.nbytes}")
        return np.frombuffer(buf, dtype=dtype).reshape(shape)

    def blob(self, ref: object, name: str) -> bytes:
        _, buf = self._frame(ref, name)
        return buf.tobytes()
