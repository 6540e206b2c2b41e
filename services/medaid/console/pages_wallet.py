"""The 医保钱包 page (SPEC §5: lots by sender, transfers and their state, use-place) and 代缴 of a
near-kin's 城乡居民医保 premium (SPEC §4b)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from medaid.console import rules
from medaid.console.backend import Refusal
from medaid.console.pages_family import parse_amount
from medaid.console.pages_person import (
    TRANSFER_METHODS,
    enum_short,
    person_of,
    person_view,
    relation_of,
    verification_of,
)
from medaid.console.pages_receipt import TRANSFER_SENT
from medaid.console.web import Console, Form, id_field, read_form, run_action
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.wallet.v1 import wallet_pb2 as wpb

MAX_TRANSFERS = 20  # the sender's recent transfers a 发起划转 is compared with (`ask_if_repeated`)
# 钱包流水 and 划转记录 a page lists: the newest, then, through 更早的记录, the ones before, a page at
# a time to the first (the wallet's listings page: `e` carries the entries' page token, `ti` and `to`
# those of the transfers to and from the person, DONE where one is listed to its first).
ENTRIES_SHOWN = 100
TRANSFERS_SHOWN = 20
DONE = "-"
PAGE_INVALID_TEXT = "翻页链接无效(可能被改动或不完整),以下从最新的记录重新列出"
PREMIUM_SOURCES = {"account": ppb.PREMIUM_SOURCE_ACCOUNT, "family": ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT,
                   "wallet": ppb.PREMIUM_SOURCE_WALLET}
SOURCE_ZH = {"ACCOUNT": "个人账户", "FAMILY_ACCOUNT": "家庭共济账户", "WALLET": "医保钱包"}
PREMIUM_FIELDS = {"member": "payee", "relation": "relation", "year": "year", "source": "source"}
NO_FAMILY_ACCOUNT_TEXT = "缴费人不是任何家庭共济账户的成员,不能从家庭共济账户代缴;请选择其他资金来源"
TRANSFER_FIELDS = {"member": "recipient", "relation": "relation", "amount": "amount",
                   "verification": "verification"}
OPEN_FIELDS = {"use_place": "use_place", "verification": "verification", "member": "opened_by",
               "relation": "opened_by_relation"}


@dataclass
class Lists:
    """What the 医保钱包 page lists of a wallet, and the places its next pages start at."""
    entries: list[Any] = field(default_factory=list)
    next_entries: str = ""
    transfers: list[Any] = field(default_factory=list)
    next_in: str = DONE
    next_out: str = DONE
    pending: list[Any] = field(default_factory=list)


def add_routes(app: web.Application, console: Console) -> None:
    async def wallet_page(request: web.Request, form: Form | None = None, status: int = 200,
                          accept_form: Form | None = None, open_form: Form | None = None,
                          transfer_form: Form | None = None, end_form: Form | None = None) -> web.Response:
        pid, loc = await person_of(console, request)
        role = console.operator(request).role
        wallet: Any = None
        lists = Lists()
        after = {k: request.query.get(k, "")[:300] for k in ("e", "ti", "to")}  # a token is under 256
        page_invalid = False
        try:
            wallet = await console.backend.wallet(role, "GetWallet", wpb.GetWalletRequest(owner_id_number=pid))
            try:
                lists = await listed(role, pid, after)
            except Refusal as exc:
                if exc.reason != "INVALID_PAGE_TOKEN":
                    raise
                # A link edited or cut short, or one of another person's page: the newest, said so.
                console.audit(request, "wallet", "INPUT_INVALID", id_number=pid)
                page_invalid, after = True, {"e": "", "ti": "", "to": ""}
                lists = await listed(role, pid, after)
        except Refusal as exc:
            if exc.reason not in ("WALLET_NOT_FOUND", "WALLET_NOT_OPENED"):
                raise
        senders = rules.shares_by_sender(dict(wallet.remaining_by_sender_fen) if wallet else {},
                                         [(lot.sender_id_number, lot.remaining_fen) for lot in wallet.lots]
                                         if wallet else [])
        if not page_invalid:
            console.audit(request, "wallet", "OK", id_number=pid)
        more = lists.next_in != DONE or lists.next_out != DONE
        return console.render(request, "wallet.html", status=400 if page_invalid else status, p=person_view(loc),
                              ref=console.ref(pid), wallet=wallet, entries=lists.entries, transfers=lists.transfers,
                              senders=senders, me=pid, page_invalid=PAGE_INVALID_TEXT if page_invalid else "",
                              entries_later=bool(after["e"]), entries_next=lists.next_entries,
                              transfers_later=bool(after["ti"] or after["to"]),
                              transfers_next=(lists.next_in, lists.next_out) if more else None,
                              pending=lists.pending, accept_form=accept_form or Form("accept"),
                              open_form=open_form or Form("open_wallet", {"use_place": loc.person.pooling_region}),
                              transfer_form=transfer_form or Form("transfer"),
                              end_form=end_form or Form("end_relationship"),
                              can_send=loc.person.has_personal_account,
                              form=form or Form("use_place"),
                              state=lambda v: rules.TRANSFER_STATE_ZH.get(
                                  enum_short(wpb.TransferState, "TRANSFER_STATE_", v), "-"),
                              receipt_sent=lambda v: enum_short(wpb.TransferState, "TRANSFER_STATE_", v)
                              in TRANSFER_SENT)

    async def listed(role: str, pid: str, after: dict[str, str]) -> Lists:
        """The page of 钱包流水 after the place `after["e"]` and of 划转记录 after `after["ti"]` (to the
        person) and `after["to"]` (from them); the pending transfers to them, the newest on any page."""
        entries = await console.backend.wallet(role, "ListWalletEntries", wpb.ListWalletEntriesRequest(
            owner_id_number=pid, page_size=ENTRIES_SHOWN, page_token=after["e"]))
        transfers, next_in, next_out, first_in = await transfers_after(role, pid, after["ti"], after["to"])
        if after["ti"] or after["to"] or first_in is None:
            first_in = await console.backend.wallet(role, "ListIncomingTransfers", wpb.ListIncomingTransfersRequest(
                recipient_id_number=pid, page_size=TRANSFERS_SHOWN))
        return Lists(list(entries.entries), entries.next_page_token, transfers, next_in, next_out,
                     [t for t in first_in.transfers if t.state == wpb.TRANSFER_STATE_PENDING_ACCEPT])

    async def transfers_after(role: str, pid: str, tin: str, tout: str) -> tuple[list[Any], str, str, Any]:
        """The next TRANSFERS_SHOWN of the person's transfers, to and from them together, newest first
        in the wallet's order, after the places `tin` and `tout` (page tokens of the two listings);
        and the tokens of the page after, and the incoming listing's answer. A listing whose page was
        only partly shown is asked again for as many as were shown, for the token after the last of
        them (the wallet's tokens are places, not counts)."""
        async def page(listing: str, token: str, size: int) -> Any:
            if listing == "in":
                return await console.backend.wallet(role, "ListIncomingTransfers", wpb.ListIncomingTransfersRequest(
                    recipient_id_number=pid, page_size=size, page_token=token))
            return await console.backend.wallet(role, "ListOutgoingTransfers", wpb.ListOutgoingTransfersRequest(
                sender_id_number=pid, page_size=size, page_token=token))

        got = {k: await page(k, tok, TRANSFERS_SHOWN) if tok != DONE else None
               for k, tok in (("in", tin), ("out", tout))}
        rows = sorted({t.transfer_id: t for r in got.values() if r for t in r.transfers}.values(),
                      key=lambda t: (t.created_at_unix_ms, t.transfer_id), reverse=True)[:TRANSFERS_SHOWN]
        shown = {t.transfer_id for t in rows}
        after: dict[str, str] = {}
        for k, tok in (("in", tin), ("out", tout)):
            r = got[k]
            used = sum(1 for t in r.transfers if t.transfer_id in shown) if r else 0
            if r is None:
                after[k] = DONE
            elif used == len(r.transfers):
                after[k] = r.next_page_token or DONE
            elif used == 0:
                after[k] = tok
            else:
                after[k] = (await page(k, tok, used)).next_page_token or DONE
        return rows, after["in"], after["out"], got["in"]

    async def wallet(request: web.Request) -> web.Response:
        return await wallet_page(request)

    async def use_place(request: web.Request) -> web.Response:
        pid, _ = await person_of(console, request)
        form = await read_form(request, "use_place")
        place = rules.typed(form.v("use_place"))
        if not rules.ascii_digits(place, 6):
            form.errors["use_place"] = rules.refusal_text("INVALID_ADMDVS")

        async def call() -> str:
            r = await console.backend.wallet(console.operator(request).role, "ChangeUsePlace",
                                             wpb.ChangeUsePlaceRequest(request_id=form.request_id,
                                                                       owner_id_number=pid, use_place_admdvs=place))
            return f"使用地已变更为 {rules.region_name(r.wallet.use_place_admdvs)},立即生效"

        ok = await run_action(console, request, form, {"use_place": "use_place"}, call, id_number=pid)
        return await wallet_page(request, form, status=200 if ok else 422)

    async def open_wallet(request: web.Request) -> web.Response:
        """开通医保钱包 for the person at the desk (real-name verified there), or by a near-kin on their
        behalf (SPEC §5)."""
        pid, loc = await person_of(console, request)
        form = await read_form(request, "open_wallet")
        place = rules.typed(form.v("use_place"))
        if not rules.ascii_digits(place, 6):
            form.errors["use_place"] = rules.refusal_text("INVALID_ADMDVS")
        req = wpb.OpenWalletRequest(request_id=form.request_id, owner_id_number=pid, province=loc.province,
                                    use_place_admdvs=place)
        real_name = verification_of(form, guardian=False)
        if real_name is not None:
            req.real_name.CopyFrom(real_name)
        opener = id_field(form, "opened_by", required=False)
        if opener:
            req.opened_by_id_number = opener
            req.opened_by_relation = relation_of(form, "opened_by_relation")  # type: ignore[assignment]

        async def call() -> str:
            r = await console.backend.wallet(console.operator(request).role, "OpenWallet", req)
            by = f",由近亲属 {rules.masked_id(opener)} 代为开通" if opener else ""
            return f"已开通医保钱包,使用地 {rules.region_name(r.wallet.use_place_admdvs)}{by}"

        ok = await run_action(console, request, form, OPEN_FIELDS, call, id_number=pid, opened_by=opener,
                              method=form.v("method"))
        return await wallet_page(request, open_form=form, status=200 if ok else 422)

    async def send(request: web.Request) -> web.Response:
        """发起划转 for a sender at the desk (verified there): from their personal account, or passing
        wallet quota on, to a near-kin's wallet; the recipient accepts it (SPEC §5)."""
        pid, loc = await person_of(console, request)
        form = await read_form(request, "transfer")
        recipient = id_field(form, "recipient")
        relation = relation_of(form)
        amount = parse_amount(form, required=True)
        source = wpb.TRANSFER_SOURCE_WALLET if form.v("source") == "wallet" else wpb.TRANSFER_SOURCE_PERSONAL_ACCOUNT
        req = wpb.CreateTransferRequest(request_id=form.request_id, sender_id_number=pid,
                                        sender_province=loc.province, recipient_id_number=recipient,
                                        relation=relation, amount_fen=amount, source=source)  # type: ignore[arg-type]
        verified = verification_of(form, guardian=False, methods=TRANSFER_METHODS)
        if verified is not None:
            req.verification.CopyFrom(verified)
        if not form.errors and form.v(rules.REPEAT_FIELD) != "1":
            await ask_if_repeated(request, form, pid, recipient, amount)

        async def call() -> str:
            t = (await console.backend.wallet(console.operator(request).role, "CreateTransfer", req)).transfer
            return (f"已发起划转 {t.transfer_id}:{rules.yuan(t.amount_fen)} 划入 {rules.masked_id(recipient)} 的"
                    f"医保钱包,须在 {rules.shanghai_time(t.expires_at_unix_ms)} 前接收")

        ok = await run_action(console, request, form, TRANSFER_FIELDS, call, id_number=pid, recipient=recipient,
                              method=form.v("method"))
        return await wallet_page(request, transfer_form=form, status=200 if ok else 422)

    async def ask_if_repeated(request: web.Request, form: Form, pid: str, recipient: str, amount: int) -> None:
        """The same transfer from this person to this recipient minutes ago (rules.repeated_at), one that
        did not fail: the form asks to confirm instead of sending it. Transfers that cannot be listed are
        left to the transfer's own answer."""
        try:
            sent = (await console.backend.wallet(console.operator(request).role, "ListOutgoingTransfers",
                                                 wpb.ListOutgoingTransfersRequest(
                                                     sender_id_number=pid, limit=MAX_TRANSFERS))).transfers
        except Refusal:
            return
        at = rules.repeated_at(console.clock.now_ms(),
                               [(t.transfer_id, t.created_at_unix_ms) for t in sent
                                if t.recipient_id_number == recipient and t.amount_fen == amount
                                and t.state != wpb.TRANSFER_STATE_FAILED],
                               form.request_id)
        if at:
            form.errors[rules.REPEAT_FIELD] = rules.repeat_text("医保钱包划转", amount, at)

    async def end_relationship(request: web.Request) -> web.Response:
        """结束钱包关系 at the holder's request (SPEC §5): the sender's unspent quota goes back to the
        sender's personal account, and transfers of theirs still waiting go back too."""
        pid, _ = await person_of(console, request)
        form = await read_form(request, "end_relationship")
        sender = console.ref_field(form, "sender_ref")
        form.values["sender"] = sender  # the row it was sent from (never drawn: the page shows it masked)
        if form.v("asked") != "yes":
            form.errors[""] = "未确认持有人本人要求结束钱包关系,本次没有办理;请确认后重新提交"

        async def call() -> str:
            r = await console.backend.wallet(console.operator(request).role, "EndWalletRelationship",
                                             wpb.EndWalletRelationshipRequest(
                                                 request_id=form.request_id, sender_id_number=sender,
                                                 holder_id_number=pid, requested_by_id_number=pid))
            back = f",{r.transfers_returned} 笔待接收的划转退回" if r.transfers_returned else ""
            return (f"已结束与 {rules.masked_id(sender)} 的钱包关系:未使用额度 {rules.yuan(r.returned_fen)} "
                    f"退回划转人{back}")

        ok = await run_action(console, request, form, {}, call, id_number=pid, sender=sender)
        return await wallet_page(request, end_form=form, status=200 if ok else 422)

    async def accept(request: web.Request) -> web.Response:
        """代为接收: the recipient is at the desk (identity checked there) and cannot use the App; the
        quota lands in their wallet as a lot (SPEC §5)."""
        pid, _ = await person_of(console, request)
        form = await read_form(request, "accept")
        tid = form.v("transfer_id").strip()
        if not tid:
            form.errors[""] = rules.refusal_text("TRANSFER_NOT_FOUND")
        if form.v("identity_checked") != "yes":
            form.errors["identity_checked"] = ("未核验接收人本人身份,本次没有办理;"
                                               "请核验(本人到场并出示有效证件)后重新提交")

        async def call() -> str:
            r = await console.backend.wallet(console.operator(request).role, "AcceptTransfer",
                                             wpb.AcceptTransferRequest(request_id=form.request_id, transfer_id=tid,
                                                                       recipient_id_number=pid))
            return (f"已代为接收划转 {r.transfer.transfer_id}:{rules.yuan(r.transfer.amount_fen)} 已计入医保钱包,"
                    f"钱包余额 {rules.yuan(r.wallet.balance_fen)}")

        ok = await run_action(console, request, form, {"transfer_id": "", "recipient_id_number": ""}, call,
                              id_number=pid, transfer_id=tid)
        return await wallet_page(request, accept_form=form, status=200 if ok else 422)

    # --- 代缴 (SPEC §4b) ---------------------------------------------------------------------------

    async def premium_page(request: web.Request, forms: dict[str, Form] | None = None,
                           status: int = 200) -> web.Response:
        pid, _ = await person_of(console, request)  # one the operator serves (`located`)
        role = console.operator(request).role
        # A payment is held by the registry it was paid with, the payer's then: a person who moved
        # province since (payer or payee) has theirs in the registry of the province they left, which
        # keeps their record. Each registry with a record of the person is asked (Backend.in_each_province).

        async def listed(province: str) -> tuple[str, list[tuple[str, Any]]]:
            paid = await console.backend.registry(role, province, "ListResidentPremiums",
                                                  ppb.ListResidentPremiumsRequest(payer_id_number=pid))
            received = await console.backend.registry(role, province, "ListResidentPremiums",
                                                      ppb.ListResidentPremiumsRequest(payee_id_number=pid))
            return paid.payable_year, [(province, x) for x in [*paid.premiums, *received.premiums]]

        loc, answers, unreachable = await console.backend.in_each_province(role, pid, listed)
        if loc is None:
            raise web.HTTPNotFound(text="未查询到该人员的参保信息")
        payable_year = answers[0][1][0]  # where the person is insured now
        every = [row for _, (_, rows) in answers for row in rows]
        # One's own premium (paid from one's own 医保钱包) is in both lists: one row per payee and year
        # in each registry.
        rows = {(prov, x.payee_id_number, x.year): (prov, x) for prov, x in every}
        pooled, families = await family_accounts_of(role, loc.province, pid)
        # The year offered: the one the payer's province collects today (its policy, asked of its registry).
        forms = {"pay": Form("pay", {"year": payable_year}), **(forms or {})}
        return console.render(request, "premium.html", status=status, p=person_view(loc), ref=console.ref(pid),
                              premiums=list(rows.values()), forms=forms, unreachable=sorted(unreachable),
                              pooled=pooled, families=families,
                              source=lambda v: SOURCE_ZH.get(enum_short(ppb.PremiumSource, "PREMIUM_SOURCE_", v), "-"))

    async def family_accounts_of(role: str, province: str, pid: str) -> tuple[bool, list[Any]]:
        """Whether the province pools (SPEC §3b), and the family accounts `pid` may pay a 代缴 from:
        those they are a MEMBER of (the registry checks it again)."""
        try:
            got = await console.backend.registry(role, province, "GetFamilyAccount",
                                                 fpb.GetFamilyAccountRequest(id_number=pid))
        except Refusal as exc:
            if exc.reason not in ("FAMILY_NOT_FOUND", "MODEL_NOT_POOLED"):
                raise
            return exc.reason != "MODEL_NOT_POOLED", []
        return True, [m for m in got.memberships if m.state == fpb.MEMBERSHIP_STATE_MEMBER]

    async def premium(request: web.Request) -> web.Response:
        return await premium_page(request)

    async def premium_pay(request: web.Request) -> web.Response:
        pid, loc = await person_of(console, request)
        form = await read_form(request, "pay")
        payee = id_field(form, "payee")
        rel = relation_of(form)
        year = rules.typed(form.v("year"))
        if not rules.ascii_digits(year, 4):
            form.errors["year"] = rules.refusal_text("INVALID_YEAR")
        source = PREMIUM_SOURCES.get(form.v("source"), 0)
        if not source:
            form.errors["source"] = rules.refusal_text("UNKNOWN_SOURCE")
        # The family account is chosen from the payer's own (the page offers them), and named only
        # for that source: the registry takes a family id with no other.
        family_id = form.v("family_id").strip() if source == ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT else ""
        if source == ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT and not family_id:
            form.errors["source"] = NO_FAMILY_ACCOUNT_TEXT

        # Asked of the payer's registry, where their money is: a 代缴 is for a payee insured (or enrolling)
        # in the same province, and that registry finds one insured in another itself (CROSS_PROVINCE, SPEC
        # §4b). The payee's registry, not knowing the payer, could only say they are not insured there.
        async def call() -> str:
            r = await console.backend.registry(console.operator(request).role, loc.province, "PayResidentPremium",
                                               ppb.PayResidentPremiumRequest(
                                                   request_id=form.request_id, payer_id_number=pid,
                                                   payee_id_number=payee, relation=rel,  # type: ignore[arg-type]
                                                   year=year, source=source,  # type: ignore[arg-type]
                                                   family_id=family_id))
            return f"已为 {rules.masked_id(payee)} 代缴 {year} 年度城乡居民医保 {rules.yuan(r.premium.amount_fen)}"

        ok = await run_action(console, request, form, PREMIUM_FIELDS, call, words=rules.PREMIUM_WORDS,
                              payer=pid, payee=payee)
        return await premium_page(request, {"pay": form}, status=200 if ok else 422)

    async def premium_cancel(request: web.Request) -> web.Response:
        pid, loc = await person_of(console, request)
        form = await read_form(request, "cancel")
        payee = console.ref_field(form, "payee_ref")
        year = form.v("year")
        # The registry that holds the payment, as the page lists it (a province the person left keeps
        # theirs); the registry refuses a payment this person did not make.
        province = form.v("province") or loc.province

        # Asked of the registry the page lists the payment from (this person's): the one it was paid
        # with, the payer's, where the money goes back. The payee may be insured elsewhere by now. The
        # desk acts for this person: only a payment they made is cancelled (NOT_THE_PAYER otherwise).
        async def call() -> str:
            await console.backend.registry(console.operator(request).role, province, "CancelResidentPremium",
                                           ppb.CancelResidentPremiumRequest(request_id=form.request_id,
                                                                            payer_id_number=pid,
                                                                            payee_id_number=payee, year=year))
            return f"已撤销 {rules.masked_id(payee)} {year} 年度的代缴,资金原路退回"

        ok = await run_action(console, request, form, {}, call, words=rules.PREMIUM_WORDS, payer=pid, payee=payee)
        return await premium_page(request, {"pay": Form("pay", done=form.done, errors=form.errors)},
                                  status=200 if ok else 422)

    app.router.add_get("/wallet", wallet)
    app.router.add_post("/wallet/use-place", use_place)
    app.router.add_post("/wallet/accept", accept)
    app.router.add_post("/wallet/open", open_wallet)
    app.router.add_post("/wallet/transfer", send)
    app.router.add_post("/wallet/end", end_relationship)
    app.router.add_get("/premium", premium)
    app.router.add_post("/premium/pay", premium_pay)
    app.router.add_post("/premium/cancel", premium_cancel)
