"""The servicers' one translation from a DomainError to a rich gRPC status (google.rpc.Status with
ErrorInfo). Servicers call the application layer through `call_or_abort` and hold no logic."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from medaid.common.errors import DomainError
from medaid.common.logs import scrub

log = logging.getLogger("medaid.rpc")
T = TypeVar("T")


async def call_or_abort(context: grpc.aio.ServicerContext, fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return await fn()
    except DomainError as exc:
        log.info("refused", extra={"fields": {"reason": exc.reason, "code": exc.code.name,
                                              "detail": scrub(exc.message)}})
        await context.abort_with_status(exc.to_status())
        raise AssertionError("unreachable") from None
