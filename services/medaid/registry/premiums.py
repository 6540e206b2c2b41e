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

Here the RPCs; `Premiums` is built in layers, each a file: the checks made before anything is written
(premium_checks.py), the money taken and given back by source (premium_money.py), the record's flow
to its final state, its answers and its recovery (premium_drive.py). The rules are premium_rules.py's.
"""

from __future__ import annotations

import logging

from medaid.common import errors
from medaid.common.errors import DomainError
from medaid.common.logs import event
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import text
from medaid.registry import premium_rules, validate
from medaid.registry.context import Context, Opening, lock_lost
from medaid.registry.family import Family, validate_family_id
from medaid.registry.people import People
from medaid.registry.premium_drive import PremiumDrive
from medaid.registry.premium_money import payer_locked
from medaid.registry.premium_refs import entry_of, money_ref, validate_year
from medaid.registry.store import Store
from medaid.registry.v1 import premium_pb2 as ppb

log = logging.getLogger("medaid.registry")

DROPPED_BECAUSE = {"ACCOUNT": "INSUFFICIENT_BALANCE", "FAMILY_ACCOUNT": "FAMILY_INSUFFICIENT",
                   "WALLET": "WALLET_INSUFFICIENT"}


class Premiums(PremiumDrive):
    def __init__(self, ctx: Context, store: Store, family: Family, people: People) -> None:
        self.ctx = ctx
        self.store = store
        self.family = family
        self.people = people
        self.k = ctx.k

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
