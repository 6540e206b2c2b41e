"""From a settlement request and what Redis holds to a plan: validation, the refusals that come
before any money moves, and the call of `rules.plan_settlement` (the only implementation of the
waterfall). Shared by pre-settlement, the atomic path and the staged path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from medaid.common import divisions, errors
from medaid.common import validate as common_validate
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry import rules, validate
from medaid.registry.context import Context
from medaid.registry.records import ChargeDone, SettlementRecord, wallet_ref_of
from medaid.registry.store import Store

Wallet = tuple[int | None, str]  # (spendable balance here, '') or (None, why the wallet cannot pay)


class Planner:
    def __init__(self, ctx: Context, store: Store,
                 family_view: Callable[[str], Awaitable[rules.FamilyView | None]] | None = None) -> None:
        self.ctx = ctx
        self.store = store
        self.family_view = family_view

    def validate(self, req: Any) -> str:
        """The patient's id (normalised); INVALID_ARGUMENT before anything is read. A malformed request
        never had an effect; the rules of the domain are judged after the request id's claim is looked
        up (`judge`, `payable`), so that a replay is answered as the first time."""
        pid = validate.id_number(req.patient_id_number, "patient_id_number")
        validate.amount(req.amount_fen)
        validate.enum_name(cpb.Category, req.category, "CATEGORY_", "category")
        validate.institution(req.institution_code)
        validate.admdvs(req.institution_admdvs, "institution_admdvs")
        validate.admdvs(req.insured_region, "insured_region")
        return pid

    def judge(self, req: Any) -> None:
        """The bill's own rules (CATEGORY_NOT_PAYABLE), for a request not done before: a settlement
        replayed after its province dropped the category, or after an upgrade that refuses it, is
        answered as it was settled, never refused while its money moved."""
        rules.check_bill_category(self.ctx.policy, cpb.Category.Name(req.category).removeprefix("CATEGORY_"))

    def payable(self, req: Any, pid: str, patient: rules.PersonView | None) -> rules.PersonView:
        """The patient, or the refusal when the bill is not one the accounts pay (`judge`, first), or
        they are not enrolled, not ACTIVE, or insured elsewhere than the caller said."""
        self.judge(req)
        if patient is None:
            raise self.ctx.not_enrolled(pid)
        common_validate.insured_place(req.insured_region, str(patient.region), who="the patient")
        if not patient.active:
            raise errors.refused("MEMBER_NOT_INSURED",
                                 f"the patient's insurance is {patient.status}: accounts cannot pay (原因一)")
        return patient

    def place_of(self, req: Any, patient: rules.PersonView) -> str:
        """Where the bill is settled: the 统筹区 of the province the institution's admdvs belongs to
        (a district or 市本级 code is its city's, `divisions.pooling_region`; a code under none stays as
        it is), else the patient's 统筹区. The wallet is asked and spent at this place, so its own
        check (the use-place) stays an equality."""
        if req.institution_admdvs:
            return divisions.pooling_region(req.institution_admdvs, self.ctx.policy.regions)
        return str(patient.region)

    def wallet_question(self, req: Any, patient: rules.PersonView) -> tuple[str, str]:
        """('ask', place) when step 2 must ask the wallet service, else ('', why it cannot pay)."""
        own = rules.own_share(req.amount_fen, req.use_account, patient)
        place = self.place_of(req, patient)
        why = rules.wallet_usable(req.use_account, req.amount_fen - own, patient, place)
        if why == "":
            return "ask", place
        return "", "" if why == "-" else why

    def plan(self, req: Any, patient: rules.PersonView, wallet: Wallet, helpers: list[rules.HelperCandidate],
             proxy_only: bool, family: rules.FamilyView | None = None) -> rules.Plan:
        balance, why = wallet
        return rules.plan_settlement(
            self.ctx.policy, amount=req.amount_fen, use_account=req.use_account, own_balance=patient.balance,
            has_own_account=patient.has_account, wallet_balance=balance, wallet_missing_reason=why,
            helpers=helpers, proxy_only=proxy_only, family=family,
            category=cpb.Category.Name(req.category).removeprefix("CATEGORY_"), region=patient.region)

    async def read_and_plan(self, req: Any, pid: str) -> tuple[rules.PersonView, rules.Plan,
                                                                 list[rules.HelperCandidate], Wallet]:
        """Everything one settlement needs, read with single-slot commands (any Redis) and planned; the
        wallet as it was asked (its balance, or why it cannot pay)."""
        patient = self.payable(req, pid, await self.store.person(pid))
        helpers, proxies = await self.store.helper_candidates(pid)
        ask, why = self.wallet_question(req, patient)
        wallet: Wallet = (None, why)
        if ask:
            wallet = await self.ctx.wallet.balance(pid, why)
        family = None
        # Read also when the account is not used: the plan then says so (ACCOUNT_NOT_USED) to a member.
        if self.ctx.policy.pooled and self.family_view is not None:
            family = await self.family_view(pid)
        return patient, self.plan(req, patient, wallet, helpers, proxies, family), helpers, wallet

    def record_of(self, req: Any, pid: str, patient: rules.PersonView, plan: rules.Plan, state: str,
                  *, own_after: int = -1, helper_afters: tuple[int, ...] = (),
                  wallet_after: int = 0) -> SettlementRecord:
        afters = helper_afters or (-1,) * len(plan.charges)
        sid = getattr(req, "request_id", "")
        return SettlementRecord(
            sid=sid, patient=pid, amount=plan.amount, acct_pay=plan.acct_pay, wallet_pay=plan.wallet_pay,
            wallet_ref=wallet_ref_of(self.ctx.policy.province, sid) if plan.wallet_pay > 0 else "",
            charges=tuple(ChargeDone(c.helper_id, c.amount, a) for c, a in zip(plan.charges, afters, strict=True)),
            cash_pay=plan.cash_pay, helper_reason=plan.helper_reason, wallet_reason=plan.wallet_reason,
            category=int(req.category), institution=req.institution_code, place=self.place_of(req, patient),
            region=patient.region, at=self.ctx.clock.now_ms(), state=state, own_bal_after=own_after,
            wallet_bal_after=wallet_after, family_id=plan.family_id)
