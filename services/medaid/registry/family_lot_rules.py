"""Pure rules of the family-account step of the waterfall (SPEC §3b, POOLED_ACCOUNT): no Redis, no gRPC.

A family account's money is lots, one per 划拨, each tagged with its contributor and spent oldest
first. Who may create, join and 划拨 is `family_rules`; this is what the account pays of a bill.
"""

from __future__ import annotations

from dataclasses import dataclass

from medaid.registry.binding_rules import regions_apart
from medaid.registry.helper_rules import Charge
from medaid.registry.policy import Policy


@dataclass(frozen=True)
class Lot:
    """One 划拨's unspent part, tagged with its contributor; spent oldest first."""

    seq: int
    contributor: str
    amount: int


@dataclass(frozen=True)
class FamilyView:
    """What the waterfall needs of the patient's family account."""

    family_id: str
    active: bool  # the account is ACTIVE and the patient is a MEMBER of it
    temporary: bool  # 福建 临时成员: only their resident premium
    lots: tuple[Lot, ...]
    # The 统筹区 of the account's creator and of the patient: where the province has no cross-region
    # 共济 (`regions_apart`), the account pays nothing for a member of another 统筹区 than its creator's.
    creator_region: str = ""
    member_region: str = ""

    @property
    def balance(self) -> int:
        return sum(lot.amount for lot in self.lots)

    def shares(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for lot in self.lots:
            out[lot.contributor] = out.get(lot.contributor, 0) + lot.amount
        return out


@dataclass(frozen=True)
class LotTake:
    """What a family charge takes from one lot: `amount` of the `remaining` the lot held when planned."""

    seq: int
    contributor: str
    remaining: int
    amount: int


def take_oldest_first(lots: tuple[Lot, ...], amount: int) -> tuple[LotTake, ...]:
    """Which lots pay `amount` (or what there is of it), oldest contribution first. The one
    implementation of the order: the scripts apply exactly these takes (lua/_prelude.lua)."""
    takes: list[LotTake] = []
    left = amount
    for lot in sorted(lots, key=lambda x: x.seq):
        if left <= 0:
            break
        pay = min(lot.amount, left)
        if pay > 0:
            takes.append(LotTake(lot.seq, lot.contributor, lot.amount, pay))
            left -= pay
    return tuple(takes)


def by_contributor(takes: tuple[LotTake, ...]) -> tuple[Charge, ...]:
    """The takes as one charge per contributor, in the order their first lot was taken."""
    paid: dict[str, int] = {}
    for t in takes:
        paid[t.contributor] = paid.get(t.contributor, 0) + t.amount
    return tuple(Charge(cid, amount) for cid, amount in paid.items())


def family_apart(policy: Policy, family: FamilyView) -> bool:
    """The member and the creator of a family account are in different 统筹区 of a province without
    cross-region 共济 (SPEC §3b): a membership made while the province allowed it stays, but the
    account pays nothing for that member (as a binding across 统筹区 pays nothing, §3)."""
    return regions_apart(policy, family.creator_region, family.member_region)


def family_may_pay(policy: Policy, family: FamilyView) -> bool:
    """Whether the family account would pay anything for the member today (any category but the
    临时成员 rule): a full or temporary MEMBER of an ACTIVE account that holds money, not kept apart."""
    return family.active and family.balance > 0 and not family_apart(policy, family)


def family_step(policy: Policy, remaining: int, family: FamilyView | None,
                category: str) -> tuple[tuple[LotTake, ...], str]:
    """Waterfall step 3 in a pooled province (SPEC §3b): what the family account pays of `remaining`
    (it may pay part), lot by lot oldest contribution first, and why not all. Also the rule of a
    staged settlement's family charge and of a 代缴 from the account, which apply it later."""
    if family is None:
        return (), ""
    if not family.active:
        return (), "NOT_FAMILY_MEMBER"
    if family_apart(policy, family):
        return (), "DIFFERENT_POOLING_REGION"
    if family.temporary and category != "RESIDENT_PREMIUM":
        return (), "TEMPORARY_MEMBER"
    if family.balance <= 0:
        return (), "FAMILY_ZERO_BALANCE"
    takes = take_oldest_first(family.lots, remaining)
    paid = sum(t.amount for t in takes)
    return takes, "" if paid == remaining else "FAMILY_INSUFFICIENT"
