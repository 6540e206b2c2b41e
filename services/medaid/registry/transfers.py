"""The registry's side of the national wallet (SPEC §5): debits of a sender's personal account for
a transfer, their refunds, lot returns, and the wallet's use-place note."""

from __future__ import annotations

import logging

from medaid.common import errors, tracing
from medaid.common.batcher import unpack_outcome
from medaid.common.errors import DomainError
from medaid.common.idempotency import validate_request_id
from medaid.common.logs import event
from medaid.common.values import text
from medaid.registry import validate
from medaid.registry.context import Context, check_batch, error_item, filled
from medaid.registry.store import Store
from medaid.registry.v1 import registry_pb2 as pb

log = logging.getLogger("medaid.registry")

TRANSFER_REFUSALS = {
    "INSUFFICIENT_BALANCE": "the sender's personal account balance is insufficient",
    "SENDER_NOT_ACTIVE": "the sender's insurance is not ACTIVE",
    "SENDER_NOT_EMPLOYEE": "the sender has no personal account (only employees can send)",
    "TRANSFER_CANCELLED": "this transfer was already returned or cancelled and can never be debited",
    "TRANSFER_MISMATCH": "this transfer id was already used with a different amount",
    "RETURN_MISMATCH": "this return id was already used with a different amount or transfer",
    "NO_PERSONAL_ACCOUNT": "this person has no personal account",
}


def transfer_error(code: str) -> DomainError:
    """A refusal the transfer scripts answer with `code`. An id reused with other fields (the scripts'
    TRANSFER_MISMATCH, RETURN_MISMATCH) is answered as every keyed write answers it (SPEC §7):
    IDEMPOTENCY_KEY_REUSED, the script's words saying which fields differ."""
    if code in ("TRANSFER_MISMATCH", "RETURN_MISMATCH"):
        return errors.exists("IDEMPOTENCY_KEY_REUSED", TRANSFER_REFUSALS[code])
    return errors.refused(code, TRANSFER_REFUSALS[code])


class TransferSide:
    def __init__(self, ctx: Context, store: Store) -> None:
        self.ctx = ctx
        self.store = store
        self.k = ctx.k

    async def debit_for_transfer(self, req: pb.DebitForTransferRequest) -> pb.DebitForTransferResponse:
        batch = await self.debit_for_transfer_batch(pb.DebitForTransferBatchRequest(requests=[req]))
        result = unpack_outcome(batch.outcomes[0])
        if isinstance(result, DomainError):
            raise result
        return result  # type: ignore[no-any-return]

    async def debit_for_transfer_batch(self, req: pb.DebitForTransferBatchRequest) -> pb.DebitForTransferBatchResponse:
        """Each item is exactly a DebitForTransfer (xfer_debit.lua: once per transfer id, in the same
        script as the debit); all of them run in one pipelined round trip."""
        check_batch(len(req.requests), "debits")
        outcomes: list[pb.DebitForTransferOutcome | None] = [None] * len(req.requests)
        valid: list[tuple[int, pb.DebitForTransferRequest, str]] = []
        for i, item in enumerate(req.requests):
            try:
                validate_request_id(item.transfer_id)
                pid = validate.id_number(item.sender_id_number, "sender_id_number")
                validate.amount(item.amount_fen)
                if item.recipient_province:
                    validate.province(item.recipient_province, "recipient_province")
                valid.append((i, item, pid))
            except DomainError as exc:
                outcomes[i] = pb.DebitForTransferOutcome(error=error_item(exc))
        now = self.ctx.clock.now_ms()
        k = self.k
        async with self.ctx.r.pipeline(transaction=False) as p:
            for _, item, pid in valid:
                await self.ctx.lua["xfer_debit"](
                    keys=[k.person(pid), k.account(pid), k.ledger(pid), k.applied(pid)],
                    args=[item.transfer_id, item.amount_fen, now], client=p)
            replies = await p.execute()
        if any(text(status) != "ERR" for status, _ in replies):
            self.ctx.fault("transfer.after_debit")  # a debit is done (or was already), its answer not yet given
        for (i, item, pid), (raw_status, raw_detail) in zip(valid, replies, strict=True):
            status, detail = text(raw_status), text(raw_detail)
            if status == "ERR":
                exc = self.ctx.not_enrolled(pid) if detail == "PERSON_NOT_FOUND" else transfer_error(detail)
                outcomes[i] = pb.DebitForTransferOutcome(error=error_item(exc))
                continue
            with tracing.acting_for(item.transfer_id):
                event(log, "transfer debited", id_number=pid, transfer=item.transfer_id,
                      amount_fen=item.amount_fen, replayed=status == "DUP")
            outcomes[i] = pb.DebitForTransferOutcome(response=pb.DebitForTransferResponse(
                balance_after_fen=int(detail), replayed=status == "DUP"))
        return pb.DebitForTransferBatchResponse(outcomes=filled(outcomes))

    async def refund_transfer(self, req: pb.RefundTransferRequest) -> pb.RefundTransferResponse:
        validate_request_id(req.transfer_id)
        pid = validate.id_number(req.sender_id_number, "sender_id_number")
        validate.amount(req.amount_fen)
        if not await self.store.exists(pid):
            raise self.ctx.not_enrolled(pid)
        res = await self.ctx.lua["xfer_refund"](
            keys=[self.k.account(pid), self.k.ledger(pid), self.k.applied(pid)],
            args=[req.transfer_id, req.amount_fen, self.ctx.clock.now_ms()])
        status = text(res[0])
        if status == "ERR":
            raise transfer_error(text(res[1]))
        self.ctx.fault("transfer.after_refund")
        event(log, "transfer refunded", id_number=pid, transfer=req.transfer_id, refunded_fen=int(text(res[1])))
        return pb.RefundTransferResponse(refunded_fen=int(text(res[1])), balance_after_fen=int(text(res[2])),
                                         replayed=status == "DUP")

    async def note_wallet(self, req: pb.NoteWalletRequest) -> pb.NoteWalletResponse:
        pid = validate.id_number(req.id_number, "id_number")
        validate.admdvs(req.use_place_admdvs, "use_place_admdvs", required=True)
        validate.version(req.place_version, "place_version")
        kept = text(await self.ctx.lua["note_wallet"](keys=[self.k.person(pid)],
                                                      args=[req.use_place_admdvs, req.place_version]))
        if kept == "NOT_FOUND":
            raise self.ctx.not_enrolled(pid)
        event(log, "wallet noted", id_number=pid, use_place=req.use_place_admdvs, version=req.place_version,
              older=kept == "OLDER")
        return pb.NoteWalletResponse()

    async def credit_lot_return(self, req: pb.CreditLotReturnRequest) -> pb.CreditLotReturnResponse:
        validate_request_id(req.return_id)
        pid = validate.id_number(req.sender_id_number, "sender_id_number")
        validate.amount(req.amount_fen)
        try:
            validate_request_id(req.transfer_id)
        except DomainError:
            raise errors.invalid("INVALID_TRANSFER_ID", "transfer_id must be 1-64 characters of A-Z a-z 0-9 . _ : -",
                                 field="transfer_id") from None
        status, detail = await self.ctx.lua["lot_return"](
            keys=[self.k.account(pid), self.k.ledger(pid), self.k.applied(pid)],
            args=[req.return_id, req.amount_fen, self.ctx.clock.now_ms(), req.transfer_id])
        status, detail = text(status), text(detail)
        if status == "ERR":
            raise transfer_error(detail)
        event(log, "lot returned", id_number=pid, ref=req.return_id, transfer=req.transfer_id,
              amount_fen=req.amount_fen)
        return pb.CreditLotReturnResponse(balance_after_fen=int(detail), replayed=status == "DUP")
