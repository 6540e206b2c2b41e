"""A latency histogram as a PNG, with no plotting dependency (zlib + struct)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

W, H, MARGIN = 640, 360, 30


def _png(pixels: list[bytearray]) -> bytes:
    raw = b"".join(b"\x00" + bytes(row) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def histogram_png(latencies_ms: list[float], path: str, bins: int = 60) -> Path:
    """Bars of request counts per latency bin (0 … p99.9), axes in grey; p50/p99 marked in red."""
    rows = [bytearray(b"\xff" * (W * 3)) for _ in range(H)]

    def put(x: int, y: int, rgb: tuple[int, int, int]) -> None:
        if 0 <= x < W and 0 <= y < H:
            rows[y][3 * x:3 * x + 3] = bytes(rgb)

    lat = sorted(latencies_ms)
    if lat:
        hi = lat[min(len(lat) - 1, int(len(lat) * 0.999))] or 1.0
        counts = [0] * bins
        for v in lat:
            counts[min(bins - 1, int(v / hi * bins))] += 1
        top = max(counts) or 1
        bar_w = (W - 2 * MARGIN) // bins
        for i, c in enumerate(counts):
            height = int(c / top * (H - 2 * MARGIN))
            for x in range(MARGIN + i * bar_w, MARGIN + (i + 1) * bar_w - 1):
                for y in range(H - MARGIN - height, H - MARGIN):
                    put(x, y, (70, 110, 180))
        for q in (0.5, 0.99):
            v = lat[min(len(lat) - 1, int(len(lat) * q))]
            x = MARGIN + int(v / hi * bins * bar_w)
            for y in range(MARGIN, H - MARGIN):
                put(x, y, (200, 40, 40))
    for x in range(MARGIN, W - MARGIN):
        put(x, H - MARGIN, (90, 90, 90))
    for y in range(MARGIN, H - MARGIN):
        put(MARGIN, y, (90, 90, 90))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(_png(rows))
    return out
