"""The pooled family account (家庭共济账户, SPEC §3b, 甘肃 and 福建): members and invitations, 划拨,
回拨, leaving, removal, dissolution and each contributor's share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from medaid.common import validate
from medaid.common.v1 import common_pb2 as cpb
from medaid.console import rules
from medaid.console.backend import Refusal
from medaid.console.pages_person import enum_short, person_of, person_view, relation_of
from medaid.console.pages_receipt import FAMILY_RECEIPTS
from medaid.console.web import Console, Form, id_field, read_form, run_action
from medaid.registry.v1 import family_pb2 as fpb

# Per form, the fields it shows (role → field name): a refusal about anything else is shown above
# that form, never next to a field the form does not have (where nobody would see it).
FIELDS: dict[str, dict[str, str]] = {
    "create": {"verification": "verification", "amount": "amount"},
    "invite": {"member": "member", "relation": "relation"},
    "respond": {"member": "member", "verification": "attestation"},
    "transfer": {"member": "member", "amount": "amount"},
    "withdraw": {"member": "member"}, "leave": {"member": "member"}, "remove": {"member": "member"},
    "dissolve": {},
}
STATE_ZH = {"INVITED": "待确认", "MEMBER": "成员", "DECLINED": "已拒绝", "EXPIRED": "邀请已过期", "ENDED": "已退出"}
EVENT_ZH = {"CREATED": "创建", "INVITED": "邀请", "JOINED": "加入", "DECLINED": "拒绝", "TRANSFER_IN": "划拨",
            "WITHDRAWN": "回拨", "RETURNED": "份额退回", "LEFT": "退出", "REMOVED": "移出", "DISSOLVED": "解散",
            "SPENT": "支付", "REVERSED": "撤销支付"}
ACTIONS = tuple(FIELDS)
# A family form whose family id is none (a hand-made POST: the page sends the account's own): refused
# before anything is called or the id is logged, as the registries would refuse it (INVALID_FAMILY_ID).
FAMILY_ID_INVALID_TEXT = ("家庭共济账户编号格式错误(应为3-32位字母或数字),本次没有办理(没有写入任何内容),"
                          "请回到家庭共济账户页面重新办理")


def add_routes(app: web.Application, console: Console) -> None:
    async def family_page(request: web.Request, form: Form | None = None, status: int = 200,
                          chosen: str = "") -> web.Response:
        """The person's family account `chosen` (a form's, else the link's `f`), or the registry's
        default for them: in 福建 a person may belong to several, each reached by a link on the page."""
        pid, loc = await person_of(console, request)
        role = console.operator(request).role
        chosen = chosen or request.query.get("f", "")

        async def get(fid: str) -> Any:
            return await console.backend.registry(role, loc.province, "GetFamilyAccount",
                                                  fpb.GetFamilyAccountRequest(id_number=pid, family_id=fid))

        got: Any = None
        try:
            if chosen:
                try:
                    got = await get(chosen)
                except Refusal as exc:
                    if exc.reason not in ("FAMILY_NOT_FOUND", "INVALID_FAMILY_ID"):
                        raise
                # Only an account of this person's (one they left, or a link edited: their default).
                if got is not None and chosen not in {m.family_id for m in got.memberships}:
                    got = None
            if got is None:
                got = await get("")
        except Refusal as exc:
            if exc.reason not in ("FAMILY_NOT_FOUND", "MODEL_NOT_POOLED"):
                raise
            pooled = exc.reason != "MODEL_NOT_POOLED"
        else:
            pooled = True
        account = got.account if got is not None else None
        memberships = list(got.memberships) if got is not None else []
        forms = {name: Form(name) for name in ACTIONS}
        if form is not None:
            forms[form.name] = form
        mine = [m.state for m in account.members if m.id_number == pid] if account else []
        return console.render(
            request, "family.html", status=status, p=person_view(loc), ref=console.ref(pid), account=account,
            pooled=pooled, forms=forms, memberships=memberships,
            creator=bool(account and account.creator_id_number == pid),
            invited=fpb.MEMBERSHIP_STATE_INVITED in mine, member=fpb.MEMBERSHIP_STATE_MEMBER in mine,
            member_state=lambda v: STATE_ZH.get(enum_short(fpb.MembershipState, "MEMBERSHIP_STATE_", v), "-"),
            event=lambda kind: EVENT_ZH.get(kind, kind), receipt_kinds=FAMILY_RECEIPTS)

    async def family(request: web.Request) -> web.Response:
        return await family_page(request)

    async def act(request: web.Request) -> web.Response:
        name = request.match_info["action"]
        if name not in ACTIONS:
            raise web.HTTPNotFound()
        pid, loc = await person_of(console, request)
        form = await read_form(request, name)
        role = console.operator(request).role
        # Create makes the account: a family id posted with it is not used, nor logged.
        family_id = form.v("family_id") if name != "create" else ""
        rid = form.request_id
        if name != "create" and not validate.family_id_well_formed(family_id):
            console.audit(request, name, "INVALID_FAMILY_ID", rid, creator=pid)
            raise web.HTTPBadRequest(text=FAMILY_ID_INVALID_TEXT)

        def registry(method: str, req: Any) -> Awaitable[Any]:
            return console.backend.registry(role, loc.province, method, req)

        call: Callable[[], Awaitable[str]]
        # Confirming, 划拨, 回拨 and leaving are the person's own acts: the one at the desk, whose page
        # this is, never another member chosen on it. Invite, remove and dissolve are the creator's.
        who = pid
        if name == "create":
            attestation = form.v("attestation").strip()
            if not attestation or len(attestation) > 64:
                form.errors["verification"] = "请填写已签署的家庭共济承诺书编号(1-64位)"
            initial = parse_amount(form, required=False)

            async def call() -> str:
                r = await registry("CreateFamilyAccount", fpb.CreateFamilyAccountRequest(
                    request_id=rid, creator_id_number=pid, initial_transfer_fen=initial,
                    commitment=cpb.Verification(method=cpb.VERIFICATION_METHOD_COUNTER, attestation_id=attestation)))
                return f"已创建家庭共济账户 {r.account.family_id}"
        elif name == "invite":
            who = id_field(form, "member")  # typed: the person is not a member yet
            rel = relation_of(form)

            async def call() -> str:
                await registry("InviteMember", fpb.InviteMemberRequest(
                    request_id=rid, family_id=family_id, creator_id_number=pid, member_id_number=who,
                    relation=rel, temporary=form.v("temporary") == "1"))  # type: ignore[arg-type]
                return f"已邀请 {rules.masked_id(who)},待本人确认"
        elif name == "respond":
            accept = form.v("answer") == "accept"
            att = form.v("attestation").strip()

            async def call() -> str:
                req = fpb.RespondToInvitationRequest(request_id=rid, family_id=family_id, member_id_number=who,
                                                     accept=accept)
                if att:
                    req.verification.CopyFrom(cpb.Verification(method=cpb.VERIFICATION_METHOD_FACE,
                                                               attestation_id=att))
                await registry("RespondToInvitation", req)
                return f"{rules.masked_id(who)} 已{'确认加入' if accept else '拒绝邀请'}"
        elif name == "transfer":
            amount = parse_amount(form, required=True)
            if not form.errors and form.v(rules.REPEAT_FIELD) != "1":
                await ask_if_repeated(request, form, loc.province, pid, family_id, amount)

            async def call() -> str:
                r = await registry("TransferIntoFamilyAccount", fpb.TransferIntoFamilyAccountRequest(
                    request_id=rid, family_id=family_id, contributor_id_number=who, amount_fen=amount))
                return f"已划拨 {rules.yuan(amount)};划拨人个人账户余额 {rules.yuan(r.balance_after_fen)}"
        elif name == "withdraw":

            async def call() -> str:
                r = await registry("WithdrawContribution", fpb.WithdrawContributionRequest(
                    request_id=rid, family_id=family_id, contributor_id_number=who))
                return f"已回拨 {rules.yuan(r.returned_fen)} 到 {rules.masked_id(who)} 的个人账户"
        elif name == "leave":

            async def call() -> str:
                r = await registry("LeaveFamilyAccount", fpb.LeaveFamilyAccountRequest(
                    request_id=rid, family_id=family_id, member_id_number=who))
                return f"{rules.masked_id(who)} 已退出,未使用的划拨 {rules.yuan(r.returned_fen)} 已退回"
        elif name == "remove":
            who = console.ref_field(form, "member_ref", "member")  # chosen from the members listed

            async def call() -> str:
                r = await registry("RemoveMember", fpb.RemoveMemberRequest(
                    request_id=rid, family_id=family_id, creator_id_number=pid, member_id_number=who))
                return f"已移出 {rules.masked_id(who)},未使用的划拨 {rules.yuan(r.returned_fen)} 已退回"
        else:
            if form.v("confirm") != "1":
                form.errors["confirm"] = "未勾选确认,本次没有解散;请勾选确认后重新提交"

            async def call() -> str:
                r = await registry("DissolveFamilyAccount", fpb.DissolveFamilyAccountRequest(
                    request_id=rid, family_id=family_id, creator_id_number=pid))
                back = sum(s.share_fen for s in r.returned)
                return f"家庭共济账户已解散,共退回 {rules.yuan(back)} 到各划拨人的个人账户"

        ok = await run_action(console, request, form, FIELDS[name], call, family_id=family_id, creator=pid, member=who)
        return await family_page(request, form, status=200 if ok else 422, chosen=family_id)

    async def ask_if_repeated(request: web.Request, form: Form, province: str, pid: str, family_id: str,
                              amount: int) -> None:
        """The same 划拨 by this person into this account minutes ago (rules.repeated_at): the form asks
        to confirm instead of doing it. An account that cannot be read is left to the 划拨's own answer."""
        try:
            got = await console.backend.registry(console.operator(request).role, province, "GetFamilyAccount",
                                                 fpb.GetFamilyAccountRequest(id_number=pid, family_id=family_id))
        except Refusal:
            return
        history = got.account.history if got.account.family_id == family_id else []
        at = rules.repeated_at(console.clock.now_ms(),
                               [(e.ref, e.at_unix_ms) for e in history
                                if e.kind == "TRANSFER_IN" and e.id_number == pid and e.amount_fen == amount],
                               form.request_id)
        if at:
            form.errors[rules.REPEAT_FIELD] = rules.repeat_text("划拨", amount, at)

    app.router.add_get("/family", family)
    app.router.add_post("/family/{action}", act)


def parse_amount(form: Form, *, required: bool) -> int:
    text = form.v("amount").strip()
    if not text and not required:
        return 0
    try:
        fen = rules.parse_yuan(text)
    except rules.AmountTooLarge as exc:
        form.errors["amount"] = rules.refusal_text("AMOUNT_TOO_LARGE", metadata=exc.metadata)
        return 0
    except ValueError:
        fen = 0
    if fen <= 0:
        form.errors["amount"] = rules.refusal_text("INVALID_AMOUNT")
    return fen
