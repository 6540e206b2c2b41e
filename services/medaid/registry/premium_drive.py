"""A 代缴 record's flow to its final state (SPEC §4b), by its request or by the recovery loop: a PENDING
payment to PAID or DROPPED, a CANCELLING one to CANCELLED, each money step once per premium id
(premium_money.py), then the request answered from the record and its recovery entry withdrawn; the
payee's (and the payer's) locks; and the loop's other work, the payees lifted once their insurance
year starts. Part of `Premiums` (premiums.py), whose RPCs open the record."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from medaid.common.lock import Lease
from medaid.common.logs import event
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import text
from medaid.registry import premium_rules
from medaid.registry.context import lock_lost
from medaid.registry.people import People
from medaid.registry.premium_money import PremiumMoney, payer_locked
from medaid.registry.premium_refs import cancel_time, entry_of, paid_time
from medaid.registry.v1 import premium_pb2 as ppb

# The answer of each request a premium record holds, from the record once its flow is finished (`answer_of`).
PREMIUM_ANSWERS: dict[str, Any] = {"premium_pay": ppb.PayResidentPremiumResponse,
                                   "premium_cancel": ppb.CancelResidentPremiumResponse}
PremiumAnswerT = TypeVar("PremiumAnswerT", ppb.PayResidentPremiumResponse, ppb.CancelResidentPremiumResponse)

log = logging.getLogger("medaid.registry")


class PremiumDrive(PremiumMoney):
    people: People

    @staticmethod
    def premium_pb(rec: dict[str, str]) -> ppb.ResidentPremium:
        return ppb.ResidentPremium(
            premium_id=rec["id"], payer_id_number=rec["payer"], payee_id_number=rec["payee"],
            relation=cpb.Relation.Value("RELATION_" + rec["relation"]), year=rec["year"],
            amount_fen=int(rec["amount"]), source=ppb.PremiumSource.Value("PREMIUM_SOURCE_" + rec["source"]),
            family_id=rec["family"], state=rec["state"], paid_at_unix_ms=int(rec["paid_at"]),
            cancelled_at_unix_ms=int(rec["cancelled_at"]), contributors=rec["contributors"])

    async def _acquire(self, payee: str, payer: str) -> tuple[Lease, Lease | None]:
        """The payee's lock and, where the money is taken under it too (`payer_locked`: `payer`), the
        payer's, taken in one order, by id number: two payments of each other's premiums (two siblings
        paying from their family account at the same moment) never each hold the lock the other waits
        for, so neither waits for it to expire. The first is kept alive while the second is waited for
        (`acquire_holding`)."""
        if not payer:
            return await self.ctx.acquire(payee), None
        first = await self.ctx.acquire(min(payee, payer))
        try:
            second = await self.ctx.acquire_holding(first, max(payee, payer))
        except BaseException:
            await self.ctx.locks.release(first)
            raise
        return (first, second) if payee < payer else (second, first)

    async def _release(self, lease: Lease, payer_lease: Lease | None) -> None:
        if payer_lease is not None:
            await self.ctx.locks.release(payer_lease)
        await self.ctx.locks.release(lease)

    @staticmethod
    def answered_as(rec: dict[str, str], request_id: str) -> str:
        """The operation (PREMIUM_ANSWERS) request `request_id` is answered as once its flow on the premium
        record `rec` is finished: the cancellation the record holds, finished; the payment it holds, taken
        (paid, or cancelled since); '' where the payment was dropped or the record is not the request's
        (refused: its claim goes)."""
        state = rec.get("state", "")
        if request_id == rec.get("cancel_id") and state == "CANCELLED":
            return "premium_cancel"
        if request_id == rec.get("id") and state not in ("", "PENDING", "DROPPED"):
            return "premium_pay"
        return ""

    def answer_of(self, rec: dict[str, str], response_type: type[PremiumAnswerT]) -> PremiumAnswerT:
        """A payment's or a cancellation's answer: the premium record `rec` as it stands once the flow is
        finished. The request's, and the recovery loop's for a request it finishes (`_settle`)."""
        return response_type(premium=self.premium_pb(rec))

    async def drive(self, payee: str, year: str, lease: Lease, entry: str, mark: Any, answer: str = "", *,
                    payer_lease: Lease | None = None) -> dict[str, str]:
        """Take a PENDING payment to PAID (or drop it when the money cannot be taken), a CANCELLING one to
        CANCELLED; every money step is once per premium id. Recovery `entry` is the caller's to withdraw
        with its answer (`Context.once_announced`); for the loop (`answer`: the request id of `entry`) it
        goes here under `mark`, the score the loop read (`Context.withdraw`), once that request is answered
        from the finished record (`_settle`). Once the record is final, the entry of the request whose
        payment or cancellation it holds goes too, under its score as read now (an attempt of that request
        that writes it again afterwards keeps it), after that request is answered likewise (a resend that
        finishes another request's cancellation answers it), so no id is left in progress (SPEC §7).
        `payer_lease`: the payer's lock, held where a PENDING payment's money is taken under it
        (`payer_locked`). Once the record is final the locks are let go: what follows needs none and waits
        for other locks (a put-back termination's family ends) and services, past the locks' lifetime.
        Returns the record as its last fenced step left it (the answer, which a new payment may replace)."""
        ctx, k = self.ctx, self.k
        rec = await self._record(payee, year)
        state = rec.get("state", "")
        owner = rec.get("cancel_id", "") if state in ("CANCELLING", "CANCELLED") else rec.get("id", "")
        if state == "PENDING":
            contributors, ok = await self._take(rec, lease, payer_lease)
            ctx.fault("premium.after_debit")
            (state, *_) = await ctx.lua["premium_finish"](
                keys=[k.premium(payee, year), k.fence(payee), k.person(payee), k.history(payee)],
                args=[lease.token, "PAID" if ok else "DROP", paid_time(rec) or ctx.clock.now_ms(), contributors,
                      premium_rules.year_start_ms(year)])
            state = text(state)
        elif state == "CANCELLING":
            await self._give_back(rec)
            ctx.fault("premium.after_cancel_refund")
            (state, *_) = await ctx.lua["premium_finish"](
                keys=[k.premium(payee, year), k.fence(payee), k.person(payee), k.history(payee)],
                args=[lease.token, "CANCELLED", cancel_time(rec) or ctx.clock.now_ms(), ""])
            state = text(state)
        if state == "STALE":
            raise lock_lost()
        final = None
        if state in ("PAID", "CANCELLED"):  # read under the locks, let go before what follows (see above)
            rec = final = await self._record(payee, year)
            person = await self.store.person(payee)
            await self._release(lease, payer_lease)
            async with ctx.r.pipeline(transaction=False) as p:
                p.sadd(k.premiums_of_year(year), payee)
                p.sadd(k.premiums_by_payer(rec["payer"]), f"{year}|{payee}")
                p.sadd(k.premiums_of_payee(payee), year)
                if state == "PAID" and rec.get("lifted") == "due":  # the loop makes them ACTIVE when the year starts
                    p.zadd(k.premium_lifts(), {f"{payee}|{year}": int(rec["lift_at"])})
                await p.execute()
            if person is not None and state == "CANCELLED" and person.status == "TERMINATED":
                # A termination put back: what follows one follows (bindings, memberships and wallet
                # relationships made while the payment had them ACTIVE end), the directory and wallet told.
                await self.people.finish_status(payee, rec["cancel_id"], "TERMINATED", person.moved_to)
            elif person is not None:  # the status the payment lifted or the cancellation put back, told on
                await ctx.tell_directory(payee)
                await ctx.note_wallet_status(payee)  # only an ACTIVE owner spends from a 医保钱包
        done = state in ("PAID", "CANCELLED", "DROPPED")
        if answer:  # the loop's: a request withdraws its entry with its answer (Context.once_announced)
            if done:
                await self._settle(payee, year, answer, entry, mark, final)
            await ctx.withdraw(entry, mark)
        owned = entry_of(payee, year, owner)
        if owner and owned != entry and done:
            score = await ctx.r.zscore(k.open_settlements(), owned)
            if score is not None:  # answered before its entry goes, whoever finished it (a resend too)
                await self._settle(payee, year, owner, owned, score, final)
                await ctx.withdraw(owned, score)
        return final if final is not None else await self._record(payee, year)

    async def _settle(self, payee: str, year: str, request_id: str, entry: str, mark: Any,
                      final: dict[str, str] | None) -> None:
        """The recovery loop's answer to request `request_id` (a payment or a cancellation of this record)
        once the record is final (`final`, as `drive` left it; None: a dropped payment, read now):
        recorded as the request answers it (`answer_of`), or its id freed where the request refuses (a
        dropped payment), then `entry` withdrawn (`Context.settle_claimed`)."""
        rec = final if final is not None else await self._record(payee, year)
        op = self.answered_as(rec, request_id)
        if not op and request_id != rec.get("id"):
            return  # not this record's request: its claim, if any, is freed by `recover`
        await self.ctx.settle_claimed(entry, mark, request_id, op or "premium_pay", payee,
                                      self.answer_of(rec, PREMIUM_ANSWERS[op]) if op else None)

    # --- the insurance year starting ------------------------------------------------------

    async def lift_due(self, batch: int = 200) -> int:
        """Make ACTIVE, once their insurance year has started, the payees whose premium was paid before it
        (`premium_finish.lua` 'LIFT': only a payment still PAID, and only the status it was paid on;
        a cancellation, a new payment or a status set since lifts nothing), and tell the directory and
        the wallet as a lift at payment does. An entry goes only after that, so a pass that stops
        between is done again by the next (each step answers as before). Returns how many were lifted."""
        ctx, k = self.ctx, self.k
        due = await ctx.r.zrangebyscore(k.premium_lifts(), "-inf", ctx.clock.now_ms(), start=0, num=batch)
        lifted = 0
        for raw in due:
            member = text(raw)
            payee, year = member.split("|", 1)
            lease = await ctx.locks.try_acquire(k.person_tag(payee), ctx.lock_ttl_ms)
            if lease is None:  # a live request holds the payee: the next pass
                continue
            try:
                (outcome, *_) = await ctx.lua["premium_finish"](
                    keys=[k.premium(payee, year), k.fence(payee), k.person(payee), k.history(payee)],
                    args=[lease.token, "LIFT", ctx.clock.now_ms(), ""])
            finally:
                await ctx.locks.release(lease)
            outcome = text(outcome)
            if outcome == "STALE":
                continue
            if outcome == "LIFTED":
                person = await self.store.person(payee)
                if person is not None:
                    await ctx.tell_directory(payee)
                    await ctx.note_wallet_status(payee)
                lifted += 1
                event(log, "premium year started", payee=payee, year=year)
            await ctx.r.zrem(k.premium_lifts(), member)
        return lifted

    # --- recovery -------------------------------------------------------------------------

    async def recover(self, entry: str, mark: Any) -> bool:
        """Finish the payment or cancellation of entry `P|<payee>|<year>|<request id>` (or of an entry
        `P|<payee>|<year>` written before entries named their request); False when a live holder has
        the payee's lock. `mark`: the entry's score as the loop read it (`Context.withdraw`)."""
        _, payee, year, *rest = entry.split("|", 3)
        lease = await self.ctx.locks.try_acquire(self.k.person_tag(payee), self.ctx.lock_ttl_ms)
        if lease is None:
            return False
        payer_lease = None
        try:
            rec = await self._record(payee, year)
            payer = payer_locked(rec) if rec.get("state") == "PENDING" else ""
            if payer:  # tried, never waited for: the payee's lock is held out of `_acquire`'s order
                payer_lease = await self.ctx.locks.try_acquire(self.k.person_tag(payer), self.ctx.lock_ttl_ms)
                if payer_lease is None:
                    return False
            if rest and rest[0] not in (rec.get("id"), rec.get("cancel_id")):
                # The request opened nothing (the record is none of its own): its id is freed, the claim
                # before the entry, which `drive` takes away with whatever the record holds finished.
                await self.ctx.free_claim(entry, mark, rest[0], ("premium_pay", "premium_cancel"), payee)
            await self.drive(payee, year, lease, entry, mark, answer=rest[0] if rest else "",
                             payer_lease=payer_lease)
        finally:
            await self._release(lease, payer_lease)
        return True
