"""代缴: paying a near-kin's 城乡居民医保 premium (SPEC §4b) from a personal account, a family account
or a 医保钱包, cancelling it inside the window, and listing payments for the tax bureau.

The record of (payee, year) lives on the payee's slot, so one payment per payee and year is one
fenced script under the payee's lock. The money is taken once per premium id from wherever it comes
(the payer's slot, the `{fam}` slot, the wallet service); an entry `P|<payee>|<year>|<request id>` in
`Keys.open_settlements()` is written with the request id's claim, before the first effect, and removed
after the last, and `recover` finishes a payment or a cancellation that a dead process left half-done,
or frees the id of one that died before it opened anything. Each request has
its own entry: one refused because another request's payment or cancellation of the same payee and
year is under way takes away only its own, never the one the loop finishes the other by.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from medaid.common import errors
from medaid.common.errors import DomainError
from medaid.common.lock import Lease
from medaid.common.logs import event
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import text
from medaid.registry import premium_rules, validate
from medaid.registry.context import Context, Opening, lock_lost
from medaid.registry.family import Family, validate_family_id
from medaid.registry.people import People
from medaid.registry.premium_checks import PremiumChecks
from medaid.registry.premium_refs import (
    cancel_time,
    entry_of,
    money_ref,
    money_ref_of,
    paid_time,
    refund_ref,
    validate_year,
)
from medaid.registry.store import Store
from medaid.registry.v1 import premium_pb2 as ppb

# The answer of each request a premium record holds, from the record once its flow is finished (`answer_of`).
PREMIUM_ANSWERS: dict[str, Any] = {"premium_pay": ppb.PayResidentPremiumResponse,
                                   "premium_cancel": ppb.CancelResidentPremiumResponse}
PremiumAnswerT = TypeVar("PremiumAnswerT", ppb.PayResidentPremiumResponse, ppb.CancelResidentPremiumResponse)

log = logging.getLogger("medaid.registry")

# judgements of one account premium's debit that the payer's person or balance changed under before
# CONTENDED (the recovery loop or a resend finishes it)
MAX_DEBIT_JUDGEMENTS = 5

DROPPED_BECAUSE = {"ACCOUNT": "INSUFFICIENT_BALANCE", "FAMILY_ACCOUNT": "FAMILY_INSUFFICIENT",
                   "WALLET": "WALLET_INSUFFICIENT"}

# The sources whose money is taken with the payer's lock held (`_take`): the payer's status is written
# under it (a status change, a death), so their judgement holds until the money is taken. A personal
# account's debit needs none: premium_debit.lua takes it only while the payer is as judged.
PAYER_LOCKED = ("FAMILY_ACCOUNT", "WALLET")


def payer_locked(rec: dict[str, str]) -> str:
    """The payer whose lock the money of premium record `rec` is taken under besides the payee's, ''
    where none is (`PAYER_LOCKED`; one's own premium: the payee's lock is the payer's)."""
    return rec["payer"] if rec["source"] in PAYER_LOCKED and rec["payer"] != rec["payee"] else ""


class Premiums(PremiumChecks):
    def __init__(self, ctx: Context, store: Store, family: Family, people: People) -> None:
        self.ctx = ctx
        self.store = store
        self.family = family
        self.people = people
        self.k = ctx.k

    @staticmethod
    def premium_pb(rec: dict[str, str]) -> ppb.ResidentPremium:
        return ppb.ResidentPremium(
            premium_id=rec["id"], payer_id_number=rec["payer"], payee_id_number=rec["payee"],
            relation=cpb.Relation.Value("RELATION_" + rec["relation"]), year=rec["year"],
            amount_fen=int(rec["amount"]), source=ppb.PremiumSource.Value("PREMIUM_SOURCE_" + rec["source"]),
            family_id=rec["family"], state=rec["state"], paid_at_unix_ms=int(rec["paid_at"]),
            cancelled_at_unix_ms=int(rec["cancelled_at"]), contributors=rec["contributors"])

    # --- pay ------------------------------------------------------------------------------

    async def pay(self, req: ppb.PayResidentPremiumRequest) -> ppb.PayResidentPremiumResponse:
        payer_id = validate.id_number(req.payer_id_number, "payer_id_number")
        payee_id = validate.id_number(req.payee_id_number, "payee_id_number")
        year = validate_year(req.year)
        source = validate.enum_name(ppb.PremiumSource, req.source, "PREMIUM_SOURCE_", "source")
        # One's own premium (from one's 医保钱包 or a family account: premium_rules.OWN_SOURCES) names no relation.
        relation = premium_rules.OWN if premium_rules.own_payment(payer_id, payee_id, source, req.relation) \
            else validate.enum_name(cpb.Relation, req.relation, "RELATION_", "relation")
        if source == "FAMILY_ACCOUNT":
            validate_family_id(req.family_id)
        elif req.family_id:
            raise errors.invalid("INVALID_FAMILY_ID", "family_id goes with source FAMILY_ACCOUNT only",
                                 field="family_id")

        entry = entry_of(payee_id, year, req.request_id)

        async def work(opening: Opening) -> ppb.PayResidentPremiumResponse:
            mine = await self._record(payee_id, year)
            if mine.get("id") == req.request_id:  # a resend after a crash: this request's payment, cancelled
                # since perhaps, which is answered, never opened again (premium_open: EXISTS)
                amount, place, seen = int(mine["amount"]), mine["place"], ("", "", "")
            else:
                amount, place, seen = await self._check_pay(req, payer_id, payee_id, relation, year, source)
            k, ctx = self.k, self.ctx
            ctx.fault("premium.before_open")
            ctx.fault("premium.after_entry")
            lease, payer_lease = await self._acquire(payee_id, payer_locked(
                {"payer": payer_id, "payee": payee_id, "source": source}))
            try:
                await ctx.hold(opening)  # the loop may have dropped the entry and freed the id meanwhile
                status, detail = await ctx.lua["premium_open"](
                    keys=[k.premium(payee_id, year), k.fence(payee_id), k.person(payee_id)],
                    args=[lease.token, req.request_id, payer_id, payee_id, relation, year, amount, source,
                          req.family_id, ctx.clock.now_ms(), place,
                          money_ref(ctx.policy.province, req.request_id), *seen])
                status = text(status)
                if status == "STALE":
                    raise lock_lost()
                if status == "CHANGED":
                    raise errors.unavailable("CONTENDED", "the payee's insurance status or 统筹区 changed while "
                                             "the premium was being paid; retry with the same request id")
                if status == "PAID":
                    raise errors.exists("PREMIUM_ALREADY_PAID", f"the {year} premium of this payee is already "
                                        "paid", premium_id=text(detail))
                opening.opened = True
                ctx.fault("premium.after_open")
                try:  # this payment's record, as its last fenced step left it
                    done = await self.drive(payee_id, year, lease, entry, opening.held, payer_lease=payer_lease)
                except DomainError as exc:
                    raise exc.after_effects() from exc
            finally:
                await self._release(lease, payer_lease)
            if self.answered_as(done, req.request_id) != "premium_pay":  # the money could not be taken: nothing stays
                opening.finished = True  # the claim goes, then the entry (Context.once_announced)
                own = relation == premium_rules.OWN
                if source == "FAMILY_ACCOUNT":  # the account dissolved, the payer no longer ACTIVE, or the payer
                    # or payee gone from it, says why
                    why = await self._check_family(req.family_id, payer_id, payee_id, amount, own=own)
                    if why and premium_rules.family_refusal(why).reason != DROPPED_BECAUSE[source]:
                        raise premium_rules.family_refusal(why)
                elif source == "ACCOUNT":  # the payer's death, status or 统筹区 changed meanwhile says why
                    _, why_not = await self._account_payer(payer_id, payee_id, amount)
                    if why_not is not None and why_not.reason != DROPPED_BECAUSE[source]:
                        raise why_not
                else:  # the payer's death or termination meanwhile says why, if one did
                    premium_rules.check_payer_insured(ctx.policy, await self.store.person(payer_id), own=own)
                refusal = await self._wallet_refusal(payer_id, place, amount) if source == "WALLET" else None
                if refusal is not None and refusal.reason != DROPPED_BECAUSE[source]:
                    raise refusal  # the wallet's use-place changed meanwhile, or it was closed
                # The money step's first outcome sticks to its id (_take: a VOID debit or family charge,
                # a barred wallet spend id): this request id can never pay, a new attempt needs a new one.
                where = source.lower().replace("_", " ")
                raise errors.refused(DROPPED_BECAUSE[source], f"the premium could not be taken from the {where}; "
                                     f"to pay it from the {where} later, send a new request id")
            event(log, "premium paid", payer=payer_id, payee=payee_id, year=year, amount=amount, source=source)
            return self.answer_of(done, ppb.PayResidentPremiumResponse)

        # The id claimed with the payment's entry, so that the loop frees it should this process die
        # before the payment opens.
        return await self.ctx.once_announced(req, "premium_pay", payee_id,  # type: ignore[no-any-return]
                                             ppb.PayResidentPremiumResponse, entry, work)

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

    async def _take(self, rec: dict[str, str], lease: Lease, payer_lease: Lease | None) -> tuple[str, bool]:
        """The money, once per premium id: (contributors charged, whether all of it was taken). The
        caller holds the payee's lock (`lease`) and, where the money is taken under it
        (`payer_locked`), the payer's (`payer_lease`)."""
        ctx, k, pid, amount, ref = self.ctx, self.k, rec["payer"], int(rec["amount"]), rec["id"]
        mref = money_ref_of(rec)
        if rec["source"] == "ACCOUNT":
            # The payer is judged again here, as the money is taken (`_account_payer`), and the debit
            # applies the judgement only while the person and the balance are what it was made on.
            for _ in range(MAX_DEBIT_JUDGEMENTS):
                seen, refusal = await self._account_payer(pid, rec["payee"], amount)
                ctx.fault("premium.before_debit")
                status, _ = await ctx.lua["premium_debit"](
                    keys=[k.account(pid), k.ledger(pid), k.applied(pid), k.person(pid)],
                    args=[mref, amount, ref, ctx.clock.now_ms(), "OK" if refusal is None else "VOID", *seen])
                if text(status) != "AGAIN":
                    return "", text(status) in ("OK", "DUP")
            raise errors.unavailable("CONTENDED", "the payer's account kept changing while the premium was taken; "
                                     "retry with the same request id")
        if rec["source"] == "WALLET":
            # As a settlement's wallet share (staged.py): no fence reaches the wallet service, so the
            # leases are renewed first, and a debit that cannot be taken bars the premium's spend id
            # (undoing one a stalled holder got in meanwhile) before the payment is dropped.
            assert payer_lease is not None or not payer_locked(rec), "the payer's lock is the caller's to take"
            for held in (lease, payer_lease):
                if held is not None and not await ctx.locks.extend(held, ctx.lock_ttl_ms):
                    raise lock_lost()
            # The wallet takes a 居民医保 premium whatever the owner's status (one's own comes before
            # ACTIVE): a payer who died or was terminated since the decision pays nothing. Judged under
            # the payer's lock (their status is written under it), held until the debit is answered.
            # The debit clears in the month of the payment's time (`paid_time`), its record's paid_at. A bar
            # names no time: a dropped payment's request id may open again (a resend), with a time of its
            # own, and bars again under the same id (`cancel_spend`), which must be the same request. A
            # spend it finds got in (a stalled holder's) the wallet counts out in that spend's own month.
            if not premium_rules.payer_may_pay(await self.store.person(pid), own=rec["relation"] == premium_rules.OWN):
                await ctx.wallet.cancel_spend(mref, pid)
                return "", False
            ctx.fault("premium.before_wallet_debit")
            after = await ctx.wallet.debit(mref, pid, amount, cpb.CATEGORY_RESIDENT_PREMIUM, rec["place"],
                                           settled_at=paid_time(rec))
            if after is None:
                await ctx.wallet.cancel_spend(mref, pid)
            return "", after is not None
        # The payer's standing is judged again here, as the money is taken: one who left the account,
        # was removed from it, or was suspended, terminated or died since the payment was decided pays
        # nothing. Their status is written under their lock (a status change, a death), held from the
        # judgement to the charge (one paying their own premium holds it as the payee); their member
        # entry is checked by the charge itself (lua/family_charge.lua, AGAIN: judged again).
        fid, own = rec["family"], rec["relation"] == premium_rules.OWN
        assert payer_lease is not None or not payer_locked(rec), "the payer's lock is the caller's to take"

        async def judged() -> tuple[str, bytes, bool]:
            raw, refusal = await self._family_payer(fid, pid, own=own)
            return pid, raw, refusal is None

        _, charges, _ = await self.family.charge(fid, mref, rec["payee"], amount, "RESIDENT_PREMIUM",
                                                 whole=True, payer=judged)
        if sum(c.amount for c in charges) < amount:  # a family premium is paid whole or not at all
            await self.family.refund_charge(rec["family"], mref, "FAMILY_PREMIUM_REFUND")
            return "", False
        return ",".join(f"{c.helper_id}:{c.amount}" for c in charges), True

    async def _give_back(self, rec: dict[str, str]) -> None:
        """A cancellation: the money back to exactly where it came from, once."""
        ctx, k, pid, amount, ref = self.ctx, self.k, rec["payer"], int(rec["amount"]), rec["id"]
        if rec["source"] == "ACCOUNT":
            await ctx.lua["family_payout"](keys=[k.account(pid), k.ledger(pid), k.applied(pid)],
                                           args=[refund_ref(ref), amount, "PREMIUM_REFUND", ref,
                                                 cancel_time(rec) or ctx.clock.now_ms()])
        elif rec["source"] == "WALLET":  # counted out of clearing in the cancellation's month
            await ctx.wallet.refund(money_ref_of(rec), pid, amount, refunded_at=cancel_time(rec))
        else:
            await self.family.refund_charge(rec["family"], money_ref_of(rec), "FAMILY_PREMIUM_REFUND")

    # --- cancel and list ------------------------------------------------------------------

    async def cancel(self, req: ppb.CancelResidentPremiumRequest) -> ppb.CancelResidentPremiumResponse:
        payee = validate.id_number(req.payee_id_number, "payee_id_number")
        payer = validate.id_number(req.payer_id_number, "payer_id_number") if req.payer_id_number else ""
        year = validate_year(req.year)

        entry = entry_of(payee, year, req.request_id)

        async def work(opening: Opening) -> ppb.CancelResidentPremiumResponse:
            ctx, k = self.ctx, self.k
            rec = await self._record(payee, year)
            begun = rec.get("cancel_id") == req.request_id  # this request's cancellation, begun before a crash
            if rec.get("state") not in ("PAID", "CANCELLING", "PENDING") and not begun:
                raise errors.refused("PREMIUM_NOT_PAID", f"no paid {year} premium of this payee to cancel")
            premium_rules.check_canceller(payer, rec["payer"])
            if rec["state"] == "PENDING" and not begun:
                raise premium_rules.payment_in_progress(year)
            if not begun:  # one begun inside the window is finished by its resend, whatever the day
                premium_rules.check_window(ctx.policy, year, ctx.clock.today())
            ctx.fault("premium.after_entry")
            lease = await ctx.acquire(payee)
            try:
                await ctx.hold(opening)  # the loop may have dropped the entry and freed the id meanwhile
                # Only the payment checked above: one cancelled and paid again meanwhile (by someone
                # else, perhaps) is judged afresh by a resend.
                (status, *detail) = await ctx.lua["premium_cancel"](
                    keys=[k.premium(payee, year), k.fence(payee)],
                    args=[lease.token, req.request_id, rec["id"], ctx.clock.now_ms()])
                status = text(status)
                if status == "STALE":
                    raise lock_lost()
                if status == "CHANGED":
                    raise errors.unavailable("CONTENDED", f"the {year} premium of this payee changed while it "
                                             "was being cancelled; retry with the same request id")
                if status == "PENDING":
                    raise premium_rules.payment_in_progress(year)
                if status == "ERR":
                    raise errors.refused(text(detail[0]), f"no paid {year} premium of this payee to cancel")
                opening.opened = True
                try:  # this cancellation's record, as its last fenced step left it
                    done = await self.drive(payee, year, lease, entry, opening.held)
                except DomainError as exc:
                    raise exc.after_effects() from exc
            finally:
                await ctx.locks.release(lease)
            event(log, "premium cancelled", payer=payer, payee=payee, year=year)
            return self.answer_of(done, ppb.CancelResidentPremiumResponse)

        return await self.ctx.once_announced(req, "premium_cancel", payee,  # type: ignore[no-any-return]
                                             ppb.CancelResidentPremiumResponse, entry, work)

    async def list(self, req: ppb.ListResidentPremiumsRequest) -> ppb.ListResidentPremiumsResponse:
        payer = validate.id_number(req.payer_id_number, "payer_id_number") if req.payer_id_number else ""
        payee = validate.id_number(req.payee_id_number, "payee_id_number") if req.payee_id_number else ""
        year = validate_year(req.year) if req.year else ""
        k, r = self.k, self.ctx.r
        if payee:
            pairs = [(text(y), payee) for y in await r.smembers(k.premiums_of_payee(payee))]
        elif payer:
            pairs = [tuple(text(x).split("|")) for x in await r.smembers(k.premiums_by_payer(payer))]
        elif year:
            pairs = [(year, text(p)) for p in await r.smembers(k.premiums_of_year(year))]
        else:
            raise errors.invalid("MISSING_FILTER", "name a payer, a payee or a year")
        out = []
        for y, p in sorted(pairs):
            if year and y != year:
                continue
            rec = await self._record(p, y)
            if rec and rec["state"] in ("PAID", "CANCELLED") and (not payer or rec["payer"] == payer):
                out.append(self.premium_pb(rec))
        return ppb.ListResidentPremiumsResponse(
            premiums=out, payable_year=premium_rules.payable_year(self.ctx.policy, self.ctx.clock.today()))

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
