"""The servicers' one translation from a failure to a rich gRPC status (google.rpc.Status with
ErrorInfo). Servicers call the application layer through `call_or_abort` and hold no logic:

* a DomainError becomes its status;
* a downstream refusal to pass on (`Passthrough`) keeps the downstream's status unchanged;
* the service's own Redis not answering (`errors.from_store`) becomes UNAVAILABLE / STORE_UNAVAILABLE,
  whose message names no host or port; the real exception is logged here, on the server;
* any other exception (a defect) becomes UNKNOWN / INTERNAL_ERROR (`errors.internal`), its text and
  traceback logged here, never sent to the caller.

A downstream that did not answer (`errors.DOWNSTREAM_UNAVAILABLE`, also one passed on from further
down), and a lock still busy after the wait (`errors.WAITED_UNAVAILABLE`), is answered with
`grpc-retry-pushback-ms: -1`, so that the caller's channel does not retry what this service already
retried or waited for (gRFC A6); so is any UNAVAILABLE answered when the caller's deadline leaves
no time for a retry (its store or a downstream did not answer in what that deadline left)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from medaid.common import errors, rpc, tracing
from medaid.common.errors import DomainError
from medaid.common.logs import answer_level, scrub

log = logging.getLogger("medaid.rpc")
T = TypeVar("T")


# gRFC A6 server pushback: a negative value tells the caller's gRPC channel not to retry the call.
NO_RETRY: tuple[tuple[str, str], ...] = (("grpc-retry-pushback-ms", "-1"),)


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple[tuple[str, str | bytes], ...]
                 ) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def answered(status: grpc.Status, reason: str, late: bool = False) -> grpc.Status:
    """The status as this service answers it: with retry pushback -1 when it says a downstream did
    not answer after this service's own retries, or a lock stayed busy for the whole wait
    (errors.WAITED_UNAVAILABLE), or when it is `late`: the caller has less than rpc.DEADLINE_MARGIN_S
    left (its Redis or a downstream did not answer in what the caller's deadline left), so that a
    retry by the caller's channel could only end at that deadline and turn the reason into a bare
    DEADLINE_EXCEEDED (or, one service up, a caller that names this service as not answering)."""
    if status.code != grpc.StatusCode.UNAVAILABLE or (reason not in errors.WAITED_UNAVAILABLE and not late):
        return status
    kept = tuple((k, v) for k, v in status.trailing_metadata or () if k != NO_RETRY[0][0])
    return _Status(status.code, status.details, kept + NO_RETRY)


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
        log.error("store unavailable", extra={"fields": {"error": scrub(f"{type(exc).__name__}: {exc}")}})
    return found


def log_answer(reason: str, code: grpc.StatusCode, detail: str) -> None:
    """The line of an answer that is not a success, at its reason's level (logs.answer_level): a
    refusal `refused` at INFO, a service or store that did not answer `unavailable` at WARNING, one
    that answered amiss (errors.ANSWERED_AMISS) `downstream failed` at WARNING."""
    level = answer_level(reason)
    log.log(level, "refused" if level == logging.INFO else "downstream failed" if reason in errors.ANSWERED_AMISS
            else "unavailable",
            extra={"fields": {"reason": reason, "code": code.name, "detail": scrub(detail)}})


def _late(context: grpc.aio.ServicerContext) -> bool:
    """Whether the caller has less than rpc.DEADLINE_MARGIN_S left (never, without a deadline)."""
    remaining = context.time_remaining()
    return remaining is not None and remaining < rpc.DEADLINE_MARGIN_S


async def call_or_abort(context: grpc.aio.ServicerContext, fn: Callable[[], Awaitable[T]]) -> T:
    """`fn()`, every call it makes to another service ending before this call's caller gives up
    (`rpc.budget`: a downstream that does not answer is named in time), its failure as a status."""
    try:
        with rpc.budget(context.time_remaining()):
            return await fn()
    except DomainError as exc:
        status = answered(exc.to_status(), exc.reason, _late(context))
        tracing.note_reason(exc.reason)
        log_answer(exc.reason, exc.code, exc.message)
    except Passthrough as exc:
        reason = errors.status_reason(exc.status)
        status = answered(exc.status, reason, _late(context))
        tracing.note_reason(reason)
        log_answer(reason, exc.status.code, exc.status.details or "")
    except Exception as exc:
        found = store_error(exc)
        if found is None:
            # A defect, or data it cannot read: logged here with its traceback (the formatter masks the
            # people in it), answered INTERNAL_ERROR without the exception's text, which gRPC would
            # otherwise send the caller as it is (what the service read, a name or an id number included).
            log.error("unexpected error", exc_info=exc)
            found = errors.internal()
        status = answered(found.to_status(), found.reason, _late(context))
        tracing.note_reason(found.reason)
    await context.abort_with_status(status)
    raise AssertionError("unreachable")
