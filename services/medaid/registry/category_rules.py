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
