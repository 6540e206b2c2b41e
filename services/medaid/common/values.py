"""Redis replies as text: every service reads bytes back from hashes and scripts the same way."""

from __future__ import annotations

from typing import Any


def text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def decode_hash(h: dict[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in h.items()}
