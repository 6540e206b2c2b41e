"""One settlement item of a batch, and the outcomes both apply paths answer with."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import grpc

from medaid.common import errors, metrics, tracing
from medaid.common.errors import DomainError
from medaid.common.idempotency import Claim
from medaid.common.logs import event
from medaid.common.transport import store_error
from medaid.common.values import text
from medaid.registry.context import error_item
from medaid.registry.records import SettlementRecord
from medaid.registry.v1 import registry_pb2 as pb

log = logging.getLogger("medaid.registry")


@dataclass
class Item:
    index: int  # position in the batch
    req: pb.SettleRequest
    pid: str
    fp: str  # the request's fingerprint (idempotency)
    conflicts: int = 0  # atomic attempts that found what they were planned from changed


def failed(exc: DomainError) -> pb.SettleOutcome:
    return pb.SettleOutcome(error=error_item(exc))


def settled(rec: SettlementRecord) -> pb.SettleOutcome:
    out = pb.SettleOutcome()
    out.response.result.CopyFrom(rec.result())  # one copy, where nesting constructors copies twice
    return out



def item_failure(exc: Exception) -> DomainError:
    """An item's outcome when a step failed with something other than a refusal: the store's outage
    (retryable), else an internal error (the claim stays, a retry or the recovery loop finishes it)."""
    found = store_error(exc)
    if found is not None:
        return found
    log.error("settlement step failed", exc_info=exc)
    return DomainError(grpc.StatusCode.UNKNOWN, "INTERNAL_ERROR", "the settlement did not finish; retry with the "
                       "same request id")


def claim_of(raw: list[Any]) -> Claim:
    """A DONE claim read as HMGET fp, state, resp, err."""
    err = text(raw[3] or b"")
    return Claim("DONE", raw[2] or b"", error=DomainError.from_dict(json.loads(err)) if err else None)


def replay(claim: Claim, rec: SettlementRecord | None) -> pb.SettleOutcome:
    """The first answer of a finished settlement: its recorded refusal, else its record."""
    if claim.error is not None:
        return failed(claim.error)
    if claim.response:
        metrics.settlement_outcome("replayed")
        return pb.SettleOutcome(response=pb.SettleResponse.FromString(claim.response))
    if rec is None:
        return failed(errors.unavailable("SETTLEMENT_IN_PROGRESS", "the settlement has not finished; retry"))
    metrics.settlement_outcome("replayed")
    return settled(rec)


def log_settled(rec: SettlementRecord, path: metrics.SettlePath, traceparent: str = "") -> None:
    """The settlement's log line; `traceparent`: a batch item's own trace, which the line then names
    (the item's onward calls are none on the atomic path, so it need not become the current call)."""
    if log.isEnabledFor(logging.INFO):
        found = tracing.parse(traceparent) if traceparent else None
        ids = {"trace_id": found[0], "request_id": rec.sid} if found is not None else {}
        event(log, "settled", patient=rec.patient, settlement=rec.sid, amount_fen=rec.amount, acct_pay=rec.acct_pay,
              wallet_pay=rec.wallet_pay, mulaid_pay=rec.mulaid_pay,
              helpers=",".join(c.helper_id for c in rec.charges), cash_pay=rec.cash_pay,
              helper_reason=rec.helper_reason, path=path, **ids)
    metrics.settled(path, rec.acct_pay, rec.wallet_pay, rec.mulaid_pay, rec.cash_pay, rec.helper_reason,
                    rec.wallet_reason)
