"""Pure rules of the pooled family account (家庭共济账户, SPEC §3b): no Redis, no gRPC.

Who may create, be invited, accept, 划拨, leave, be removed, dissolve and take back (回拨); the settlement
step that charges the account lives with the rest of the waterfall in `rules.plan_settlement`. The
structural rules that must be atomic with the write (one account per creator, exclusivity, the member
cap, the state of an invitation) run inside `lua/family_*.lua` and report the codes of
`STRUCTURE_MESSAGES`. Ending a place (`check_end`) is judged here alone, under the family's lock on a
read that `lua/family_end.lua` checks is still what stands before it applies the ending.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from medaid.common import errors
from medaid.common.errors import DomainError
from medaid.registry import rules
from medaid.registry.policy import Policy

SHANGHAI = _dt.timezone(_dt.timedelta(hours=8))


def require_pooled(policy: Policy) -> None:
    if not policy.pooled:
        raise errors.refused("MODEL_NOT_POOLED", f"{policy.name} runs 家庭共济 by binding (BIND_AND_DEDUCT): "
                             "there are no family accounts; bind a helper instead", model=policy.model)


def require_binding_model(policy: Policy) -> None:
    """A province runs exactly one model (SPEC §3): no bindings where family accounts are used."""
    if policy.pooled:
        raise errors.refused("MODEL_POOLED", f"{policy.name} runs 家庭共济 as a family account "
                             "(POOLED_ACCOUNT): create a family account and invite the member instead",
                             model=policy.model)


def check_creator(policy: Policy, creator: rules.PersonView | None, committed: bool) -> None:
    """创建: an ACTIVE employee with a personal account who signed the 承诺书."""
    require_pooled(policy)
    if creator is None:
        raise errors.refused("HELPER_NOT_INSURED", f"the creator is not enrolled in {policy.name}")
    if not creator.active:
        raise errors.refused("HELPER_NOT_ACTIVE", f"the creator's insurance is {creator.status}, not ACTIVE")
    if not creator.has_account:
        raise errors.refused("HELPER_NOT_EMPLOYEE", "only an employee with a personal account can create a "
                             "family account (家庭共济账户创建人为职工医保参保人员)")
    if not committed:
        raise errors.refused("COMMITMENT_REQUIRED", "the creator must sign the 家庭共济承诺书 (an attestation)")


def check_invitee(policy: Policy, creator: rules.PersonView | None, member: rules.PersonView | None, *,
                  creator_id: str, member_id: str, relation: str, temporary: bool,
                  directory_province: str = "") -> None:
    """邀请: the §3 person rules (near-kin, insured and ACTIVE here, same 统筹区 where required)."""
    if temporary and not policy.temporary_members:
        raise errors.refused("TEMPORARY_MEMBERS_NOT_ALLOWED", f"{policy.name} has no temporary members")
    # Face verification is the member's, at acceptance: not checked here.
    rules.check_bind_people(policy, creator, member, helper_id=creator_id, member_id=member_id, relation=relation,
                            verified=True, member_insured_admdvs="", today=_dt.date(2000, 1, 1),
                            directory_province=directory_province)


def joins_at_once(policy: Policy, member_id: str, today: _dt.date, temporary: bool) -> bool:
    """Under the province's verification age (and a 福建 临时成员) joins without face verification."""
    return temporary or rules.age_of(member_id, today) < policy.face_verification_age


def check_accept(policy: Policy, member_id: str, today: _dt.date, verified: bool) -> None:
    if not verified and rules.age_of(member_id, today) >= policy.face_verification_age:
        raise errors.refused("VERIFICATION_REQUIRED", f"the member is {policy.face_verification_age} or older: "
                             "accepting needs the member's own face verification (人脸识别)",
                             age=str(policy.face_verification_age))


def check_joiner(policy: Policy, creator: rules.PersonView | None, member: rules.PersonView | None) -> None:
    """接受: the invitee is still ACTIVE here and, where the province has no cross-region 共济, of the
    creator's 统筹区 (the policy may have changed since the invitation; SPEC §3b)."""
    if member is None or not member.active:
        raise errors.refused("MEMBER_NOT_INSURED", "the member is not ACTIVE in this province (原因一)")
    if creator is not None:
        rules.check_same_region(policy, creator, member)


def membership_end_reason(policy: Policy, creator: rules.PersonView | None, member: rules.PersonView | None,
                          creator_region_before: str = "") -> str:
    """Why a place of `member` in the family account of `creator`, both as they are now, cannot stand
    ('' : it can), in the words the life-cycle flows end it with (SPEC §3b, §5b): the bindings' rule
    (`rules.binding_end_reason`), the creator's reasons CREATOR_TERMINATED, CREATOR_MOVED,
    CREATOR_DECEASED (the account is dissolved: `dissolves`) or CREATOR_MOVED_REGION, the member's
    TERMINATED, MOVED, DECEASED or MOVED_REGION. `member` None: the creator's own place."""
    why = rules.binding_end_reason(policy, creator, member, creator_region_before)
    return "CREATOR_" + why.removeprefix("HELPER_") if why.startswith("HELPER_") else why.removeprefix("MEMBER_")


def dissolves(end_reason: str) -> bool:
    """Whether a `membership_end_reason` ends the whole account (the creator is gone), not one place."""
    return end_reason.startswith("CREATOR_") and end_reason != "CREATOR_MOVED_REGION"


def month_of(now_ms: int) -> str:
    """The calendar month (Asia/Shanghai) a 划拨 counts against: yyyymm."""
    return _dt.datetime.fromtimestamp(now_ms / 1000, SHANGHAI).strftime("%Y%m")


def may_contribute(policy: Policy, *, is_creator: bool, is_member: bool) -> bool:
    """Whose 划拨 a family account takes (SPEC §3b): the creator's; where `member_contributions` (福建),
    also a MEMBER's. The one implementation of who, for a 划拨 judged (`check_transfer_in`) and for one
    debited and then credited (`credit_taken`)."""
    return is_creator or (policy.member_contributions and is_member)


def contributors_zh(policy: Policy) -> str:
    """Who may 划拨 here (`may_contribute`), as a front desk tells it."""
    return "创建人或有个人账户的成员" if policy.member_contributions else "创建人"


def credit_taken(policy: Policy, family_state: str, *, is_creator: bool, is_member: bool) -> bool:
    """Whether a debited 划拨 becomes a lot of the account (lua/family_credit.lua applies this judgement
    while what it was made on still stands): the account is ACTIVE and the contributor still may
    contribute. Not taken (dissolved, or the contributor left or was removed since the debit), the
    money goes back to the personal account and the 划拨 is refused (`transfer_given_back`). The
    contributor's own rules (ACTIVE, a personal account, the limits) were judged with the debit."""
    return family_state == "ACTIVE" and may_contribute(policy, is_creator=is_creator, is_member=is_member)


def check_transfer_in(policy: Policy, contributor: rules.PersonView | None, *, is_creator: bool,
                      is_member: bool, amount: int, month_count: int) -> None:
    """划拨: who may, and the limits of the province (SPEC §3b)."""
    require_pooled(policy)
    if contributor is None or not may_contribute(policy, is_creator=is_creator, is_member=is_member) \
            or not contributor.has_account:
        who = "the creator" + (" and members with a personal account" if policy.member_contributions else "")
        raise errors.refused("NOT_A_CONTRIBUTOR", f"in {policy.name} only {who} may 划拨 into the family account")
    if not contributor.active:
        raise errors.refused("HELPER_NOT_ACTIVE", f"the contributor's insurance is {contributor.status}, not ACTIVE")
    if contributor.balance < amount:
        raise errors.refused("INSUFFICIENT_BALANCE", "the personal account holds less than the 划拨 amount",
                             balance_fen=str(contributor.balance))
    if contributor.balance - amount < policy.keep_min_balance_fen:
        raise errors.refused("BELOW_MINIMUM_BALANCE", f"{policy.name} lets a 划拨 take only the part of the balance "
                             f"above {policy.keep_min_balance_fen} fen", keep_min_fen=str(policy.keep_min_balance_fen),
                             movable_fen=str(max(contributor.balance - policy.keep_min_balance_fen, 0)))
    if policy.transfers_per_month and month_count >= policy.transfers_per_month:
        raise errors.refused("MONTHLY_LIMIT_REACHED", f"{policy.name} allows {policy.transfers_per_month} 划拨 "
                             "per contributor per calendar month", limit=str(policy.transfers_per_month))


def transfer_given_back(policy: Policy, family_state: str) -> DomainError:
    """The refusal of a 划拨 that was debited but that the account did not take (family_credit.lua GONE:
    the money went back): the account was dissolved meanwhile, or, where it still stands, the
    contributor left or was removed and may no longer 划拨 into it (as a 划拨 sent now is refused)."""
    if family_state != "ACTIVE":
        return structure_error("FAMILY_NOT_ACTIVE", policy)
    return errors.refused("NOT_A_CONTRIBUTOR", "the contributor is no longer a member of the family account: "
                          "the 划拨 was returned to their personal account")


def require_withdrawal(policy: Policy) -> None:
    require_pooled(policy)
    if not policy.contributor_withdrawal:
        raise errors.refused("WITHDRAWAL_NOT_ALLOWED", f"{policy.name} does not allow 回拨 of a contribution")


@dataclass(frozen=True)
class EndView:
    """What ending a place in a family account is judged on (`check_end`, `began_after`), as read: the
    account's state ('' : no such account), creator and creation time (unix ms), and the target's state
    in it ('' : none), the times its place began (`joined_at`, `invited_at`; '' : not kept) and unspent
    share. The target of a dissolution is '' (no one)."""

    state: str
    creator: str
    created_at: str
    target_state: str
    joined_at: str
    invited_at: str
    share: int


def check_end(policy: Policy, mode: str, view: EndView, actor: str, target: str) -> None:
    """离开 (LEAVE), 移除 (REMOVE), 解散 (DISSOLVE) and 回拨 (WITHDRAW) of `target`'s place, asked by
    `actor` ('' : the registry itself, for a life event): only the creator removes or dissolves, only in
    an ACTIVE account; the creator does not leave (they dissolve); a member leaves, a member or an open
    invitation is removed; a contributor takes back only an unspent share (SPEC §3b)."""
    code = ""
    if not view.state:
        code = "FAMILY_NOT_FOUND"
    elif mode in ("REMOVE", "DISSOLVE") and actor and actor != view.creator:
        code = "NOT_FAMILY_CREATOR"
    elif view.state != "ACTIVE":
        code = "FAMILY_NOT_ACTIVE"
    elif mode != "DISSOLVE":
        if target == view.creator and mode != "WITHDRAW":
            code = "CREATOR_CANNOT_LEAVE"
        elif not (view.target_state == "MEMBER" or (mode == "REMOVE" and view.target_state == "INVITED")):
            code = "NOT_A_MEMBER"
        elif mode == "WITHDRAW" and view.share <= 0:
            code = "NO_UNSPENT_SHARE"
    if code:
        raise structure_error(code, policy)


def began_after(mode: str, view: EndView, by: int) -> bool:
    """Whether the place a life event at `by` (unix ms; 0: no event) would end began after the event
    (SPEC §5b): an event finished late (a resend, the recovery loop), once the person was ACTIVE again or
    back in the 统筹区, leaves an account created since (DISSOLVE) or a place taken since (REMOVE: a
    MEMBER's `joined_at`, an INVITED's `invited_at`). A place that kept no time counts as taken before."""
    if by <= 0:
        return False
    if mode == "DISSOLVE":
        return _ms(view.created_at) > by
    joined = view.joined_at if view.target_state == "MEMBER" and view.joined_at not in ("", "0") else ""
    return mode == "REMOVE" and _ms(joined or view.invited_at) > by


def _ms(value: str) -> int:
    return int(value) if value.isdigit() else 0


STRUCTURE_MESSAGES = {
    "FAMILY_ACCOUNT_EXISTS": "this person already created a family account (one per creator)",
    "ALREADY_IN_ANOTHER_RELATION": "in this province a person may belong to only one family account at a time",
    "MEMBER_LIMIT_REACHED": "the family account already has the maximum number of members",
    "FAMILY_NOT_FOUND": "no such family account",
    "FAMILY_NOT_ACTIVE": "the family account was dissolved",
    "NOT_FAMILY_CREATOR": "only the creator of the family account may do this",
    "ALREADY_MEMBER": "the person is already a member of this family account",
    "ALREADY_INVITED": "the person already has an open invitation to this family account",
    "NO_INVITATION": "the person has no open invitation to this family account",
    "INVITATION_EXPIRED": "the invitation has expired; the creator may invite again",
    "NOT_A_MEMBER": "the person is not a member of this family account",
    "CREATOR_CANNOT_LEAVE": "the creator cannot leave the family account; dissolve it instead",
    "NO_UNSPENT_SHARE": "this contributor has no unspent share in the family account",
}


def structure_error(code: str, policy: Policy) -> DomainError:
    msg = STRUCTURE_MESSAGES[code]
    if code == "MEMBER_LIMIT_REACHED":
        msg += f" ({policy.max_members} in {policy.name}, the creator included)"
    if code in ("FAMILY_ACCOUNT_EXISTS", "ALREADY_MEMBER", "ALREADY_INVITED"):
        return errors.exists(code, msg)
    if code == "FAMILY_NOT_FOUND":
        return errors.not_found(code, msg)
    return errors.refused(code, msg)


def diagnose(policy: Policy, *, member: rules.PersonView | None, elsewhere: str, state: str, family_state: str,
             temporary: bool, family_balance: int, proxy_bound: bool, category: str,
             creator_region: str = "", family_id: str = "", paid_by: str = "") -> list[rules.Finding]:
    """Every reason a family account would not pay for `member` today (SPEC §3b diagnosis): `state` is
    the member's state in the account ('' when not in it, INVITED, EXPIRED or MEMBER), `family_state`
    the account's ('' when the helper has none: nothing to say of its balance), `creator_region` its
    creator's 统筹区 (the waterfall's rule: `rules.family_apart`). `family_id` is the account asked
    about, `paid_by` the one the waterfall pays the member's bills from (`family_reads.family_view`):
    a member of several accounts is paid for by that one alone."""
    out: list[rules.Finding] = []
    if elsewhere:
        out.append(rules.cross_province_finding(elsewhere))
    elif member is None or not member.active:
        out.append(rules.member_not_insured(member))
    if member is not None and not elsewhere and creator_region and \
            rules.regions_apart(policy, creator_region, member.region):
        out.append(rules.Finding("DIFFERENT_POOLING_REGION", "被共济人与家庭共济账户创建人不在同一统筹区,"
                                 "本省不支持跨统筹区共济 (原因四),本次费用不会由该家庭共济账户支付;"
                                 "可加入同一统筹区近亲属的家庭共济账户,或开通医保钱包接受近亲属划转"))
    if state == "":
        if proxy_bound:
            out.append(rules.Finding("PROXY_ONLY", "只有亲情账户 (代为出示医保码,由本人账户支付),"
                                     "不是家庭共济账户成员 (原因二),本次费用不会由家庭共济账户支付;"
                                     "请创建人邀请其加入家庭共济账户"))
        elif not family_state:
            out.append(rules.Finding("NOT_FAMILY_MEMBER", "共济人没有家庭共济账户(未创建或已解散),"
                                     "本次费用不会由家庭共济账户支付;请先创建家庭共济账户并邀请被共济人加入"))
        else:
            out.append(rules.Finding("NOT_FAMILY_MEMBER", "不是该家庭共济账户的成员,本次费用不会由该账户支付;"
                                     "请创建人先邀请,本人确认加入"))
    elif state == "INVITED":
        out.append(rules.Finding("INVITATION_NOT_ACCEPTED", "已被邀请但尚未确认加入,确认前本次费用不会由家庭共济账户"
                                 f"支付;请本人确认加入({policy.face_verification_age}周岁及以上须本人人脸识别)"))
    elif state == "EXPIRED":
        out.append(rules.Finding("INVITATION_EXPIRED", "邀请已过期,本次费用不会由家庭共济账户支付;请创建人重新邀请"))
    if family_state and family_state != "ACTIVE":
        out.append(rules.Finding("FAMILY_NOT_ACTIVE", "家庭共济账户已解散,本次费用不会由其支付;"
                                 "如需继续共济,请重新创建家庭共济账户并邀请成员"))
    elif family_state and family_balance <= 0:
        out.append(rules.Finding("FAMILY_ZERO_BALANCE",
                                 f"家庭共济账户余额为零 (原因三),本次费用不会由其支付;"
                                 f"请{contributors_zh(policy)}先向账户划拨"))
    if temporary and category != "RESIDENT_PREMIUM":
        out.append(rules.Finding("TEMPORARY_MEMBER", "临时成员只能用家庭共济账户缴纳本人城乡居民医保,"
                                 "本次费用不会由家庭共济账户支付;请用本人个人账户、医保钱包或现金支付"))
    # Only of an account that could pay but for the other: the waterfall passes over one that cannot
    # (empty, apart, a 临时成员's) for that reason, already said.
    if not out and state == "MEMBER" and paid_by and paid_by != family_id:
        out.append(rules.Finding("OTHER_FAMILY_FIRST", "被共济人同时是另一个家庭共济账户的成员,一笔费用只由一个"
                                 "家庭共济账户支付,本次由该账户支付,本账户不会被扣款;如需由本账户支付,"
                                 "可请被共济人退出正在支付的那个账户"))
    if (finding := rules.category_finding(policy, category)) is not None:
        out.append(finding)
    return out
