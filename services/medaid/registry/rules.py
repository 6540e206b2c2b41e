"""Pure 家庭共济 rules (SPEC §3, §4): no Redis, no gRPC.

Bind eligibility of the two people, the settlement waterfall and the diagnosis findings live
here; the structural binding checks that must be atomic with the write (already bound,
reverse binding, exclusivity, member limit) run inside `lua/bind.lua` and report the same codes.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from medaid.common import errors
from medaid.common.errors import DomainError
from medaid.common.idnumber import parse as parse_id
from medaid.registry.policy import IN_LAW_RELATIONS, NEVER_PAYABLE, Policy

# Lua numbers are doubles: every balance and amount stays far below 2**53.
MAX_AMOUNT_FEN = 10**12  # ¥10 000 000 000.00 in one operation is already absurd
MAX_BALANCE_FEN = 2**52


@dataclass(frozen=True)
class PersonView:
    id_number: str
    insurance_type: str  # EMPLOYEE | FLEXIBLE | RESIDENT
    flexible_tier: int
    status: str  # ACTIVE | SUSPENDED | TERMINATED
    region: str
    province: str
    moved_to: str = ""
    balance: int = 0
    # 使用地 of the person's 医保钱包, noted by the wallet service; '' when none is open.
    wallet_place: str = ""

    @property
    def has_account(self) -> bool:
        return holds_personal_account(self.insurance_type, self.flexible_tier)

    @property
    def active(self) -> bool:
        return self.status == "ACTIVE"


def holds_personal_account(insurance_type: str, flexible_tier: int) -> bool:
    """职工医保, or 灵活就业 in tier 2, comes with a personal account (SPEC §1)."""
    return insurance_type == "EMPLOYEE" or (insurance_type == "FLEXIBLE" and flexible_tier == 2)


def age_of(id_number: str, today: _dt.date) -> int:
    return parse_id(id_number).age_on(today)


# --- binding (SPEC §3) -------------------------------------------------------------------


def member_elsewhere(policy: Policy, member: PersonView | None, member_insured_admdvs: str,
                     directory_province: str = "") -> str:
    """The province the member is insured in when it is not this one, else ''. The national person
    directory answers for a member this registry does not hold (or holds as moved away)."""
    if member_insured_admdvs and member_insured_admdvs[:2] != policy.province:
        return member_insured_admdvs[:2]
    if member is not None and member.active:
        return ""
    if directory_province and directory_province != policy.province:
        return directory_province
    if member is not None and member.moved_to and member.status == "TERMINATED":
        return member.moved_to
    return ""


def check_relation(policy: Policy, relation: str) -> None:
    if relation in IN_LAW_RELATIONS:
        raise errors.refused(
            "RELATION_NOT_ALLOWED",
            f"{relation} is an in-law relation; in-laws are never near-kin for 家庭共济",
            relation=relation,
        )
    if relation not in policy.relations:
        raise errors.refused(
            "RELATION_NOT_ALLOWED",
            f"relation {relation} is not in {policy.name}'s allowed set {sorted(policy.relations)}",
            relation=relation,
        )


def regions_apart(policy: Policy, region: str, other: str) -> bool:
    """Two people in different 统筹区 of a province without cross-region 共济 (SPEC §3): they can be
    no binding's two sides, nor in one family account (§3b), and a move that parts them ends those."""
    return region != other and not policy.cross_region_allowed


def check_same_region(policy: Policy, helper: PersonView, member: PersonView) -> None:
    """`regions_apart` as a refusal: for a binding, an invitation and its acceptance (SPEC §3, §3b)."""
    if regions_apart(policy, helper.region, member.region):
        raise errors.refused(
            "DIFFERENT_POOLING_REGION",
            f"helper ({helper.region}) and member ({member.region}) are in different 统筹区 and "
            f"{policy.name} does not allow cross-region 共济",
        )


def check_bind_people(
    policy: Policy,
    helper: PersonView | None,
    member: PersonView | None,
    *,
    helper_id: str,
    member_id: str,
    relation: str,
    verified: bool,
    member_insured_admdvs: str,
    today: _dt.date,
    directory_province: str = "",
) -> None:
    """Raise the first SPEC §3 reason that forbids binding these two people."""
    if helper_id == member_id:
        raise errors.invalid("SELF_BINDING", "a person cannot bind themself as their own member")
    check_relation(policy, relation)
    if helper is None:
        raise errors.refused(
            "HELPER_NOT_INSURED", f"the helper is not enrolled in {policy.name}", province=policy.province
        )
    if not helper.active:
        raise errors.refused("HELPER_NOT_ACTIVE", f"the helper's insurance is {helper.status}, not ACTIVE")
    if not helper.has_account:
        raise errors.refused(
            "HELPER_NOT_EMPLOYEE",
            "the helper has no personal account (only 职工医保 or 灵活就业 tier 2 can be a helper)",
        )
    elsewhere = member_elsewhere(policy, member, member_insured_admdvs, directory_province)
    if elsewhere:
        raise errors.refused(
            "CROSS_PROVINCE",
            f"the member is insured in province {elsewhere}, not {policy.name}: in-province 家庭共济 is "
            "impossible (原因四); use a 医保钱包 cross-province transfer instead",
            member_province=elsewhere,
            use="WALLET_TRANSFER",
        )
    if member is None or not member.active:
        state = "not enrolled" if member is None else member.status
        raise errors.refused(
            "MEMBER_NOT_INSURED",
            f"the member is {state}; only an ACTIVE insured person can be bound (原因一)",
        )
    check_same_region(policy, helper, member)
    if not verified and age_of(member.id_number, today) >= policy.face_verification_age:
        raise errors.refused(
            "VERIFICATION_REQUIRED",
            f"the member is {policy.face_verification_age} or older: identity verification "
            "(face or 医保码 password) is required to bind",
            age=str(policy.face_verification_age),
        )


def termination_reason(moved_to: str) -> str:
    """What ends a TERMINATED person's bindings, family places and wallet relationships: MOVED when they
    moved province (`moved_to`), else TERMINATED (a side's prefix goes before it: HELPER_, MEMBER_)."""
    return "MOVED" if moved_to else "TERMINATED"


def binding_end_reason(policy: Policy, helper: PersonView | None, member: PersonView | None,
                       helper_region_before: str = "") -> str:
    """Why a binding between these two people, as they are now, cannot stand ('' : it can): a side
    TERMINATED (moved province: MOVED) or DECEASED, or their 统筹区 apart where the province keeps 共济
    within one (SPEC §3, §5b), the helper's move if their region is no longer `helper_region_before`.
    The reasons the life-cycle flows end bindings with."""
    for side, person in (("HELPER", helper), ("MEMBER", member)):
        if person is None:
            continue
        if person.status == "TERMINATED":
            return f"{side}_{termination_reason(person.moved_to)}"
        if person.status == "DECEASED":
            return f"{side}_DECEASED"
    if helper is not None and member is not None and regions_apart(policy, helper.region, member.region):
        return "HELPER_MOVED_REGION" if helper.region != helper_region_before else "MEMBER_MOVED_REGION"
    return ""


BIND_STRUCTURE_MESSAGES = {
    "ALREADY_BOUND": "this helper already binds this member",
    "REVERSE_BINDING": "the member already binds this helper; bindings are one-directional",
    "ALREADY_IN_ANOTHER_RELATION": "in this province a helper and a member may each be in only one "
    "家庭共济 relationship at a time",
    "MEMBER_LIMIT_REACHED": "the helper already has the maximum number of members",
}


def bind_structure_error(code: str, policy: Policy) -> DomainError:
    msg = BIND_STRUCTURE_MESSAGES[code]
    if code == "MEMBER_LIMIT_REACHED":
        msg += f" ({policy.max_members} in {policy.name})"
    if code == "ALREADY_BOUND":
        return errors.exists(code, msg)
    return errors.refused(code, msg)


# --- categories --------------------------------------------------------------------------


def category_payable(policy: Policy, category: str) -> bool:
    """SPEC §4: whether personal-account money (and so a helper's, a family account's) may pay
    `category` in this province: never the NEVER_PAYABLE ones, else as the province names them."""
    return category not in NEVER_PAYABLE and policy.category_payable(category)


def category_finding(policy: Policy, category: str) -> Finding | None:
    """Diagnosis (bind-and-deduct and pooled alike): the finding of a category not payable, if it is not
    ('' : no category asked about)."""
    if category and not category_payable(policy, category):
        return Finding("CATEGORY_NOT_PAYABLE", f"个人账户不能支付 {category} 类费用")
    return None


def check_category(policy: Policy, category: str) -> None:
    if not category_payable(policy, category):
        raise errors.refused(
            "CATEGORY_NOT_PAYABLE",
            f"personal-account money cannot pay {category} in {policy.name}",
            category=category,
        )


# --- settlement waterfall (SPEC §4) ------------------------------------------------------


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


# --- the family account step (SPEC §3b, POOLED_ACCOUNT) -----------------------------------------


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


# --- diagnosis (SPEC §4) -----------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    code: str
    message: str


def diagnose(
    policy: Policy,
    *,
    member: PersonView | None,
    helper: PersonView | None,
    mutual_aid_bound: bool,
    proxy_bound: bool,
    category: str,
    member_insured_admdvs: str,
    directory_province: str = "",
    helpers: tuple[HelperCandidate, ...] = (),
) -> list[Finding]:
    """Every reason 共济 from `helper` to `member` would not work today (empty: it would). `helpers`:
    the member's bound helpers as a settlement reads them, to tell whether another goes first."""
    out: list[Finding] = []
    if helper is None:
        out.append(Finding("HELPER_NOT_INSURED", f"共济人未在{policy.name}参保登记"))
    else:
        if not helper.active:
            out.append(Finding("HELPER_NOT_ACTIVE", f"共济人参保状态为 {helper.status},需恢复正常参保"))
        if not helper.has_account:
            out.append(Finding("HELPER_NOT_EMPLOYEE", "共济人没有职工医保个人账户,不能作为共济人"))
    elsewhere = member_elsewhere(policy, member, member_insured_admdvs, directory_province)
    if elsewhere:
        out.append(
            Finding(
                "CROSS_PROVINCE",
                f"被共济人在省份 {elsewhere} 参保,不能省内共济 (原因四);请开通医保钱包并使用跨省共济划转",
            )
        )
    elif member is None or not member.active:
        out.append(Finding("MEMBER_NOT_INSURED", "被共济人未正常参保,不能被共济 (原因一)"))
    if (
        helper is not None
        and member is not None
        and not elsewhere
        and regions_apart(policy, helper.region, member.region)
    ):
        out.append(Finding("DIFFERENT_POOLING_REGION", "共济人与被共济人不在同一统筹区,本省不支持跨统筹区共济"))
    if not mutual_aid_bound:
        if proxy_bound:
            out.append(
                Finding("PROXY_ONLY", "只绑定了亲情账户 (代为出示医保码,由本人账户支付),未建立家庭共济关系 (原因二)")
            )
        else:
            out.append(Finding("NOT_BOUND", "双方之间没有家庭共济绑定关系,请共济人先办理绑定"))
    if helper is not None and helper.has_account and helper.balance <= 0:
        out.append(Finding("HELPER_ZERO_BALANCE", "共济人个人账户余额为零 (原因三)"))
    if mutual_aid_bound and helper is not None and member is not None and \
            passed_over(policy, list(helpers), helper.id_number, member.region):
        first = "余额最大" if policy.helper_selection == "LARGEST_BALANCE" else "备案在先"
        out.append(Finding("OTHER_HELPER_FIRST", f"被共济人另有{first}的共济人,结算时由其支付;"
                           "本省不从多个共济人账户凑钱,本共济人的账户不会被扣款"))
    if (finding := category_finding(policy, category)) is not None:
        out.append(finding)
    return out
