"""Reversal (撤销结算, SPEC §4): every fen back to exactly the account it came from, once.

Under the patient's fenced lock: `reverse_begin.lua` marks the record REVERSING (owned by the
reversal's request id), each helper's charge is returned once per settlement id, the wallet's
share is refunded, and `reverse_finish.lua` returns the own-account part and marks it REVERSED.
The recovery loop finishes a REVERSING record whose process died, with `drive`.
"""

from __future__ import annotations

import logging
from typing import Any

from medaid.common import errors, metrics
from medaid.common.errors import DomainError
from medaid.common.idempotency import validate_request_id
from medaid.common.lock import Lease
from medaid.common.logs import event
from medaid.common.redis_client import barrier
from medaid.common.values import text
from medaid.registry.context import Context, lock_lost
from medaid.registry.family import Family
from medaid.registry.records import SettlementRecord, consumption_field, consumption_json
from medaid.registry.store import Store
from medaid.registry.v1 import registry_pb2 as pb

log = logging.getLogger("medaid.registry")


def open_entry(pid: str, sid: str) -> str:
    """The recovery index entry of a reversal in progress."""
    return f"R|{pid}|{sid}"


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

        async def work() -> pb.ReverseSettlementResponse:
            pid = await self.store.patient_of(req.settlement_id)
            if not pid:
                raise errors.not_found("SETTLEMENT_NOT_FOUND", f"no settlement {req.settlement_id}",
                                       field="settlement_id")
            # Reversed by another request: refused before the lock, so the refusal writes nothing, not
            # even the patient's fence (one reversed meanwhile is refused by reverse_begin.lua, under it).
            state, owner = (text(x or b"") for x in await self.ctx.r.hmget(
                self.k.settlement(pid, req.settlement_id), ["state", "reversal_id"]))
            if state == "REVERSED" and owner != req.request_id:
                raise already_reversed(req.settlement_id, owner)
            lease = await self.ctx.acquire(pid)
            try:
                return await self._locked(pid, req, lease)
            finally:
                await self.ctx.locks.release(lease)

        return await self.ctx.once(req, "reverse", req.settlement_id, pb.ReverseSettlementResponse,  # type: ignore[no-any-return]
                                   work)

    async def _locked(self, pid: str, req: pb.ReverseSettlementRequest, lease: Lease) -> pb.ReverseSettlementResponse:
        sid, rid, k = req.settlement_id, req.request_id, self.k
        entry = open_entry(pid, sid)
        self.ctx.fault("reverse.before_begin")  # tests: a holder stalled past its lock here
        async with self.ctx.r.pipeline(transaction=False) as p:
            # The recovery loop's entry before the reversal begins, with this holder's mark on it (one
            # round trip on one Redis).
            await self.ctx.announce_held(entry, client=p)
            first = await barrier(p)
            await self.ctx.lua["reverse_begin"](keys=[k.settlement(pid, sid), k.fence(pid)],
                                                args=[lease.token, rid, self.ctx.clock.now_ms()], client=p)
            mark, (state, owner) = [*first, *await p.execute()]
        state, owner = text(state), text(owner)
        # The entry is the settlement's, not this request's: another 2208 that took the lock since may
        # begin under it. Overtaken (STALE), this holder leaves it to the loop, which drops it under the
        # lock when it finds no REVERSING record; a refusal judged on the record withdraws it only while
        # no later holder wrote it again.
        if state == "STALE":
            raise lock_lost()
        if state == "BADSTATE":
            self.ctx.fault("reverse.before_withdraw")  # tests: a holder stalled past its lock here
            await self.ctx.withdraw(entry, mark)
            raise errors.unavailable("SETTLEMENT_IN_PROGRESS", "the settlement has not finished; retry shortly")
        rec = await self.store.record(pid, sid)
        assert rec is not None
        if owner != rid:
            if state == "REVERSING":
                await self.drive(rec, lease, mark)
            else:
                self.ctx.fault("reverse.before_withdraw")
                await self.ctx.withdraw(entry, mark)
            raise already_reversed(sid, owner)
        try:
            return await self.drive(rec, lease, mark)
        except DomainError as exc:
            raise exc.after_effects() from exc

    async def drive(self, rec: SettlementRecord, lease: Lease, mark: Any) -> pb.ReverseSettlementResponse:
        """Take a REVERSING (or REVERSED) record to REVERSED; every step is once per settlement id. The
        answer is recorded for the reversal's request id (the record's owner; the first answer stays),
        then the entry goes under `mark`, the holder's (`Context.withdraw`): a later 2208 may have
        written it."""
        ctx, k, sid, pid = self.ctx, self.k, rec.sid, rec.patient
        ref = rec.ref  # the money's marks: the settlement id, or the undo that last charged it again
        ctx.fault("reverse.after_begin")
        now = ctx.clock.now_ms()
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
            await ctx.wallet.refund(rec.wallet_spend, pid, rec.wallet_pay)
        ctx.fault("reverse.after_helper_refund")
        member = [x for c in rec.charges for x in (consumption_field(sid, c.helper_id),
                                                    consumption_json(rec, c, "MEMBER", "REVERSED"))]
        status, detail = await ctx.lua["reverse_finish"](
            keys=[k.settlement(pid, sid), k.account(pid), k.ledger(pid), k.fence(pid), k.consumption(pid)],
            args=[lease.token, ref, rec.acct_pay, now, len(rec.charges), *member])
        status = text(status)
        if status == "STALE":
            raise lock_lost()
        if status not in ("OK", "DONE"):
            raise AssertionError(f"reversal of {sid} found state {text(detail)}")
        if status == "OK":  # this call closed it: counted once however often it is driven again
            metrics.reversed_money(rec.acct_pay, rec.wallet_pay, rec.mulaid_pay, rec.cash_pay)
        done = await self.store.record(pid, sid)
        assert done is not None
        answer = response_of(done, helper_afters)
        # The reversal's request id answered before its entry goes: a process that dies in between
        # leaves the entry, and the loop drives the REVERSED record here again, so the id is never left
        # in progress (a 2601 of the 2208 waits for it to be finished) without the client resending.
        await ctx.idem.finish(done.reversal_id, answer.SerializeToString())
        ctx.fault("reverse.before_withdraw")
        await ctx.withdraw(open_entry(pid, sid), mark)
        ctx.fault("reverse.after_finish")
        event(log, "reversed", patient=pid, settlement=sid, acct_refund=rec.acct_pay, wallet_refund=rec.wallet_pay,
              mulaid_refund=rec.mulaid_pay)
        return answer


def response_of(rec: SettlementRecord, helper_afters: list[int]) -> pb.ReverseSettlementResponse:
    """A reversal's answer, from its record (and the helpers' balances after, when just returned)."""
    afters = helper_afters or [0] * len(rec.charges)
    first = rec.charges[0].helper_id if rec.charges else ""
    return pb.ReverseSettlementResponse(
        settlement_id=rec.sid, reversal_id=rec.reversal_id, acct_refund_fen=rec.acct_pay,
        wallet_refund_fen=rec.wallet_pay, mulaid_refund_fen=rec.mulaid_pay, helper_id_number=first,
        balance_after_fen=max(rec.rev_own_bal_after, 0), helper_balance_after_fen=afters[0] if afters else 0,
        reversed_at_unix_ms=rec.reversed_at,
        helper_refunds=[pb.HelperCharge(helper_id_number=c.helper_id, amount_fen=c.amount, balance_after_fen=a)
                        for c, a in zip(rec.charges, afters, strict=True)],
    )
