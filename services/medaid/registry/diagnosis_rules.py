"""Pure rules of diagnosis (SPEC §4): every reason 共济 would not work today. No Redis, no gRPC."""

from __future__ import annotations

from dataclasses import dataclass

from medaid.common.names_zh import CATEGORY_ZH, STATUS_ZH, province_name, region_name, yuan
from medaid.registry.binding_rules import PersonView, member_elsewhere, regions_apart
from medaid.registry.category_rules import category_payable
from medaid.registry.helper_rules import HelperCandidate, passed_over
from medaid.registry.policy import Policy


@dataclass(frozen=True)
class Finding:
    code: str
    message: str



def category_finding(policy: Policy, category: str) -> Finding | None:
    """Diagnosis (bind-and-deduct and pooled alike): the finding of a category not payable, if it is not
    ('' : no category asked about)."""
    if category and not category_payable(policy, category):
        return Finding("CATEGORY_NOT_PAYABLE", f"个人账户不能支付「{CATEGORY_ZH.get(category, category)}」类费用,"
                       "共济和医保钱包也不能支付,本次这类费用不会从任何账户扣款;请由本人以现金等其他方式支付")
    return None

def cross_province_finding(elsewhere: str) -> Finding:
    """原因四: the member is insured in province `elsewhere` (bind-and-deduct and pooled alike)."""
    return Finding("CROSS_PROVINCE", f"被共济人在{province_name(elsewhere)}参保,不能省内共济 (原因四),"
                   "本次费用不会由本省的共济支付;请双方开通医保钱包,由有职工医保个人账户的近亲属"
                   "向被共济人的医保钱包划转 (跨省共济)")


def member_not_insured(member: PersonView | None) -> Finding:
    """原因一: the member is not enrolled, or not ACTIVE (bind-and-deduct and pooled alike): no
    settlement is planned for them at all (a 2206/2207 is refused)."""
    if member is not None and member.status == "DECEASED":  # a bill after a death: nothing to restore
        return Finding("MEMBER_NOT_INSURED", "被共济人已死亡,不能再被共济 (原因一),本次不能用医保个人账户或共济结算;"
                       "请由家属以现金等方式结清本次费用")
    return Finding("MEMBER_NOT_INSURED", "被共济人未正常参保,不能被共济 (原因一),本次不能用医保个人账户"
                   "或共济结算;请被共济人在参保地办理参保登记或恢复正常参保,本次费用由本人以现金等方式支付")


def first_helper(policy: Policy) -> str:
    """Which helper a settlement draws on first (`helper_selection`), in the front desk's words."""
    return "余额最大" if policy.helper_selection == "LARGEST_BALANCE" else "备案在先"


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
        out.append(Finding("HELPER_NOT_INSURED", f"共济人未在{policy.name}参保登记,本次费用不会从其账户支付;"
                           "请核对共济人证件号码,外省参保的近亲属可开通医保钱包向被共济人划转"))
    else:
        if helper.status == "DECEASED":  # nothing to restore: the binding ended with the death (§5b)
            out.append(Finding("HELPER_NOT_ACTIVE", "共济人已死亡,不能再为他人共济,本次费用不会从其账户支付;"
                               "可由其他有职工医保的近亲属办理绑定"))
        elif helper.status == "TERMINATED" and helper.moved_to:  # moved province: bindings ended (§5b)
            out.append(Finding("HELPER_NOT_ACTIVE", f"共济人已转往{province_name(helper.moved_to)}参保,"
                               "不能再在本省为他人共济,本次费用不会从其账户支付;"
                               "可开通医保钱包,通过跨省共济向被共济人转账"))
        elif helper.status == "SUSPENDED":  # the binding stays (§3): it serves again once ACTIVE
            out.append(Finding("HELPER_NOT_ACTIVE", "共济人参保状态为「暂停参保」,暂停期间不能为他人共济,"
                               "本次费用不会从其账户支付;请共济人恢复正常参保,恢复后原有绑定继续有效"))
        elif not helper.active:  # TERMINATED: the bindings ended with it (§3)
            status = STATUS_ZH.get(helper.status, "非正常参保")
            out.append(Finding("HELPER_NOT_ACTIVE", f"共济人参保状态为「{status}」,不能为他人共济,"
                               "本次费用不会从其账户支付;请共济人恢复正常参保后重新办理绑定,"
                               "或由其他有职工医保的近亲属办理绑定"))
        if not helper.has_account:
            out.append(Finding("HELPER_NOT_EMPLOYEE", "共济人没有职工医保个人账户(城乡居民医保、灵活就业一档没有),"
                               "不能作为共济人,本次费用不会由其支付;请由有职工医保个人账户的近亲属办理绑定"))
    elsewhere = member_elsewhere(policy, member, member_insured_admdvs, directory_province)
    if elsewhere:
        out.append(cross_province_finding(elsewhere))
    elif member is None or not member.active:
        out.append(member_not_insured(member))
    if (
        helper is not None
        and member is not None
        and not elsewhere
        and regions_apart(policy, helper.region, member.region)
    ):
        out.append(Finding("DIFFERENT_POOLING_REGION", "共济人与被共济人不在同一统筹区,本省不支持跨统筹区共济 (原因四),"
                           "本次费用不会从共济人账户支付;可由同一统筹区的近亲属办理绑定,"
                           "或双方开通医保钱包,由共济人向被共济人的医保钱包划转"))
    if not mutual_aid_bound:
        if proxy_bound:
            out.append(
                Finding("PROXY_ONLY", "只绑定了亲情账户 (代为出示医保码,由本人账户支付),未建立家庭共济关系 (原因二),"
                        "本次费用不会从共济人账户支付;请共济人办理家庭共济绑定")
            )
        else:
            out.append(Finding("NOT_BOUND", "双方之间没有家庭共济绑定关系,本次费用不会从共济人账户支付;"
                               "请共济人先办理绑定"))
    if helper is not None and helper.has_account and helper.balance <= 0:
        out.append(Finding("HELPER_ZERO_BALANCE", "共济人个人账户余额为零 (原因三),本次费用不会从其账户支付,"
                           "由被共济人的其他共济人或个人现金支付;共济人账户有资金划入后即可共济"))
    if mutual_aid_bound and helper is not None and member is not None and \
            passed_over(policy, list(helpers), helper.id_number, member.region):
        out.append(Finding("OTHER_HELPER_FIRST", f"被共济人另有{first_helper(policy)}的共济人,结算时由其支付;"
                           "本省不从多个共济人账户凑钱,本共济人的账户不会被扣款"))
    if (finding := category_finding(policy, category)) is not None:
        out.append(finding)
    return out


@dataclass(frozen=True)
class Bill:
    """A bill's split as the settlement engine plans it (PreSettle's answer), and the part of its 共济
    that comes from the helper diagnosed (their account; in a pooled province, the family account
    diagnosed)."""

    amount: int
    acct_pay: int
    wallet_pay: int
    cash_pay: int
    helper_reason: str
    mulaid_here: int


def bill_would_pay(bill: Bill, findings: list[Finding]) -> bool:
    """Diagnose's `would_pay` with a bill: nothing stands in the way (`findings`) and a settlement of the
    bill would draw on this helper, or needs no 共济 at all (own account and wallet pay it whole)."""
    rest = bill.amount - bill.acct_pay - bill.wallet_pay
    return not findings and (rest <= 0 or bill.mulaid_here > 0)


# Findings that say how much this helper (this family account) has, or that another pays first: the
# bill's finding tells the rest of that story. Any other finding means the waterfall cannot draw on
# this helper at all (not bound, not ACTIVE, not a member, apart, ...), and already says why.
_BILL_EXPLAINS = frozenset({"HELPER_ZERO_BALANCE", "FAMILY_ZERO_BALANCE", "OTHER_HELPER_FIRST", "OTHER_FAMILY_FIRST"})


def bill_finding(policy: Policy, bill: Bill, helper_balance: int,
                 findings: list[Finding] | tuple[Finding, ...] = ()) -> Finding | None:
    """Why the helper's 共济 pays no more of `bill` than it does (SPEC §4: the waterfall's reason,
    `Bill.helper_reason`, in the front desk's words, with the split), None when it pays all that own
    account and wallet leave, or when `findings` (Diagnose's, without the bill) already say why the
    waterfall cannot draw on this helper: its reason is then another helper's, or none.
    `helper_balance`: the helper's balance (in a pooled province, the family account's). The split
    names the bill's whole 共济 (every helper charged, or the family account), and
    this helper's part beside it where others paid too, so that it adds up to the bill."""
    rest = bill.amount - bill.acct_pay - bill.wallet_pay
    if rest <= 0 or bill.mulaid_here >= rest or any(f.code not in _BILL_EXPLAINS for f in findings):
        return None
    mulaid = rest - bill.cash_pay  # the bill's whole 共济
    others = mulaid - bill.mulaid_here  # what other helpers (another family account) pay of it
    this = "本家庭共济账户" if policy.pooled else "本共济人"
    part = f"(其中{this}支付{yuan(bill.mulaid_here)})" if others else ""
    split = (f"本次个人负担{yuan(bill.amount)}:个人账户支付{yuan(bill.acct_pay)},医保钱包支付{yuan(bill.wallet_pay)},"
             f"共济支付{yuan(mulaid)}{part},个人现金支付{yuan(bill.cash_pay)}。")
    if bill.cash_pay <= 0:  # 共济 pays all that own account and wallet leave: others pay what this one does not
        # pooled: the findings name the family account that pays. An empty account is passed over
        # whatever the order (原因三, said already): the one who pays may be filed after it.
        if bill.mulaid_here or policy.pooled or helper_balance <= 0:
            return None
        return Finding("OTHER_HELPER_FIRST", split + f"余下的{yuan(rest)}由{first_helper(policy)}的共济人支付,"
                       "本共济人的账户不扣款")
    code = bill.helper_reason or "HELPER_INSUFFICIENT"
    if code == "FAMILY_INSUFFICIENT" and not bill.mulaid_here and others:
        why = (f"共济支付的{yuan(others)}来自被共济人所在的另一个家庭共济账户,本家庭共济账户不扣款,"
               f"其余{yuan(bill.cash_pay)}由个人现金支付")
    elif code == "FAMILY_INSUFFICIENT":
        why = f"家庭共济账户余额{yuan(helper_balance)}不足以支付余下的{yuan(rest)},只支付其余额,其余由个人现金支付"
    elif code == "HELPER_INSUFFICIENT" and bill.mulaid_here > 0:
        also = f",其他共济人支付{yuan(others)}" if others else ""
        why = (f"共济人个人账户余额不足以支付余下的{yuan(rest)},只支付{yuan(bill.mulaid_here)}{also},"
               f"其余{yuan(bill.cash_pay)}由个人现金支付")
    elif code == "HELPER_INSUFFICIENT" and others:  # helpers in turn (北京): the others paid what they could
        why = (f"本共济人个人账户余额{yuan(helper_balance)},本次不扣款;其他共济人共支付{yuan(others)},"
               f"其余{yuan(bill.cash_pay)}由个人现金支付")
    elif code == "HELPER_INSUFFICIENT" and not (policy.helper_partial or policy.helpers_in_turn):
        why = (f"共济人个人账户余额{yuan(helper_balance)}不足以支付余下的{yuan(rest)};本省不从多个共济人账户凑钱,"
               "共济人账户不扣款")
    elif code == "HELPER_INSUFFICIENT":
        why = f"共济人个人账户余额{yuan(helper_balance)}不足以支付余下的{yuan(rest)}"
    else:
        why = "共济不支付余下的金额,原因见本项代码"
    return Finding(code, split + why)


def wallet_finding(wallet_reason: str, use_place: str, place: str) -> Finding | None:
    """Why the member's own wallet pays nothing of a bill at `place` although it is open (SPEC §5):
    its use-place `use_place` is another 统筹区 (a move does not change it; the owner does, at once)."""
    if wallet_reason != "WALLET_OTHER_USE_PLACE":
        return None
    return Finding("WALLET_OTHER_USE_PLACE",
                   f"被共济人的医保钱包使用地为{region_name(use_place)},本次就医地为{region_name(place)},"
                   "医保钱包只能在使用地支付,本次未支付;如钱包有余额,可由本人(或代开通的近亲属)"
                   "在医保App办理使用地变更,变更后即时生效")
