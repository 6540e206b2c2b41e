"""Pure rules of the people and their bindings (家庭共济, SPEC §3): no Redis, no gRPC.

What the rules read of a person (`PersonView`), whether two people may be bound, and why a binding
can no longer stand. The structural checks that must be atomic with the write (already bound,
reverse binding, exclusivity, member limit) run inside `lua/bind.lua` and report the codes of
`BIND_STRUCTURE_MESSAGES`.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from medaid.common import errors
from medaid.common.errors import DomainError
from medaid.common.idnumber import parse as parse_id
from medaid.registry.policy import IN_LAW_RELATIONS, Policy


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
