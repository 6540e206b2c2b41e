"""What one message's handling carries down its call stack without passing it along: the HTTP
request's credential and what the transaction's handler adds to the message's "answered" log line.
`Gateway.handle` sets both for each message (service.py)."""

from __future__ import annotations

import contextvars
from typing import Any

# The HTTP request's `Authorization` header (an institution's bearer token), passed on to the router
# with each call made for that request; the router checks it (medaid.router.security).
AUTHORIZATION: contextvars.ContextVar[str | None] = contextvars.ContextVar("authorization", default=None)
# What a transaction's handler adds to the message's one "answered" log line (who, which settlement).
NOTED: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("answered_fields", default=None)


def note(**fields: Any) -> None:
    noted = NOTED.get()
    if noted is not None:
        noted.update(fields)
