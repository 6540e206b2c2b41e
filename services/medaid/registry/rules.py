"""The settlement waterfall of 家庭共济 (SPEC §4), pure: no Redis, no gRPC.

Own account → own wallet → helper(s) or the family account → cash: `plan_settlement` is the one
implementation. The pure rules it draws on live beside it, one concern a module, and are re-exported
here so that `rules.X` names every rule of SPEC §3–§4:

* `binding_rules` — the people (`PersonView`), bind eligibility, why a binding ends;
* `category_rules` — which categories personal-account money may pay;
* `helper_rules` — helper eligibility and order, the helper step (bind-and-deduct);
* `family_lot_rules` — the family-account step (POOLED_ACCOUNT), lots oldest first;
* `diagnosis_rules` — the diagnosis findings.
"""

from __future__ import annotations

from dataclasses import dataclass

from medaid.registry.binding_rules import (
    BIND_STRUCTURE_MESSAGES,
    PersonView,
    age_of,
    bind_structure_error,
    binding_end_reason,
    check_bind_people,
    check_relation,
    check_same_region,
    holds_personal_account,
    member_elsewhere,
    regions_apart,
    termination_reason,
)
from medaid.registry.category_rules import category_payable, check_bill_category, check_category
from medaid.registry.diagnosis_rules import (
    Finding,
    category_finding,
    cross_province_finding,
    diagnose,
    member_not_insured,
)
from medaid.registry.family_lot_rules import (
    FamilyView,
    Lot,
    LotTake,
    by_contributor,
    family_apart,
    family_may_pay,
    family_step,
    take_oldest_first,
)
from medaid.registry.helper_rules import (
    Charge,
    HelperCandidate,
    choose_helper,
    helper_eligible,
    helper_order,
    helper_step,
    passed_over,
)
from medaid.registry.policy import Policy

__all__ = [
    # the waterfall (this module)
    "MAX_AMOUNT_FEN", "MAX_BALANCE_FEN", "Plan", "own_share", "plan_settlement", "wallet_usable",
    # binding_rules
    "BIND_STRUCTURE_MESSAGES", "PersonView", "age_of", "bind_structure_error", "binding_end_reason",
    "check_bind_people", "check_relation", "check_same_region", "holds_personal_account", "member_elsewhere",
    "regions_apart", "termination_reason",
    # category_rules
    "category_payable", "check_bill_category", "check_category",
    # helper_rules
    "Charge", "HelperCandidate", "choose_helper", "helper_eligible", "helper_order", "helper_step", "passed_over",
    # family_lot_rules
    "FamilyView", "Lot", "LotTake", "by_contributor", "family_apart", "family_may_pay", "family_step",
    "take_oldest_first",
    # diagnosis_rules
    "Finding", "category_finding", "cross_province_finding", "diagnose", "member_not_insured",
]

# Lua numbers are doubles: every balance and amount stays far below 2**53.
MAX_AMOUNT_FEN = 10**12  # ¥10 000 000 000.00 in one operation is already absurd
MAX_BALANCE_FEN = 2**52


@dataclass(frozen=True)
class Plan:
    amount: int
    acct_pay: int
    wallet_pay: int
    charges: tuple[Charge, ...]
    cash_pay: int
    helper_reason: str
    wallet_reason: str
    # POOLED_ACCOUNT: the family account that pays `charges` (each Charge names a contributor), and
    # the lots those charges come from, as the plan saw them (a script applies exactly these).
    family_id: str = ""
    lot_takes: tuple[LotTake, ...] = ()

    def __post_init__(self) -> None:
        parts = (self.acct_pay, self.wallet_pay, self.mulaid_pay, self.cash_pay)
        if min(parts) < 0 or sum(parts) != self.amount or any(c.amount <= 0 for c in self.charges):
            raise AssertionError(f"waterfall does not add up: {parts} vs {self.amount}")

    @property
    def mulaid_pay(self) -> int:
        return sum(c.amount for c in self.charges)

    @property
    def helper_id(self) -> str:
        return self.charges[0].helper_id if self.charges else ""


def own_share(amount: int, use_account: bool, person: PersonView) -> int:
    """Waterfall step 1: the patient's own personal account pays first (本人个人账户优先)."""
    return min(max(person.balance, 0), amount) if use_account and person.has_account else 0


def wallet_usable(use_account: bool, remaining: int, person: PersonView, place: str) -> str:
    """Whether step 2 must ask the wallet: '' when it must, else the reason it cannot pay here."""
    if not use_account or remaining <= 0:
        return "-"
    if not person.wallet_place:
        return "WALLET_NOT_OPENED"
    if person.wallet_place != place:
        return "WALLET_OTHER_USE_PLACE"
    return ""


def plan_settlement(
    policy: Policy,
    *,
    amount: int,
    use_account: bool,
    own_balance: int,
    has_own_account: bool,
    wallet_balance: int | None,
    helpers: list[HelperCandidate],
    proxy_only: bool,
    wallet_missing_reason: str = "",
    family: FamilyView | None = None,
    category: str = "",
    region: str = "",
) -> Plan:
    """Own account → own wallet → helper(s) → cash (SPEC §4): the one implementation of the waterfall.
    In a POOLED_ACCOUNT province step 3 is the patient's family account (`family`, SPEC §3b).
    `region`: the patient's 统筹区 (helpers of another one pay only where the province allows it)."""
    if not use_account:
        reason = "ACCOUNT_NOT_USED" if helpers or (family is not None and family.active) else ""
        return Plan(amount, 0, 0, (), amount, reason, "")
    remaining = amount
    acct_pay = min(max(own_balance, 0), remaining) if has_own_account else 0
    remaining -= acct_pay
    wallet_pay, wallet_reason = 0, ""
    if remaining > 0:
        if wallet_balance is None:
            wallet_reason = wallet_missing_reason or "WALLET_NOT_OPENED"
        else:
            wallet_pay = min(max(wallet_balance, 0), remaining)
            remaining -= wallet_pay
            if remaining > 0:
                wallet_reason = "WALLET_INSUFFICIENT" if wallet_balance > 0 else "WALLET_ZERO_BALANCE"
    charges: tuple[Charge, ...] = ()
    takes: tuple[LotTake, ...] = ()
    helper_reason = ""
    family_id = ""
    if remaining > 0:
        if policy.pooled:
            takes, helper_reason = family_step(policy, remaining, family, category)
            charges = by_contributor(takes)
            family_id = family.family_id if charges and family is not None else ""
        else:
            charges, helper_reason = helper_step(policy, remaining, helpers, proxy_only, region=region)
        remaining -= sum(c.amount for c in charges)
    return Plan(amount, acct_pay, wallet_pay, charges, remaining, helper_reason, wallet_reason, family_id, takes)
