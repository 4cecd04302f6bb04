"""Published limits, enforced on decode and announced in the welcome message."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Limits:
    max_prompt_chars: int = 2000
    """Longest prompt or negative prompt, in characters."""
    max_vertices: int = 2_000_000
    """Most vertices in one mesh."""
    max_faces: int = 4_000_000
    """Most triangles in one mesh."""
    max_frame_bytes: int = 256 * 1024 * 1024
    """Largest single binary frame."""
    max_message_bytes: int = 512 * 1024 * 1024
    """Largest message, all frames together."""
    max_frames: int = 64
    """Most frames in one message (header included)."""
    max_header_bytes: int = 1024 * 1024
    """Largest msgpack header frame."""
    max_texture_side: int = 8192
    """Largest texture width or height."""
    max_image_side: int = 8192
    """Largest camera resolution or preview side."""
    max_cameras: int = 64
    """Most cameras in one rig."""
    max_reference_image_bytes: int = 64 * 1024 * 1024
    """Largest reference image PNG file."""
    max_reference_image_side: int = 4096
    """Largest reference image width or height."""
    min_reference_image_side: int = 16
    """Smallest reference image width or height (less shows too little to fit a shape to)."""
    max_reference_views: int = 8
    """Most reference pictures (each with its camera) in one multi-view request (spec.views)."""
    max_pending_requests_per_client: int = 8
    """Requests carrying binary frames (a mesh, a reference image) one client may have waiting to be
    checked; the backend checks one at a time per client (a PNG's check inflates its pixel data)."""
    max_pending_requests_total: int = 64
    """Such requests of all clients together."""
    max_pending_bytes_per_client: int = 1024 * 1024 * 1024
    """Bytes of such requests one client may have waiting to be checked and stored (two messages of
    the largest size)."""
    max_pending_bytes_total: int = 2 * 1024 * 1024 * 1024
    """Bytes of such requests of all clients together."""
    max_connections_per_address: int = 16
    """Connections the backend serves at once from one peer address (IP); one more is refused in its
    handshake. Each holds what it has sent of an unfinished message until the message's last frame."""
    max_connections_total: int = 64
    """Connections of all addresses together."""
    max_unfinished_bytes_total: int = 2 * 1024 * 1024 * 1024
    """Bytes of messages still arriving (sent in part), of all connections together; past it the backend
    shuts down the connection in the middle of a message that has sent nothing for longest (never one
    between messages; a connection's own unfinished message may hold `max_message_bytes`)."""

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


LIMITS = Limits()
