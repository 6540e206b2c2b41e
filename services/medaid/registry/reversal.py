"""Reversal (撤销结算, SPEC §4): every fen back to exactly the account it came from, once.

Under the patient's fenced lock: `reverse_begin.lua` marks the record REVERSING (owned by the
reversal's request id), each helper's charge is returned once per settlement id, the wallet's
share is refunded, and `reverse_finish.lua` returns the own-account part and marks it REVERSED.
The 2208's id is claimed in one round trip with its recovery entry `R|<patient>|<settlement>|<id>`,
and both are written again under the lock before `reverse_begin.lua`. The recovery loop finishes a
REVERSING record whose process died, with `drive`, or frees the id of a 2208 that died before it began.
A 2601 冲正 of the settlement (`cancel`) cancels it for good in `reverse_begin.lua`, also when another
request reversed it: that reversal is never undone since (restore_begin.lua), so that the 2601's
answer (REVERSED, ALREADY_REVERSED) holds whatever comes after it.
"""

from __future__ import annotations

import logging
from typing import Any

from medaid.common import errors, metrics
from medaid.common.errors import DomainError
from medaid.common.idempotency import validate_request_id
from medaid.common.lock import Lease
from medaid.common.logs import event
from medaid.common.values import text
from medaid.registry.context import Context, Opening, lock_lost
from medaid.registry.family import Family
from medaid.registry.records import SettlementRecord, consumption_field, consumption_json
from medaid.registry.store import Store
from medaid.registry.v1 import registry_pb2 as pb

log = logging.getLogger("medaid.registry")


def open_entry(pid: str, sid: str, request_id: str) -> str:
    """The recovery index entry of 2208 `request_id` reversing settlement `sid` (written with the id's
    claim; entries written before they named the id are `R|<patient>|<settlement>`)."""
    return f"R|{pid}|{sid}|{request_id}"


def already_reversed(sid: str, owner: str) -> errors.DomainError:
    return errors.refused("ALREADY_REVERSED", f"settlement {sid} was already reversed by {owner}", reversal_id=owner)


class Reversals:
    def __init__(self, ctx: Context, store: Store, family: Family | None = None) -> None:
        self.ctx = ctx
        self.store = store
        self.family = family
        self.k = ctx.k

    async def reverse(self, req: pb.ReverseSettlementRequest) -> pb.ReverseSettlementResponse:
        validate_request_id(req.settlement_id)
        validate_request_id(req.request_id)
        # `cancel` says what the caller does with the reversal, not which reversal it is: the request id is
        # claimed without it, so that a 2601's reversal made by a router of an earlier release (which did
        # not send it) and resent by a newer one is the same request, answered as the first time.
        cancel = req.cancel
        req = pb.ReverseSettlementRequest(request_id=req.request_id, settlement_id=req.settlement_id)
        ctx, k, sid, rid = self.ctx, self.k, req.settlement_id, req.request_id
        pid = await self.store.patient_of(sid)
        if not pid:  # nothing to reverse: judged on the id's claim first (a reused or voided id says so)
            async def unknown() -> pb.ReverseSettlementResponse:
                raise errors.not_found("SETTLEMENT_NOT_FOUND", f"no settlement {sid}", field="settlement_id")

            return await ctx.once(req, "reverse", sid, pb.ReverseSettlementResponse, unknown)  # type: ignore[no-any-return]
        # The id claimed with an entry that names it, so that the recovery loop reverses the settlement or,
        # should this process die before the reversal begins, frees the id.
        entry = open_entry(pid, sid, rid)
        claim, mark, [(state, owner, cancelled)] = await ctx.claim_announced(
            entry, req, "reverse", sid,
            reads=lambda p: p.hmget(k.settlement(pid, sid), ["state", "reversal_id", "cancelled_by"]))
        if claim.state == "DONE":
            return claim.answer(pb.ReverseSettlementResponse)
        ctx.fault("reverse.after_claim")  # tests: a request stalled (or killed) before the patient's lock
        opening = Opening(held=mark, entry=entry, request=req, op="reverse", subject=sid,
                          claimed=(entry, claim.attempt))
        try:
            # Reversed by another request: refused before the lock, so the refusal writes nothing, not even
            # the patient's fence (one reversed meanwhile is refused by reverse_begin.lua, under it). A 2601
            # of a settlement not cancelled yet goes on under the lock, which keeps its cancellation.
            if text(state or b"") == "REVERSED" and text(owner or b"") != rid and (not cancel or cancelled):
                raise already_reversed(sid, text(owner or b""))
            lease = await ctx.acquire(pid)
            try:
                return await self._locked(pid, req, cancel, lease, entry, opening)
            finally:
                await ctx.locks.release(lease)
        except DomainError as exc:
            if opening.opened:
                raise exc.after_effects() from exc
            await ctx.unclaim(entry, opening.held, rid, exc, claim.state, opening.taken())
            raise

    async def _locked(self, pid: str, req: pb.ReverseSettlementRequest, cancel: bool, lease: Lease,
                      entry: str, opening: Opening) -> pb.ReverseSettlementResponse:
        ctx, sid, rid, k = self.ctx, req.settlement_id, req.request_id, self.k
        await ctx.hold(opening)
        ctx.fault("reverse.before_begin")  # tests: a holder stalled past its lock here
        state, owner = (text(x) for x in await ctx.lua["reverse_begin"](
            keys=[k.settlement(pid, sid), k.fence(pid)],
            args=[lease.token, rid, ctx.clock.now_ms(), "1" if cancel else ""]))
        # Overtaken (STALE), this holder leaves its entry to the loop, which frees the id under the lock
        # when it finds no reversal by it; a refusal judged on the record withdraws it with the claim.
        if state == "STALE":
            raise lock_lost()
        if state == "BADSTATE":
            ctx.fault("reverse.before_withdraw")  # tests: a holder stalled past its lock here
            if owner == "RESTORING":  # a 2601 is undoing the reversal: the settlement itself finished long ago
                raise errors.unavailable("UNDO_IN_PROGRESS", "a 冲正 is undoing this settlement's reversal; "
                                         "retry shortly")
            raise errors.unavailable("SETTLEMENT_IN_PROGRESS", "the settlement has not finished; retry shortly")
        rec = await self.store.record(pid, sid)
        assert rec is not None
        if owner != rid:
            # Another 2208's, finished here (its entry is its own); a 2601's answer does not wait for it (the
            # wallet down, say): the reversal has begun, and the recovery loop finishes it.
            if state == "REVERSING" and not cancel:
                await self.drive(rec, lease)
            ctx.fault("reverse.before_withdraw")
            raise already_reversed(sid, owner)
        opening.opened = True
        return await self.drive(rec, lease, entry, opening.held)

    async def drive(self, rec: SettlementRecord, lease: Lease, entry: str | None = None,
                    mark: Any = None) -> pb.ReverseSettlementResponse:
        """Take a REVERSING (or REVERSED) record to REVERSED; every step is once per settlement id. The
        answer is recorded for the reversal's request id (the record's owner; the first answer stays, and
        is returned), then `entry` goes under `mark`, the holder's (`Context.withdraw`): a resend of the
        2208 may have written it again since."""
        ctx, k, sid, pid = self.ctx, self.k, rec.sid, rec.patient
        ref = rec.ref  # the money's marks: the settlement id, or the undo that last charged it again
        ctx.fault("reverse.after_begin")
        # The reversal's time is when it began, however late it is finished (the recovery loop, days
        # later): its record's reversed_at (the day a 3201 counts it in), its entries, and the month
        # the wallet counts its refund out of clearing in are one, whichever attempt writes them.
        now = rec.reversal_started_at or ctx.clock.now_ms()
        helper_afters: list[int] = []
        if rec.family_id and self.family is not None:  # each fen back to the contributor it came from
            helper_afters = await self.family.refund(rec)
        elif rec.charges:
            async with ctx.r.pipeline(transaction=False) as p:
                for c in rec.charges:
                    hid = c.helper_id
                    await ctx.lua["reverse_charge"](
                        keys=[k.account(hid), k.ledger(hid), k.applied(hid), k.consumption(hid)],
                        args=[ref, c.amount, now, consumption_field(sid, hid),
                              consumption_json(rec, c, "HELPER", "REVERSED")], client=p)
                helper_afters = [int(text(detail)) for _, detail in await p.execute()]
        if rec.wallet_pay > 0:
            await ctx.wallet.refund(rec.wallet_spend, pid, rec.wallet_pay, refunded_at=now)
        ctx.fault("reverse.after_helper_refund")
        member = [x for c in rec.charges for x in (consumption_field(sid, c.helper_id),
                                                    consumption_json(rec, c, "MEMBER", "REVERSED"))]
        status, detail = await ctx.lua["reverse_finish"](
            keys=[k.settlement(pid, sid), k.account(pid), k.ledger(pid), k.fence(pid), k.consumption(pid)],
            args=[lease.token, ref, rec.acct_pay, now, len(rec.charges), *member,
                  ",".join(str(x) for x in helper_afters)])
        status = text(status)
        if status == "STALE":
            raise lock_lost()
        if status not in ("OK", "DONE"):
            raise AssertionError(f"reversal of {sid} found state {text(detail)}")
        if status == "OK":  # this call closed it: counted once however often it is driven again
            metrics.reversed_money(rec.acct_pay, rec.wallet_pay, rec.mulaid_pay, rec.cash_pay)
        done = await self.store.record(pid, sid)
        assert done is not None
        # The reversal's request id answered before its entry goes: a process that dies in between
        # leaves the entry, and the loop drives the REVERSED record here again, so the id is never left
        # in progress (a 2601 of the 2208 waits for it to be finished) without the client resending.
        answer = await ctx.idem.record(done.reversal_id, response_of(done, helper_afters))
        ctx.fault("reverse.before_withdraw")
        if entry is not None:
            await ctx.withdraw(entry, mark)
        ctx.fault("reverse.after_finish")
        event(log, "reversed", patient=pid, settlement=sid, acct_refund=rec.acct_pay, wallet_refund=rec.wallet_pay,
              mulaid_refund=rec.mulaid_pay)
        return answer


def response_of(rec: SettlementRecord, helper_afters: list[int]) -> pb.ReverseSettlementResponse:
    """A reversal's answer, from its record: the helpers' balances after are those the record kept when
    it was closed (`helper_afters`, just returned, for a record closed before it kept them)."""
    afters = list(rec.rev_helper_afters) or helper_afters or [0] * len(rec.charges)
    first = rec.charges[0].helper_id if rec.charges else ""
    return pb.ReverseSettlementResponse(
        settlement_id=rec.sid, reversal_id=rec.reversal_id, acct_refund_fen=rec.acct_pay,
        wallet_refund_fen=rec.wallet_pay, mulaid_refund_fen=rec.mulaid_pay, helper_id_number=first,
        balance_after_fen=max(rec.rev_own_bal_after, 0), helper_balance_after_fen=afters[0] if afters else 0,
        reversed_at_unix_ms=rec.reversed_at,
        helper_refunds=[pb.HelperCharge(helper_id_number=c.helper_id, amount_fen=c.amount, balance_after_fen=a)
                        for c, a in zip(rec.charges, afters, strict=True)],
    )
