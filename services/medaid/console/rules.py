"""The console's own rules, free of gRPC and HTTP: how a person is shown, which form field a
refusal belongs to, what verification a binding needs at the member's age, what each diagnosis
reason means for the person at the counter, and amounts in yuan."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pydantic_core import PydanticCustomError

from medaid.common.clock import SHANGHAI, month_bounds
from medaid.common.idnumber import InvalidIdNumber, mask, mask_name, normalise_id_number, parse
from medaid.common.names_zh import CATEGORY_ZH as CATEGORY_ZH  # the one table of each
from medaid.common.names_zh import REGION_ZH as REGION_ZH
from medaid.common.names_zh import STATUS_ZH as STATUS_ZH
from medaid.common.names_zh import region_name as region_name
from medaid.gateway.amounts import yuan as yuan  # the one formatter; templates and pages use rules.yuan
from medaid.gateway.amounts import yuan_to_fen
from medaid.gateway.reasons import PERSON_WALLET_ZH, detail_zh, with_detail, zh
from medaid.registry.rules import MAX_AMOUNT_FEN

# SPEC §3: from this age a member binds only with identity verification (province knob, default 16).
FACE_VERIFICATION_AGE = 16

INSURANCE_TYPE_ZH = {"EMPLOYEE": "职工医保", "FLEXIBLE": "灵活就业", "RESIDENT": "城乡居民医保"}
RELATION_ZH = {
    "SPOUSE": "配偶", "PARENT": "父母", "CHILD": "子女", "SIBLING": "兄弟姐妹", "GRANDPARENT": "祖父母",
    "MATERNAL_GRANDPARENT": "外祖父母", "GRANDCHILD": "孙子女", "MATERNAL_GRANDCHILD": "外孙子女",
}
# A consumption record's settlement as it stands now (GetSettlements' state): IN_PROGRESS while its
# reversal, or the undoing of one, is being finished.
RECORD_STATE_ZH = {"SETTLED": "已结算", "REVERSED": "已撤销", "IN_PROGRESS": "处理中"}
TRANSFER_STATE_ZH = {
    "CREATED": "已创建", "PENDING_ACCEPT": "待接收", "COMPLETED": "已完成", "RETURNING": "退回中",
    "RETURNED": "已退回", "FAILED": "失败",
}
# The wallet's ledger entries (WalletEntry.kind): what each one did to the balance, in the desk's words.
WALLET_ENTRY_ZH = {
    "LOT_IN": "收到划转额度", "SPEND": "就医购药支付", "SPEND_REFUND": "支付退回", "PREMIUM": "缴纳居民医保",
    "LOT_RELEASE": "额度退回划转人", "XFER_OUT": "转赠给近亲属", "XFER_BACK": "转赠退回",
}


class AmountTooLarge(ValueError):
    """A well-formed amount over one operation's limit (the registries' MAX_AMOUNT_FEN, whose refusal
    a hospital meets too): told as over the limit, not as malformed, before anything is called."""

    # The refusal's metadata, as a service's AMOUNT_TOO_LARGE carries it: the message says the limit.
    metadata = {"limit_fen": str(MAX_AMOUNT_FEN)}


# A comma only as the thousands separator: '1,50' is a slip for 1.50 (or 150), never ¥150 unasked.
# Only the grouping of the yuan: the decimals are the gateway's rule's (`yuan_to_fen`), as without commas.
_GROUPED_YUAN = re.compile(r"^[0-9]{1,3}(,[0-9]{3})+(\.[0-9]+)?\Z")


# A Chinese IME in full-width mode types ASCII's full-width forms (U+FF01-FF5E: '１２.５０', 'Ｘ') and
# the ideographic space: the counter reads them as the ASCII the operator meant. No other digits
# (Arabic-Indic, …) are taken: the rules behind (ids, yuan) see ASCII only.
_HALF_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def typed(text: str) -> str:
    """What the operator typed, full-width forms read as ASCII, spaces around it dropped."""
    return text.translate(_HALF_WIDTH).strip()


def ascii_digits(text: str, length: int) -> bool:
    """`length` ASCII digits exactly (a year, an admdvs): str.isdigit() takes any script's digits
    (Arabic-Indic, superscripts), which the services behind do not read as numbers."""
    return len(text) == length and text.isascii() and text.isdigit()


def parse_yuan(text: str) -> int:
    """'128.5', '1,000.05' or '１２８.５' → fen, exactly, by the gateway's rule for yuan (exact to the
    fen: decimals past the second only as zeros; never negative), with or without thousands
    separators; ValueError for anything else (a comma anywhere but between groups of three digits
    too), or AmountTooLarge (a ValueError) for an amount no counter takes."""
    text = typed(text)
    if "," in text:
        if not _GROUPED_YUAN.match(text):
            raise ValueError(text)
        text = text.replace(",", "")
    try:
        fen = yuan_to_fen(text)
    except PydanticCustomError:
        raise ValueError(text) from None
    if fen > MAX_AMOUNT_FEN:
        raise AmountTooLarge(text)
    return fen


def check_id_number(text: str) -> str:
    """The normalised id number (typed in full-width or with a lower-case x too), or InvalidIdNumber:
    checked at the counter before any call."""
    value = normalise_id_number(typed(text))
    parse(value)
    return value


def valid_id_number(text: str) -> bool:
    try:
        check_id_number(text)
    except InvalidIdNumber:
        return False
    return True


def masked_id(id_number: str) -> str:
    return mask(id_number) if id_number else ""


def masked_name(name: str) -> str:
    return mask_name(name)


# Digits enough to be an id number or part of one (cut by a field's length, typed in groups).
_DIGIT_RUN = re.compile(r"[0-9]{6,}[Xx]?")


def logged_reason(why: str, names: Iterable[str]) -> str:
    """The operator's free-text reason for a reveal, as the log keeps it: read as typed (full-width
    digits as ASCII), an id number masked as everywhere (130102********123X), any other run of six or
    more digits (one cut, or typed in groups) masked whole, and each name in `names` (the people the
    page showed) masked, whole (王**) or its given name alone (**)."""
    text = _DIGIT_RUN.sub(lambda m: masked_id(m.group(0)) if len(m.group(0)) == 18 else "*" * len(m.group(0)),
                          why.translate(_HALF_WIDTH))
    for name in names:
        if name:
            text = text.replace(name, masked_name(name))
            if len(name) > 2:  # a given name of one character is too common a character to mask
                text = text.replace(name[1:], "*" * (len(name) - 1))
    return text


def age_on(id_number: str, day: dt.date) -> int:
    return parse(id_number).age_on(day)


@dataclass(frozen=True)
class VerificationNeed:
    """What a bind or an invitation needs at the member's age (SPEC §3): 16 and over, the member's
    own face verification (or a counter check with the signed 承诺书); under 16, a guardian acts."""

    age: int
    needs_verification: bool

    @property
    def label(self) -> str:
        if self.needs_verification:
            return f"被共济人{self.age}周岁,须本人人脸识别或在窗口核验身份并签署承诺书"
        return f"被共济人{self.age}周岁(未满{FACE_VERIFICATION_AGE}周岁),由监护人代为办理,无需人脸识别"


def verification_need(member_id: str, today: dt.date, threshold: int = FACE_VERIFICATION_AGE) -> VerificationNeed:
    age = age_on(member_id, today)
    return VerificationNeed(age, age >= threshold)


def shanghai_day(unix_ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(unix_ms / 1000, SHANGHAI).date()


def shanghai_time(unix_ms: int) -> str:
    if not unix_ms:
        return "-"
    return dt.datetime.fromtimestamp(unix_ms / 1000, SHANGHAI).strftime("%Y-%m-%d %H:%M")


# --- the same money business twice at the counter ------------------------------------------------

# A 划拨 or a wallet transfer the person had done minutes ago, sent again from another window (or a
# page opened anew): each page draws a request id of its own, so the services take it as a second
# business. Within this window the desk is asked to confirm that it is meant (the operator's check,
# never a lock: the services' limits are the rules).
REPEAT_WINDOW_MS = 10 * 60 * 1000
REPEAT_FIELD = "again"  # the form's box "确认再次办理"


def repeated_at(now_ms: int, done: Iterable[tuple[str, int]], request_id: str) -> int:
    """When the newest of `done` (each the id it was made under and when: the person's same business,
    same amount, same other party) was made, where that is within REPEAT_WINDOW_MS of `now_ms`; 0
    otherwise. The one made under `request_id` is this very form sent again (a second press, 再次提交):
    answered by its first outcome, it is no second business."""
    return max((at for ref, at in done if ref != request_id and at >= now_ms - REPEAT_WINDOW_MS), default=0)


def repeat_text(what: str, amount_fen: int, at_ms: int) -> str:
    """What the form says instead of doing `what` again (nothing was done), and what to do next."""
    return (f"本人已于 {shanghai_time(at_ms)} 办理过一笔相同的{what}({yuan(amount_fen)}),本次没有办理。"
            f"请先与本人核对是否重复办理;如确需再办理一笔,请勾选“确认再次办理”后再提交。")


def month_of(unix_ms: int) -> str:
    """'2026-11': the Beijing-time month a record falls in (the records page's filter)."""
    return dt.datetime.fromtimestamp(unix_ms / 1000, SHANGHAI).strftime("%Y-%m")


def valid_month(text: str) -> bool:
    """A month the records can be asked for, by the rule their window is made by (clock.month_bounds)."""
    try:
        month_bounds(text)
    except ValueError:
        return False
    return True


# --- refusals next to their fields ----------------------------------------------------------------

# A refusal's reason → the roles of the form fields it concerns, in order of preference; a form
# names its fields by role ("member" is the relative on the 亲情账户 form: see `field_for`).
REASON_FIELDS: dict[str, tuple[str, ...]] = {
    "VERIFICATION_REQUIRED": ("verification",), "FACE_VERIFICATION_REQUIRED": ("verification",),
    "INVALID_VERIFICATION": ("verification",), "COMMITMENT_REQUIRED": ("verification",),
    "UNKNOWN_VERIFICATION_METHOD": ("verification",),
    "HELPER_NOT_EMPLOYEE": ("helper",), "HELPER_NOT_ACTIVE": ("helper",), "HELPER_NOT_INSURED": ("helper",),
    "MEMBER_LIMIT_REACHED": ("helper",), "SENDER_NOT_EMPLOYEE": ("helper",), "SENDER_NOT_ACTIVE": ("helper",),
    "NOT_A_CONTRIBUTOR": ("member", "helper"), "NOT_FAMILY_CREATOR": ("helper",),
    "FAMILY_ACCOUNT_EXISTS": ("helper",), "PROXY_LIMIT_REACHED": ("helper",),
    "MEMBER_NOT_INSURED": ("member",), "CROSS_PROVINCE": ("member",), "SELF_BINDING": ("member",),
    "REVERSE_BINDING": ("member",), "ALREADY_BOUND": ("member",), "ALREADY_IN_ANOTHER_RELATION": ("member",),
    "DIFFERENT_POOLING_REGION": ("member",), "BINDING_NOT_FOUND": ("member",), "NOT_BOUND": ("member",),
    "PROXY_NOT_FOUND": ("member",), "ALREADY_MEMBER": ("member",), "ALREADY_INVITED": ("member",),
    "NO_INVITATION": ("member",), "INVITATION_EXPIRED": ("member",), "NOT_A_MEMBER": ("member",),
    "CREATOR_CANNOT_LEAVE": ("member",), "NO_UNSPENT_SHARE": ("member",), "PERSON_NOT_FOUND": ("member",),
    "PAYEE_NOT_RESIDENT": ("member",), "SELF_PAYMENT": ("member",), "NOT_NEAR_KIN": ("relation", "member"),
    "RELATION_NOT_ALLOWED": ("relation",), "UNKNOWN_RELATION": ("relation",),
    "INSUFFICIENT_BALANCE": ("amount",), "BELOW_MINIMUM_BALANCE": ("amount",), "MONTHLY_LIMIT_REACHED": ("amount",),
    "INVALID_AMOUNT": ("amount",), "AMOUNT_TOO_LARGE": ("amount",), "INSUFFICIENT_QUOTA": ("amount",),
    "AMOUNT_OVER_LIMIT": ("amount",), "RECIPIENT_NO_WALLET": ("member",), "RECIPIENT_NOT_INSURED": ("member",),
    "SELF_TRANSFER": ("member",),
    "INVALID_YEAR": ("year",), "OUTSIDE_PREMIUM_WINDOW": ("year",), "PREMIUM_ALREADY_PAID": ("year",),
    "PREMIUM_NOT_PAID": ("year",), "NOT_THE_PAYER": ("helper",), "PREMIUM_NOT_SET": ("year",),
    "UNKNOWN_SOURCE": ("source",), "INVALID_FAMILY_ID": ("source",),
    "USE_PLACE_OUTSIDE_PROVINCE": ("use_place",), "UNKNOWN_REGION": ("use_place",), "INVALID_ADMDVS": ("use_place",),
    "WALLET_NOT_LIVE": ("use_place",), "TRANSFER_NOT_FOUND": ("transfer",), "INVALID_TRANSFER_ID": ("transfer",),
    "INVALID_MONTH": ("month",),
}
# ErrorInfo's `field` metadata names the request field; its role on the console's forms.
_REQUEST_FIELD_ROLES = {
    "helper_id_number": "helper", "member_id_number": "member", "holder_id_number": "helper",
    "relative_id_number": "member", "creator_id_number": "helper", "contributor_id_number": "member",
    "payer_id_number": "helper", "payee_id_number": "member", "owner_id_number": "member",
    "member_verification": "verification", "relative_verification": "verification", "commitment": "verification",
    "verification": "verification", "relation": "relation", "amount_fen": "amount", "year": "year",
    "use_place_admdvs": "use_place", "transfer_id": "transfer", "id_number": "member",
}


def field_for(reason: str, metadata: Mapping[str, str], fields: Mapping[str, str]) -> str:
    """The form field (a key of `fields`, role → field name) a refusal is shown next to; "" when it
    concerns the form as a whole (shown above it)."""
    named = _REQUEST_FIELD_ROLES.get(metadata.get("field", ""))
    candidates = ((named,) if named else ()) + REASON_FIELDS.get(reason, ())
    for role in candidates:
        if role in fields:
            return fields[role]
    return ""


# The gateway's texts tell a hospital system how to resend its message (by msgid). The counter has
# no msgid: a form keeps its request id after a refusal that may be retried, and takes a new one
# after any other, so at the desk the same advice is to submit the form again.
_DESK_WORDS = (
    ("请稍后使用相同msgid重试", "请稍后再次提交(同一笔业务不会重复办理)"),
    ("请稍后使用相同请求号重试", "请稍后再次提交(同一笔业务不会重复办理)"),
    ("请使用相同msgid重试", "请再次提交(同一笔业务不会重复办理)"),
    ("报文ID(msgid)已用于另一笔不同内容的交易,本次未受理;请使用新的msgid",
     "该笔业务编号已用于内容不同的另一笔业务,本次未受理;请重新填写后提交"),
    ("请稍后以新的msgid重新查询", "请稍后刷新本页重新查询"),
    ("请待其完成后使用相同请求号重新撤销", "请稍后再次提交撤销(同一笔业务不会重复办理)"),
    ("请待撤销完成后使用相同请求号重新缴费", "请待撤销完成后再次提交缴费(同一笔业务不会重复办理)"),
    ("请以新的请求号重新发起", "请重新填写后提交"),
    # A form's request id is the page's own (hidden): one missing or malformed was not sent by the page.
    (zh("INVALID_REQUEST_ID"), "表单缺少业务编号或编号有误,本次没有办理;请刷新页面后重新办理"),
)


# Reasons whose gateway text speaks to a hospital system of its own message, in the desk's words
# whole. INVALID_AMOUNT names a bill's 结算金额 and the reconciliation totals and refunds that may be
# negative: an amount typed at the desk is money to move (a transfer, a 划拨, a 回拨), more than 0,
# whichever side caught it (the form, or a service).
_DESK_TEXTS = {
    "INVALID_AMOUNT": "金额错误:须为大于0的金额,以元为单位、最多两位小数(如 12.50);本次未受理,请更正后重新提交",
}


# The reason table speaks of 共济 (a helper, 共济人, paying for a member, 被共济人); a 代缴 refused
# for the same reason (SPEC §4b: the payer's account, the payee's insurance) names the payer and
# the payee instead. Longest first; 家庭共济账户 is a name and stays.
PREMIUM_WORDS = (
    ("本次未办理共济", "本次未代缴"), ("被共济人", "被代缴人"), ("共济人", "缴费人"), ("不能省内共济", "不能省内代缴"),
    ("跨统筹区共济", "跨统筹区代缴"), ("不能被共济", "不能被代缴"), ("不能共济", "不能代缴"),
)


def refusal_text(reason: str, fallback: str = "", metadata: Mapping[str, str] | None = None,
                 words: Sequence[tuple[str, str]] = ()) -> str:
    """The reason's Chinese message as the gateway gives it to hospitals (one table for both), in the
    desk's words where it tells how to resend, with the settings it names (a limit, an age) taken
    from the refusal's metadata; `words` name the flow's parties (`PREMIUM_WORDS`)."""
    text = _DESK_TEXTS.get(reason) or zh(reason)
    if text == zh("") and fallback:
        return fallback
    for hospital, desk in (*_DESK_WORDS, *words):
        text = text.replace(hospital, desk)
    return with_detail(text, detail_zh(reason, metadata))


def wallet_unknown_text(reason: str, fallback: str = "", metadata: Mapping[str, str] | None = None) -> str:
    """Why the person page shows the 医保钱包 as unknown: in the words a 1101 answer gives for an
    unknown wallet (the registry's part of the page stands), else the refusal's own message."""
    text = PERSON_WALLET_ZH.get(reason)
    if text is None:
        return refusal_text(reason, fallback, metadata)
    for hospital, desk in _DESK_WORDS:
        text = text.replace(hospital, desk)
    return text


# --- diagnosis in plain words (SPEC §4 "Diagnosis") -----------------------------------------------

@dataclass(frozen=True)
class Advice:
    title: str  # what is wrong, in words the person understands
    # What the person should do next; "" where only the registry knows (the finding's message says it).
    todo: str


ADVICE: dict[str, Advice] = {
    "MEMBER_NOT_INSURED": Advice("原因一:被共济人没有正常参保",
                                 "请被共济人先在参保地办理参保登记或补缴、恢复参保;恢复正常参保后即可使用家庭共济。"),
    "PROXY_ONLY": Advice("原因二:只开通了亲情账户,没有建立家庭共济关系",
                         "亲情账户只能代为出示医保码,花的仍是本人的钱。请共济人在本窗口或App办理“家庭共济”绑定。"),
    "HELPER_ZERO_BALANCE": Advice("原因三:共济人个人账户余额为零",
                                  "共济人账户里没有钱可以共济。请等下月个人账户划入后再使用,或请其他有余额的亲属绑定共济。"),
    "CROSS_PROVINCE": Advice("原因四:被共济人在外省参保",
                             "省内家庭共济不能跨省使用。请双方开通医保钱包,由共济人向被共济人的医保钱包划转。"),
    "DIFFERENT_POOLING_REGION": Advice("原因四:双方不在同一统筹区",
                                       "本省不支持跨统筹区共济。可改用医保钱包划转,或由同一统筹区的近亲属办理家庭共济。"),
    "NOT_BOUND": Advice("双方还没有家庭共济绑定", "请共济人本人(或监护人)在本窗口办理家庭共济绑定。"),
    "OTHER_HELPER_FIRST": Advice("另一位共济人优先支付",
                                 "结算时先由按本省规则排在前面的共济人支付(余额最大或备案在先),这位共济人本次不扣款;"
                                 "如需由这位共济人支付,可请排在前面的共济人解除绑定。"),
    "OTHER_FAMILY_FIRST": Advice("另一个家庭共济账户优先支付",
                                 "被共济人同时是几个家庭共济账户的成员,一笔费用只由其中一个账户支付;如需由这个账户支付,"
                                 "可请被共济人退出正在支付的那个账户。"),
    # Suspended, terminated or dead: what to do differs (resume contributions; for a death another
    # near-kin binds), and only the registry's finding, which read the helper's state, says which.
    "HELPER_NOT_ACTIVE": Advice("共济人不是正常参保状态", ""),
    "HELPER_NOT_EMPLOYEE": Advice("共济人没有职工医保个人账户",
                                  "城乡居民医保和灵活就业一档没有个人账户,不能做共济人;请由有职工医保的亲属办理。"),
    "HELPER_NOT_INSURED": Advice("共济人没有在本省参保", "请确认共济人的参保地;外省参保的亲属请使用医保钱包划转。"),
    "CATEGORY_NOT_PAYABLE": Advice("这类费用不能用个人账户支付", "该费用须由本人以现金或其他方式支付。"),
    "NOT_FAMILY_MEMBER": Advice("还不是家庭共济账户成员", "请家庭共济账户创建人先邀请,本人确认加入。"),
    "INVITATION_NOT_ACCEPTED": Advice("已被邀请但还没有确认加入",
                                      "达到本省规定年龄的须本人完成人脸识别确认邀请;可在本窗口办理。"),
    "INVITATION_EXPIRED": Advice("邀请已过期", "请创建人重新邀请。"),
    "FAMILY_NOT_ACTIVE": Advice("家庭共济账户已解散", "如需继续共济,请重新创建家庭共济账户。"),
    "FAMILY_ZERO_BALANCE": Advice("原因三:家庭共济账户余额为零", "请创建人(或可划拨的成员)先向家庭共济账户划拨。"),
    # The registry's finding names the use-place and the place of the bill, and what to do.
    "WALLET_OTHER_USE_PLACE": Advice("医保钱包的使用地不是本次就医地", ""),
    "TEMPORARY_MEMBER": Advice("临时成员只能缴纳本人城乡居民医保",
                               "其他费用家庭共济账户不支付,请用本人个人账户、医保钱包或现金支付。"),
}


_ASK_THE_DESK = "请按提示办理后再试;如有疑问请咨询窗口工作人员。"


def advice(code: str, message: str = "") -> Advice:
    """The plain-words explanation of a diagnosis finding; an unknown code keeps the registry's words,
    and so does what to do where the code alone does not tell it (an Advice without `todo`)."""
    found = ADVICE.get(code)
    if found is not None:
        return found if found.todo else Advice(found.title, message or _ASK_THE_DESK)
    return Advice(message or refusal_text(code), _ASK_THE_DESK)


def shares_by_sender(remaining: Mapping[str, int], lots: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """A wallet's unspent quota per sender, largest first; from the service's map, else summed from lots."""
    totals: dict[str, int] = dict(remaining)
    if not totals:
        for sender, fen in lots:
            totals[sender] = totals.get(sender, 0) + fen
    return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))


def pick_record(records: Sequence[tuple[str, str, str]]) -> int:
    """Of (province, status, moved_to_province) records of one person in several registries, the index
    of the one where they are insured now: ACTIVE first, then SUSPENDED, then one not moved away."""
    order = {"ACTIVE": 0, "SUSPENDED": 1}
    best = min(range(len(records)), key=lambda i: (order.get(records[i][1], 2), bool(records[i][2]), records[i][0]))
    return best
