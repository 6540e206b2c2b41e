"""代缴's payer and payee checks (SPEC §4b): what is refused before anything is written, and the payer's
standing judged again where the money is taken (a family account's member entry, a personal account's
person and balance, a wallet's place and balance). Part of `Premiums` (premiums.py), which applies."""

from __future__ import annotations

import json
from typing import Any

from medaid.common import errors
from medaid.common.errors import DomainError
from medaid.common.values import text
from medaid.registry import family_rules, premium_rules
from medaid.registry.context import Context
from medaid.registry.family import Family
from medaid.registry.keys import Keys
from medaid.registry.premium_refs import entry_of
from medaid.registry.store import PERSON_FIELDS, Store
from medaid.registry.v1 import premium_pb2 as ppb


class PremiumChecks:
    ctx: Context
    store: Store
    family: Family
    k: Keys

    async def _record(self, payee: str, year: str) -> dict[str, str]:
        raw = await self.ctx.r.hgetall(self.k.premium(payee, year))
        return {text(a): text(b) for a, b in raw.items()}

    async def _check_pay(self, req: ppb.PayResidentPremiumRequest, payer_id: str, payee_id: str, relation: str,
                         year: str, source: str) -> tuple[int, str, tuple[str, str, str]]:
        """Every refusal that can be found before anything is written; the amount, the wallet's place and
        the payee's (status, moved_to, region) it was decided on (premium_open.lua opens only while they
        hold: a payee's move of 统筹区 decides whether an account may pay, `check_payer`)."""
        policy, ctx = self.ctx.policy, self.ctx
        premium_rules.check_window(policy, year, ctx.clock.today())
        amount = premium_rules.amount_for(policy, year)
        payee = await self.store.person(payee_id)
        found = "" if payee is not None and payee.active else await ctx.directory.insured_province(payee_id)
        premium_rules.check_payee(policy, payer_id, payee, payee_id, relation, directory_province=found)
        rec = await self._record(payee_id, year)
        if rec and rec["state"] != "CANCELLED" and rec["id"] != req.request_id:
            raise errors.exists("PREMIUM_ALREADY_PAID", f"the {year} premium of this payee is already paid",
                                premium_id=rec["id"])
        # Its entry goes once its request is answered: a record CANCELLED no later than this read, whose
        # cancellation's entry still stands at the look after, is not yet answered (`cancel_in_progress`).
        if rec.get("cancel_id") and await ctx.r.zscore(self.k.open_settlements(),
                                                       entry_of(payee_id, year, rec["cancel_id"])) is not None:
            raise premium_rules.cancel_in_progress(year)
        payer = await self.store.person(payer_id)
        # Only an ACTIVE payer pays (SPEC §1), whichever money: a family account's too.
        assert payee is not None  # check_payee refuses a payee not enrolled
        premium_rules.check_payer(policy, source, payer, amount, own=relation == premium_rules.OWN,
                                  payee_region=payee.region)
        place = ""
        if source == "FAMILY_ACCOUNT":
            why = await self._check_family(req.family_id, payer_id, payee_id, amount,
                                           own=relation == premium_rules.OWN)
            if why:
                raise premium_rules.family_refusal(why)
        if source == "WALLET":
            assert payer is not None
            place = payer.wallet_place
            refusal = await self._wallet_refusal(payer_id, place, amount)
            if refusal is not None:
                raise refusal
        return amount, place, (payee.status, payee.moved_to, payee.region)

    async def _check_family(self, family_id: str, payer_id: str, payee_id: str, amount: int, *, own: bool) -> str:
        """A 代缴 from family account `family_id`: refused unless the province pools and the account is
        ACTIVE with the payer a MEMBER (`check_family_payer`); then why the account would not pay this
        payee's premium whole now, by the waterfall's rule (rules.family_step: not a member, a member of
        another 统筹区 where the province has no cross-region 共济, too little), '' when it would."""
        family_rules.require_pooled(self.ctx.policy)
        _, refusal = await self._family_payer(family_id, payer_id, own=own)
        if refusal is not None:
            raise refusal
        takes, why = await self.family.plan_charge(family_id, payee_id, amount, "RESIDENT_PREMIUM", whole=True)
        return "" if takes else why

    async def _family_payer(self, family_id: str, payer_id: str, *, own: bool) -> tuple[bytes, DomainError | None]:
        """Whether the payer may have family account `family_id` pay a premium now (SPEC §1, §3b: an
        ACTIVE payer, `check_payer_insured`, and an ACTIVE account they are a MEMBER of,
        `check_family_payer`), judged on what the registry holds now: their member entry as read
        (b'' : none; lua/family_charge.lua takes the money only while it is still that) and the
        refusal, None when they may. Judged when the payment is decided and again where the money
        is taken (`_take`)."""
        policy = self.ctx.policy
        fam = await self.family.family_hash(family_id)
        raw = text(await self.ctx.r.hget(self.k.family_members(family_id), payer_id) or b"").encode()
        place = json.loads(raw) if raw else {}
        try:
            premium_rules.check_payer_insured(policy, await self.store.person(payer_id), own=own)
            premium_rules.check_family_payer(policy, fam["state"], place.get("state", ""),
                                             place.get("temporary") == "1", own=own)
        except DomainError as exc:
            return raw, exc
        return raw, None

    async def _account_payer(self, payer_id: str, payee_id: str, amount: int) -> tuple[list[Any], DomainError | None]:
        """Whether the payer's personal account pays the premium now (`premium_rules.check_payer`, the
        rule the payment was decided by), judged on the payer and their balance as read now: what
        lua/premium_debit.lua is to find unchanged (the balance, then each person field as name, value),
        and the refusal, None when it pays."""
        async with self.ctx.r.pipeline(transaction=False) as p:
            self.store.queue_person(p, payer_id)
            p.hget(self.k.person(payee_id), "region")
            fields, bal, payee_region = await p.execute()
        judged: list[Any] = [text(bal or b"0")]
        for name, value in zip(PERSON_FIELDS, fields, strict=True):
            judged += [name, text(value or b"")]
        try:
            premium_rules.check_payer(self.ctx.policy, "ACCOUNT", self.store.person_view(payer_id, fields, bal),
                                      amount, payee_region=text(payee_region or b""))
        except DomainError as exc:
            return judged, exc
        return judged, None

    async def _wallet_refusal(self, payer_id: str, place: str, amount: int) -> DomainError | None:
        """Why the payer's 医保钱包 would not pay the premium at use-place `place` now (not opened,
        another use-place, too little), None when it would."""
        balance, why = await self.ctx.wallet.balance(payer_id, place)
        if balance is None:
            return errors.refused(why or "WALLET_NOT_OPENED", "the payer's 医保钱包 cannot pay here")
        if balance < amount:
            return errors.refused("WALLET_INSUFFICIENT", "the 医保钱包 holds less than the premium")
        return None
