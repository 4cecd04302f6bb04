"""Synthetic payloads for the transport and Blender-import benchmarks (numpy + stdlib only, so it runs
in the backend's and in Blender's Python alike)."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def grid_mesh(target_faces: int = 1_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A wavy height-field grid with about target_faces triangles: vertices (N,3) float32,
    faces (M,3) uint32 and per-corner UVs (M,3,2) float32."""
    n = int(np.sqrt(target_faces / 2)) + 1
    u, v = np.meshgrid(np.linspace(0, 1, n, dtype=np.float32), np.linspace(0, 1, n, dtype=np.float32))
    z = 0.05 * np.sin(12 * u) * np.cos(9 * v)
    verts = np.stack([u - 0.5, v - 0.5, z], axis=-1).reshape(-1, 3).astype(np.float32)
    idx = np.arange(n * n, dtype=np.uint32).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    uv_vert = verts[:, :2] + 0.5
    uvs = np.ascontiguousarray(uv_vert[faces])
    return verts, np.ascontiguousarray(faces), uvs


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an (H,W,3) uint8 image as PNG with zlib only (no Pillow in Blender's Python)."""
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def texture_image(side: int = 2048, seed: int = 0) -> np.ndarray:
    """A texture with detail (a smooth pattern plus noise), so PNG sizes are realistic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    base = np.stack([np.sin(20 * x) * 0.5 + 0.5, np.cos(15 * y) * 0.5 + 0.5, x * y], -1)
    img = base * 200 + rng.integers(0, 40, (side, side, 3))
    return np.clip(img, 0, 255).astype(np.uint8)
