"""The servicers' one translation from a failure to a rich gRPC status (google.rpc.Status with
ErrorInfo). Servicers call the application layer through `call_or_abort` and hold no logic:

* a DomainError becomes its status;
* a downstream refusal to pass on (`Passthrough`) keeps the downstream's status unchanged;
* the service's own Redis not answering (`errors.from_store`) becomes UNAVAILABLE / STORE_UNAVAILABLE,
  whose message names no host or port; the real exception is logged here, on the server."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from medaid.common import errors, tracing
from medaid.common.errors import DomainError
from medaid.common.logs import scrub

log = logging.getLogger("medaid.rpc")
T = TypeVar("T")


class Passthrough(Exception):
    """A downstream refusal, to be returned to the caller with its status unchanged."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self.status = status


def store_error(exc: BaseException) -> DomainError | None:
    """`errors.from_store(exc)`, and when it is one, the real exception logged (scrubbed) server-side.
    For a batch RPC that answers per item: `store_error(exc) or <the item's INTERNAL_ERROR>`."""
    found = errors.from_store(exc)
    if found is not None:
        log.warning("store unavailable", extra={"fields": {"error": scrub(f"{type(exc).__name__}: {exc}")}})
    return found


async def call_or_abort(context: grpc.aio.ServicerContext, fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return await fn()
    except DomainError as exc:
        status = exc.to_status()
        tracing.note_reason(exc.reason)
        log.info("refused", extra={"fields": {"reason": exc.reason, "code": exc.code.name,
                                              "detail": scrub(exc.message)}})
    except Passthrough as exc:
        status = exc.status
        tracing.note_reason(errors.status_reason(status))
    except Exception as exc:
        found = store_error(exc)
        if found is None:
            raise
        status = found.to_status()
        tracing.note_reason(found.reason)
    await context.abort_with_status(status)
    raise AssertionError("unreachable")
