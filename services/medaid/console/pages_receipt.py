"""Printed 回执 of what the desk did for a person: a 家庭共济 binding (or its ending), a 划拨, 回拨 or
份额退回 of a family account, a 代缴 (or its cancelling), a 医保钱包 transfer sent (and its return) or
accepted. The person takes it home as the proof of what
was done in their name; the hall keeps the log line it was printed under.

A receipt is drawn from the registry's record of the business, never from what a form said: it can be
printed again later (a lost sheet, a relative asking), and a link edited to name something that was not
done finds nothing. Id numbers and the person's name are masked on it; its 打印流水号 is the request id of
its own `console action` line (`receipt_binding`, `receipt_family`, `receipt_premium`,
`receipt_transfer`), and where the registry or the wallet keeps the business's request id (a 划拨's, a
代缴's, a transfer's: its transfer id) it is printed as the 业务流水号, the id of that business's own line.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from medaid.common.v1 import common_pb2 as cpb
from medaid.console import rules
from medaid.console.backend import Refusal
from medaid.console.pages_person import enum_short, person_of
from medaid.console.web import Console, http_request_id, relation_zh
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.wallet.v1 import wallet_pb2 as wpb

# The family-account events a person gets a receipt of: money that left or came back to their own
# personal account (the registry's FamilyEvent kinds), in the sheet's words.
FAMILY_RECEIPTS = {"TRANSFER_IN": "家庭共济账户划拨", "WITHDRAWN": "家庭共济账户回拨",
                   "RETURNED": "家庭共济账户份额退回"}
FAMILY_MOVES = {"TRANSFER_IN": "从本人个人账户划入家庭共济账户", "WITHDRAWN": "从家庭共济账户退回本人个人账户",
                "RETURNED": "未使用的划拨份额退回本人个人账户"}
PREMIUM_SOURCE_ZH = {"ACCOUNT": "个人账户", "FAMILY_ACCOUNT": "家庭共济账户", "WALLET": "医保钱包"}
# A 医保钱包 transfer's receipt, by the wallet's state of it: the sender's for each state money moved in
# (the business, and the state in the sheet's words), the recipient's once it is accepted. One that
# failed or is still being recorded moved nothing: it has no receipt. A return is not told why (not
# accepted in time, or the relationship ended): the wallet's record does not say.
TRANSFER_SENT = {"PENDING_ACCEPT": ("医保钱包划转",
                                    "待接收:已从本人{source}划出,须由接收人在{expires}前接收,逾期原路退回"),
                 "COMPLETED": ("医保钱包划转", "已接收:额度已计入接收人的医保钱包"),
                 "RETURNING": ("医保钱包划转退回", "退回中:未被接收,资金正原路退回本人"),
                 "RETURNED": ("医保钱包划转退回", "已退回:未被接收,资金已原路退回本人")}
# The business a receipt's link names is not in the registry's records of this person (a link edited,
# or one of another person's page): nothing is printed, and the page says where to look instead.
NOT_FOUND_TEXT = ("未找到该笔业务的办理记录,没有打印回执。请回到该人员的{page}页面核对业务是否已办理,"
                  "再从页面上该笔业务一行的“打印回执”打印")


def add_routes(app: web.Application, console: Console) -> None:
    def sheet(request: web.Request, action: str, title: str, loc: Any, back: str, facts: list[tuple[str, str]],
              business_id: str = "", **logged: str) -> web.Response:
        """The A4 receipt, logged as `action` under its 打印流水号 (this request's id)."""
        console.audit(request, action, "OK", id_number=loc.person.id_number, business_id=business_id, **logged)
        return console.render(request, "receipt.html", title=title, person=loc.person, region=loc.person.pooling_region,
                              facts=facts, business_id=business_id, back=back,
                              printed_at=rules.shanghai_time(console.clock.now_ms()), request_id=http_request_id())

    def not_found(request: web.Request, action: str, pid: str, page: str, **logged: str) -> web.HTTPNotFound:
        console.audit(request, action, "RECEIPT_NOT_FOUND", id_number=pid, **logged)
        return web.HTTPNotFound(text=NOT_FOUND_TEXT.format(page=page))

    def other(request: web.Request, key: str) -> str:
        """The other party a receipt's link names (an encrypted reference, as every link to a person)."""
        return console.unref(request.query.get(key, ""))

    async def binding_receipt(request: web.Request) -> web.Response:
        """The 家庭共济 binding between the page's person and `m`, whichever side the person is on: its
        state now (有效, or 已解除 and when), so that an unbinding gets its receipt as the binding did."""
        pid, loc = await person_of(console, request)
        other_id = other(request, "m")
        got = await console.backend.registry(console.operator(request).role, loc.province, "ListBindings",
                                             rpb.ListBindingsRequest(id_number=pid, include_ended=True))
        found = [b for b in [*got.as_helper, *got.as_member] if other_id in (b.helper_id_number, b.member_id_number)]
        if not found:
            raise not_found(request, "receipt_binding", pid, "“共济绑定”", other=other_id)
        b = max(found, key=lambda x: x.bound_at_unix_ms)  # bound again after an unbinding: the newest
        ended = not b.active
        facts = [("业务", "解除家庭共济绑定" if ended else "家庭共济绑定"),
                 ("共济人(出钱的一方)", rules.masked_id(b.helper_id_number)),
                 ("被共济人(用钱的一方)", rules.masked_id(b.member_id_number)),
                 ("被共济人是共济人的", relation_zh(b.relation)),
                 ("绑定时间", rules.shanghai_time(b.bound_at_unix_ms)),
                 ("状态", "已解除" if ended else "有效:被共济人就医购药时可使用共济人个人账户支付")]
        if ended:
            facts.append(("解除时间", rules.shanghai_time(b.ended_at_unix_ms)))
        return sheet(request, "receipt_binding", "家庭共济绑定回执", loc, f"/bindings?p={console.ref(pid)}", facts,
                     helper=b.helper_id_number, member=b.member_id_number)

    async def family_receipt(request: web.Request) -> web.Response:
        """One money event of the person's in family account `f`, named by its request id `e`."""
        pid, loc = await person_of(console, request)
        fid, ref = request.query.get("f", "")[:32], request.query.get("e", "")[:64]
        try:
            got = await console.backend.registry(console.operator(request).role, loc.province, "GetFamilyAccount",
                                                 fpb.GetFamilyAccountRequest(id_number=pid, family_id=fid))
        except Refusal as exc:
            if exc.reason not in ("FAMILY_NOT_FOUND", "INVALID_FAMILY_ID", "MODEL_NOT_POOLED", "NOT_A_MEMBER"):
                raise
            raise not_found(request, "receipt_family", pid, "“家庭共济账户”", family_id=fid) from None
        account = got.account
        events = [e for e in account.history if account.family_id == fid and e.ref == ref and e.id_number == pid
                  and e.kind in FAMILY_RECEIPTS] if ref else []
        if not events:
            raise not_found(request, "receipt_family", pid, "“家庭共济账户”", family_id=fid)
        e = events[0]
        facts = [("业务", FAMILY_RECEIPTS[e.kind]), ("家庭共济账户", account.family_id),
                 ("创建人", rules.masked_id(account.creator_id_number)), ("办理人", rules.masked_id(e.id_number)),
                 ("金额", f"{rules.yuan(e.amount_fen)}({FAMILY_MOVES[e.kind]})"),
                 ("办理时间", rules.shanghai_time(e.at_unix_ms))]
        return sheet(request, "receipt_family", FAMILY_RECEIPTS[e.kind] + "回执", loc,
                     f"/family?p={console.ref(pid)}&f={account.family_id}", facts, business_id=e.ref,
                     family_id=account.family_id)

    async def premium_receipt(request: web.Request) -> web.Response:
        """The 代缴 the page's person made for `payee` for `year`, in the registry the page listed it
        from (`province`: one the person left keeps theirs): paid, or cancelled and when."""
        pid, loc = await person_of(console, request)
        payee = other(request, "payee")
        year, province = request.query.get("year", "")[:4], request.query.get("province", "") or loc.province
        if province not in console.backend.provinces():
            raise not_found(request, "receipt_premium", pid, "“代缴居民医保”", payee=payee)
        got = await console.backend.registry(console.operator(request).role, province, "ListResidentPremiums",
                                             ppb.ListResidentPremiumsRequest(payer_id_number=pid))
        found = [x for x in got.premiums if x.payee_id_number == payee and x.year == year]
        if not found:
            raise not_found(request, "receipt_premium", pid, "“代缴居民医保”", payee=payee)
        x = max(found, key=lambda r: r.paid_at_unix_ms)
        cancelled = x.state == "CANCELLED"
        source = PREMIUM_SOURCE_ZH.get(enum_short(ppb.PremiumSource, "PREMIUM_SOURCE_", x.source), "-")
        facts = [("业务", "撤销代缴城乡居民医保" if cancelled else "代缴城乡居民医保"),
                 ("缴费人", rules.masked_id(x.payer_id_number)), ("被代缴人", rules.masked_id(x.payee_id_number)),
                 ("被代缴人是缴费人的", relation_zh(x.relation) if x.relation != cpb.RELATION_UNSPECIFIED else "本人"),
                 ("缴费年度", f"{x.year} 年度"), ("金额", rules.yuan(x.amount_fen)),
                 ("资金来源", source + (f"({x.family_id})" if x.family_id else "")),
                 ("缴费时间", rules.shanghai_time(x.paid_at_unix_ms)),
                 ("状态", "已撤销,资金已原路退回" if cancelled else "已缴费")]
        if cancelled:
            facts.append(("撤销时间", rules.shanghai_time(x.cancelled_at_unix_ms)))
        if province != loc.province:
            facts.append(("记录在", rules.region_name(province)))
        return sheet(request, "receipt_premium", "代缴城乡居民医保回执", loc, f"/premium?p={console.ref(pid)}", facts,
                     business_id=x.premium_id, payee=payee, year=x.year)

    async def transfer_receipt(request: web.Request) -> web.Response:
        """The 医保钱包 transfer `t` as the wallet records it now: sent by the page's person (待接收,
        已接收, or its return), or accepted by them. Its 业务流水号 is the transfer id on the sender's
        sheet (the wallet's transfer id is the request id it was sent under); the wallet keeps no
        request id of an acceptance, so the recipient's sheet names the transfer only."""
        pid, loc = await person_of(console, request)
        tid = request.query.get("t", "")[:64]
        try:
            t = (await console.backend.wallet(console.operator(request).role, "GetTransfer",
                                              wpb.GetTransferRequest(transfer_id=tid))).transfer if tid else None
        except Refusal as exc:
            if exc.reason not in ("TRANSFER_NOT_FOUND", "INVALID_REQUEST_ID"):
                raise
            t = None
        state = enum_short(wpb.TransferState, "TRANSFER_STATE_", t.state) if t is not None else ""
        if t is None or not ((t.sender_id_number == pid and state in TRANSFER_SENT)
                             or (t.recipient_id_number == pid and state == "COMPLETED")):
            raise not_found(request, "receipt_transfer", pid, "“医保钱包”", transfer_id=tid)
        sent = t.sender_id_number == pid
        source = "医保钱包(转赠额度)" if t.source == wpb.TRANSFER_SOURCE_WALLET else "个人账户"
        business, status = TRANSFER_SENT[state] if sent else ("接收医保钱包划转", "已接收:额度已计入本人医保钱包")
        facts = [("业务", business), ("划转号", t.transfer_id),
                 ("划转人", rules.masked_id(t.sender_id_number)), ("接收人", rules.masked_id(t.recipient_id_number)),
                 ("接收人是划转人的", relation_zh(t.relation)), ("金额", rules.yuan(t.amount_fen)),
                 ("划出", "划转人的" + source), ("发起时间", rules.shanghai_time(t.created_at_unix_ms)),
                 ("状态", status.format(source=source, expires=rules.shanghai_time(t.expires_at_unix_ms)))]
        if state == "COMPLETED":
            facts.append(("接收时间", rules.shanghai_time(t.finished_at_unix_ms)))
        elif state == "RETURNED":
            facts.append(("退回时间", rules.shanghai_time(t.finished_at_unix_ms)))
        return sheet(request, "receipt_transfer", ("医保钱包划转回执" if sent else "医保钱包划转接收回执"), loc,
                     f"/wallet?p={console.ref(pid)}", facts, business_id=t.transfer_id if sent else "",
                     transfer_id=t.transfer_id)

    app.router.add_get("/bindings/receipt", binding_receipt)
    app.router.add_get("/family/receipt", family_receipt)
    app.router.add_get("/premium/receipt", premium_receipt)
    app.router.add_get("/wallet/receipt", transfer_receipt)
