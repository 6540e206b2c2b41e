"""Client side of service-to-service calls: long-lived channels, deadlines on every call, and a
retry policy limited to UNAVAILABLE (safe because every mutating call is idempotent)."""

from __future__ import annotations

import hashlib
import json

import grpc

DEFAULT_DEADLINE_S = 3.0


def service_config(service_names: list[str]) -> str:
    return json.dumps({
        "methodConfig": [{
            "name": [{"service": name} for name in service_names],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.05s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }]
    })


def channel(address: str, service_names: list[str]) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=[
        ("grpc.service_config", service_config(service_names)),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
    ])


def derived_id(prefix: str, *parts: str) -> str:
    """A deterministic request id for a step derived from other ids (fits the 64-char limit)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]
    return f"{prefix}-{digest}"
