"""Pure rules of the helper step of the waterfall (bind-and-deduct, SPEC §4): no Redis, no gRPC.

Which bound helpers may pay, in what order the province uses them (`helper_selection`), and what
each pays of the rest of a bill (one helper, `helper_partial`, or `helpers_in_turn`).
"""

from __future__ import annotations

from dataclasses import dataclass

from medaid.registry.binding_rules import holds_personal_account, regions_apart
from medaid.registry.policy import Policy


@dataclass(frozen=True)
class HelperCandidate:
    id_number: str
    balance: int
    seq: int  # filing (备案) order of the binding
    active: bool  # ACTIVE and holding a personal account
    region: str = ""  # the helper's 统筹区


def helper_eligible(status: str, insurance_type: str, flexible_tier: int) -> bool:
    """May this bound helper pay today: ACTIVE and holding a personal account (SPEC §3, §4)."""
    return status == "ACTIVE" and holds_personal_account(insurance_type, flexible_tier)


@dataclass(frozen=True)
class Charge:
    """One helper's part of a settlement's 共济支付."""

    helper_id: str
    amount: int



def helper_order(policy: Policy, helpers: list[HelperCandidate], region: str = "") -> list[HelperCandidate]:
    """The helpers who may pay for a patient of `region`, in the order the province uses them
    (`helper_selection`): eligible, and not in another 统筹区 where the province does not allow
    cross-region 共济 (a binding filed while it did stays, but pays nothing; Diagnose says why)."""
    active = [h for h in helpers if h.active and not regions_apart(policy, h.region, region)]
    if policy.helper_selection == "FILING_ORDER":
        return sorted(active, key=lambda h: h.seq)
    # Largest balance; ties go to the earlier binding.
    return sorted(active, key=lambda h: (-h.balance, h.seq))


def passed_over(policy: Policy, helpers: list[HelperCandidate], helper_id: str, region: str = "") -> bool:
    """Whether `helper_id`, bound and able to pay, is never charged because another helper goes before
    them: where one helper pays all (or, `helper_partial`, part) of the rest, only the first in
    `helper_selection` order pays; where helpers pay in turn (北京), a later one pays what an earlier
    one cannot (SPEC §4)."""
    if policy.helpers_in_turn:
        return False
    return any(h.id_number == helper_id for h in helper_order(policy, helpers, region)[1:])


def choose_helper(policy: Policy, helpers: list[HelperCandidate], region: str = "") -> HelperCandidate | None:
    ordered = helper_order(policy, helpers, region)
    return ordered[0] if ordered else None


def helper_step(policy: Policy, remaining: int, helpers: list[HelperCandidate],
                proxy_only: bool, *, paid: int = 0, region: str = "") -> tuple[tuple[Charge, ...], str]:
    """Waterfall step 3 (bind-and-deduct): who pays how much of `remaining`, and why not all. Also
    what a staged settlement asks, of the helpers still to ask at what they hold now, when a
    planned charge could not be taken (staged.py); `paid` is what other helpers paid of the bill
    already, so that helpers left with nothing make the helpers together insufficient. `region`: the
    patient's 统筹区."""
    if not helpers:
        return (), "PROXY_ONLY" if proxy_only else ""
    ordered = helper_order(policy, helpers, region)
    if not ordered:
        apart = any(h.active and regions_apart(policy, h.region, region) for h in helpers)
        return (), "DIFFERENT_POOLING_REGION" if apart else "NO_ACTIVE_HELPER"
    if all(h.balance <= 0 for h in (ordered if policy.helpers_in_turn else ordered[:1])):
        return (), "HELPER_INSUFFICIENT" if paid > 0 else "HELPER_ZERO_BALANCE"
    if policy.helpers_in_turn:  # 北京: each in 备案 order pays what it can until the bill is covered
        charges: list[Charge] = []
        for h in ordered:
            pay = min(max(h.balance, 0), remaining - sum(c.amount for c in charges))
            if pay > 0:
                charges.append(Charge(h.id_number, pay))
        covered = sum(c.amount for c in charges)
        return tuple(charges), "" if covered == remaining else "HELPER_INSUFFICIENT"
    chosen = ordered[0]
    if chosen.balance >= remaining:
        return (Charge(chosen.id_number, remaining),), ""
    if policy.helper_partial:
        return (Charge(chosen.id_number, chosen.balance),), "HELPER_INSUFFICIENT"
    # All or nothing: money is never pooled from several helpers (不会从多个共济人账户中"凑钱").
    return (), "HELPER_INSUFFICIENT"
