"""Pure rules of the categories personal-account money may pay (SPEC §4): no Redis, no gRPC."""

from __future__ import annotations

from medaid.common import errors
from medaid.registry.policy import NEVER_PAYABLE, Policy


def category_payable(policy: Policy, category: str) -> bool:
    """SPEC §4: whether personal-account money (and so a helper's, a family account's) may pay
    `category` in this province: never the NEVER_PAYABLE ones, else as the province names them."""
    return category not in NEVER_PAYABLE and policy.category_payable(category)

def check_category(policy: Policy, category: str) -> None:
    if not category_payable(policy, category):
        raise errors.refused(
            "CATEGORY_NOT_PAYABLE",
            f"personal-account money cannot pay {category} in {policy.name}",
            category=category,
        )


# SPEC §4b: 代缴 of a 城乡居民医保 premium is its own flow (PayResidentPremium), not a bill at a hospital.
NOT_A_BILL = frozenset({"RESIDENT_PREMIUM"})


def check_bill_category(policy: Policy, category: str) -> None:
    """A bill's category (Settle, PreSettle): one the accounts may pay (`check_category`), and not a
    resident premium, which only 代缴 pays, under its window, amount, once a year and the list the tax
    bureau receives; a "premium" settled as a bill would escape them all (and let a 福建 临时成员's
    family account pay any amount)."""
    check_category(policy, category)
    if category in NOT_A_BILL:
        raise errors.refused(
            "CATEGORY_NOT_PAYABLE",
            f"a {category} is not settled as a bill: it is paid by 代缴 (PayResidentPremium), inside "
            f"{policy.name}'s collection window, once per payee and year",
            category=category,
        )
