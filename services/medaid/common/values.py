"""Redis replies as text: every service reads bytes back from hashes and scripts the same way."""

from __future__ import annotations

from typing import Any


def text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def decode_hash(h: dict[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in h.items()}


def decode_pairs(flat: list[Any]) -> dict[str, str]:
    """A flat [field, value, …] reply (HGETALL inside a Lua script) as a dict."""
    return {text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat), 2)}
