"""Pages about one person: look-up, the person, bindings and 亲情账户, diagnosis, consumption records."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from medaid.common.clock import month_bounds
from medaid.common.v1 import common_pb2 as cpb
from medaid.console import rules
from medaid.console.backend import Located, Refusal
from medaid.console.web import Console, Form, http_request_id, id_field, posted, read_form, refuse, run_action
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.wallet import rules as wallet_rules
from medaid.wallet.v1 import wallet_pb2 as wpb

BIND_FIELDS = {"member": "member", "relation": "relation", "verification": "verification", "helper": ""}
PROXY_FIELDS = {"member": "relative", "relation": "relation", "verification": "verification"}
DIAGNOSE_FIELDS = {"member": "member", "helper": "helper"}
RECORDS_PAGE = 500  # the most consumption records a registry answers in one page
MONTH_INVALID_TEXT = "月份填写有误,请按“年-月”填写(如 2026-11,1970年以后),或不填以列出全部月份;本次没有列出任何记录"
RECORDS_CAP = 2000  # the most the page lists from one registry (one page after another); more: it says so
METHODS = {"face": cpb.VERIFICATION_METHOD_FACE, "counter": cpb.VERIFICATION_METHOD_COUNTER,
           "password": cpb.VERIFICATION_METHOD_MEDICARE_CODE_PASSWORD}
VERIFY_METHODS = {name: METHODS[name] for name in ("face", "counter")}
# A transfer's sender verifies by face or 医保码 password (the wallet's rule, SPEC §5), not at the counter.
TRANSFER_METHODS = {name: m for name, m in METHODS.items() if m in wallet_rules.TRANSFER_VERIFICATIONS}


class MonthInvalid(Exception):
    """The 消费记录 month asked for is no month the records can be listed for (rules.valid_month)."""

    def __init__(self, typed: str) -> None:
        super().__init__(typed)
        self.typed = typed


def enum_short(enum_type: Any, prefix: str, value: int) -> str:
    return str(enum_type.Name(value)).removeprefix(prefix)


def verification_of(form: Form, *, guardian: bool = True,
                    methods: dict[str, cpb.VerificationMethod.ValueType] = VERIFY_METHODS) -> cpb.Verification | None:
    """The attestation the form gives: face, or a counter check with the signed 承诺书; a guardian
    acting for an under-16 member sends none (the registry refuses it for a member of 16 or over),
    where the form offers that at all."""
    method = form.v("method")
    if method == "guardian" and guardian:
        id_field(form, "guardian")
        return None
    if method not in methods:
        form.errors["verification"] = "请选择身份核验方式"
        return None
    attestation = form.v("attestation").strip()
    if not attestation or len(attestation) > 64:
        form.errors["verification"] = "请填写核验编号(人脸识别流水号或承诺书编号,1-64位)"
        return None
    return cpb.Verification(method=methods[method], attestation_id=attestation)


def relation_of(form: Form, key: str = "relation") -> int:
    name = form.v(key)
    if name not in rules.RELATION_ZH:
        form.errors[key] = rules.refusal_text("UNKNOWN_RELATION")
        return 0
    return int(cpb.Relation.Value("RELATION_" + name))


async def located(console: Console, request: web.Request, id_number: str) -> Located:
    """Where the person a page or form is for is insured; refused (Console.may_serve) when the operator
    does not serve that province: every page of one person, and every act for them, starts here."""
    found = await console.backend.locate(console.operator(request).role, id_number)
    if found is None:
        raise web.HTTPNotFound(text="未查询到该人员的参保信息")
    await console.may_serve(request, found.province, id_number=id_number)
    return found


async def person_of(console: Console, request: web.Request) -> tuple[str, Located]:
    pid = console.unref(request.query.get("p", ""))
    return pid, await located(console, request, pid)


async def diagnosed_in(console: Console, request: web.Request, member: str, helper: str) -> str:
    """The registry a pair is diagnosed in: the helper's, which holds the binding and the helper's
    account, and finds a member insured in another province itself (原因四); so the member's registry
    is asked only for a helper no registry knows (a pair is diagnosed while the member's does not
    answer), or one insured in a province the operator does not serve: the member's registry then
    says the helper is not insured there (and that the wallet is the way), and nothing of the
    helper's is read. Refused (Refusal) when the operator serves neither side's province."""
    op = console.operator(request)
    role = op.role
    where = await console.backend.locate(role, helper)
    if where is None or console.outside(op, where.province) is not None:
        where = await console.backend.locate(role, member) or where
    province = where.province if where is not None else helper[:2]
    refusal = console.outside(op, province)
    if refusal is not None:
        raise refusal
    return province


def person_view(loc: Located) -> dict[str, Any]:
    p = loc.person
    return {"id_number": p.id_number, "name": p.name, "province": loc.province, "region": p.pooling_region,
            "type": enum_short(cpb.InsuranceType, "INSURANCE_TYPE_", p.insurance_type),
            "status": enum_short(cpb.PersonStatus, "PERSON_STATUS_", p.status), "tier": p.flexible_tier,
            "has_account": p.has_personal_account, "balance_fen": p.balance_fen, "moved_to": p.moved_to_province}


def need_label(text: str, console: Console) -> str:
    """What verification the member typed on the bind form needs at their age ("" before a valid number)."""
    if not rules.valid_id_number(text):
        return ""
    return rules.verification_need(rules.check_id_number(text), console.clock.today()).label


def add_routes(app: web.Application, console: Console) -> None:
    async def home(request: web.Request) -> web.Response:
        return console.render(request, "search.html", form=Form("lookup"))

    async def lookup(request: web.Request) -> web.StreamResponse:
        form = await read_form(request, "lookup")
        form.errors.pop("", None)  # a read: no request id needed
        pid = id_field(form, "id_number")
        if pid:
            found = await console.backend.locate(console.operator(request).role, pid)
            if found is None:
                console.audit(request, "lookup", "PERSON_NOT_FOUND", id_number=pid)
                form.errors["id_number"] = rules.refusal_text("PERSON_NOT_FOUND")
                return console.render(request, "search.html", status=422, form=form)
            try:
                await console.may_serve(request, found.province, "lookup", id_number=pid)
            except Refusal as exc:
                form.errors["id_number"] = f"{rules.refusal_text(exc.reason, metadata=exc.metadata)}({exc.reason})"
                return console.render(request, "search.html", status=403, form=form)
            console.audit(request, "lookup", "OK", id_number=pid)
            raise web.HTTPSeeOther(f"/person?p={console.ref(pid)}")
        console.audit(request, "lookup", "INPUT_INVALID")  # what was typed is no id number: not logged
        return console.render(request, "search.html", status=422, form=form)

    async def person_page(request: web.Request, reveal: bool = False, why_error: str = "",
                          status: int = 200) -> web.Response:
        pid, loc = await person_of(console, request)
        role = console.operator(request).role
        wallet: Any = None
        wallet_unknown = ""
        try:
            wallet = await console.backend.wallet(role, "GetWallet", wpb.GetWalletRequest(owner_id_number=pid))
        except Refusal as exc:
            if exc.reason not in ("WALLET_NOT_FOUND", "WALLET_NOT_OPENED"):
                wallet = exc
                wallet_unknown = rules.wallet_unknown_text(exc.reason, exc.message, exc.metadata)
        # A province the person moved from keeps their record, TERMINATED, and the personal account's
        # balance left there (SPEC §5b): the desk shows it apart, with the registries that did not answer.
        found, unanswered = await console.backend.records(role, pid)
        elsewhere = [person_view(x) for x in sorted(found, key=lambda x: x.province) if x.province != loc.province]
        return console.render(request, "person.html", status=status, p=person_view(loc), reveal=reveal,
                              wallet=wallet, wallet_unknown=wallet_unknown, ref=console.ref(pid),
                              why_error=why_error, elsewhere=elsewhere,
                              unreachable=sorted(p for p in unanswered if p != loc.province))

    async def person(request: web.Request) -> web.Response:
        return await person_page(request)

    async def reveal(request: web.Request) -> web.Response:
        pid = console.unref(request.query.get("p", ""))
        form = await posted(request)
        why, request_id = str(form.get("why", "")).strip()[:60], str(form.get("request_id", ""))[:64]
        if not why:  # the full number is shown only for a stated reason, which the log keeps
            console.audit(request, "reveal_id_number", "REASON_REQUIRED", request_id, id_number=pid)
            return await person_page(request, why_error="请填写查看完整证件号码的原因", status=422)
        # The reason is the operator's free text: an id number or the person's name typed in it is
        # logged masked too (rules.logged_reason).
        logged = rules.logged_reason(why, [(await located(console, request, pid)).person.name])
        console.audit(request, "reveal_id_number", "OK", request_id, id_number=pid, why=logged)
        return await person_page(request, reveal=True)

    # --- bindings and 亲情账户 (SPEC §3, §5b) --------------------------------------------------------

    async def bindings_page(request: web.Request, forms: dict[str, Form] | None = None,
                            status: int = 200) -> web.Response:
        pid, loc = await person_of(console, request)
        role = console.operator(request).role
        b = await console.backend.registry(role, loc.province, "ListBindings",
                                           rpb.ListBindingsRequest(id_number=pid, include_ended=True))
        px = await console.backend.registry(role, loc.province, "ListProxyBindings",
                                            rpb.ListProxyBindingsRequest(id_number=pid))
        forms = {"bind": Form("bind"), "proxy": Form("proxy"), **(forms or {})}
        return console.render(request, "bindings.html", status=status, p=person_view(loc), ref=console.ref(pid),
                              bindings=b, proxies=px, forms=forms, need=lambda text: need_label(text, console),
                              relation=lambda v: rules.RELATION_ZH.get(enum_short(cpb.Relation, "RELATION_", v), "-"))

    async def bindings(request: web.Request) -> web.Response:
        return await bindings_page(request)

    async def bind(request: web.Request) -> web.Response:
        pid, loc = await person_of(console, request)
        form = await read_form(request, "bind")
        member = id_field(form, "member")
        rel = relation_of(form)
        req = rpb.BindMutualAidRequest(request_id=form.request_id, helper_id_number=pid, member_id_number=member,
                                       relation=rel)  # type: ignore[arg-type]
        if member:
            att = verification_of(form)
            if att is not None:
                req.member_verification.CopyFrom(att)

        async def call() -> str:
            await console.backend.registry(console.operator(request).role, loc.province, "BindMutualAid", req)
            return f"已绑定:{rules.masked_id(member)} 为共济人 {rules.masked_id(pid)} 的被共济人"

        # The guardian's number as checked: what was typed may be no id number the log's masking knows
        # (full-width digits), and is not logged.
        typed = form.v("guardian").strip()
        guardian = rules.check_id_number(typed) if form.v("method") == "guardian" and rules.valid_id_number(typed) \
            else ""
        ok = await run_action(console, request, form, BIND_FIELDS, call, helper=pid, member=member,
                              method=form.v("method"), guardian=guardian)
        return await bindings_page(request, {"bind": form}, status=200 if ok else 422)

    async def unbind(request: web.Request) -> web.Response:
        pid, loc = await person_of(console, request)
        form = await read_form(request, "unbind")
        member = console.ref_field(form, "member_ref")

        async def call() -> str:
            await console.backend.registry(console.operator(request).role, loc.province, "UnbindMutualAid",
                                           rpb.UnbindMutualAidRequest(request_id=form.request_id,
                                                                      helper_id_number=pid, member_id_number=member))
            return f"已解除与 {rules.masked_id(member)} 的家庭共济绑定"

        ok = await run_action(console, request, form, {"member": ""}, call, helper=pid, member=member)
        return await bindings_page(request, {"bind": Form("bind", done=form.done, errors=form.errors)},
                                   status=200 if ok else 422)

    async def proxy(request: web.Request) -> web.Response:
        pid, loc = await person_of(console, request)
        form = await read_form(request, "proxy")
        relative = id_field(form, "relative")
        rel = relation_of(form)
        req = rpb.BindProxyRequest(request_id=form.request_id, holder_id_number=pid, relative_id_number=relative,
                                   relation=rel)  # type: ignore[arg-type]
        if relative:
            att = verification_of(form, guardian=False)  # a 亲情账户 needs an attestation at any age (SPEC §5b)
            if att is not None:
                req.relative_verification.CopyFrom(att)

        async def call() -> str:
            await console.backend.registry(console.operator(request).role, loc.province, "BindProxy", req)
            return f"已添加亲情账户:{rules.masked_id(relative)}"

        ok = await run_action(console, request, form, PROXY_FIELDS, call, holder=pid, relative=relative)
        return await bindings_page(request, {"proxy": form}, status=200 if ok else 422)

    async def remove_proxy(request: web.Request) -> web.Response:
        pid, loc = await person_of(console, request)
        form = await read_form(request, "remove_proxy")
        holder, relative = console.ref_field(form, "holder_ref"), console.ref_field(form, "relative_ref")

        async def call() -> str:
            await console.backend.registry(console.operator(request).role, loc.province, "RemoveProxy",
                                           rpb.RemoveProxyRequest(request_id=form.request_id, holder_id_number=holder,
                                                                  relative_id_number=relative,
                                                                  requested_by_id_number=pid))
            return f"已解除亲情账户:{rules.masked_id(relative)}"

        ok = await run_action(console, request, form, {}, call, holder=holder, relative=relative)
        return await bindings_page(request, {"proxy": Form("proxy", done=form.done, errors=form.errors)},
                                   status=200 if ok else 422)

    # --- diagnosis (SPEC §4) ---------------------------------------------------------------------

    async def diagnose_page(request: web.Request) -> web.Response:
        form = Form("diagnose")
        if "p" in request.query:
            form.values["member_ref"] = request.query["p"]
        return console.render(request, "diagnose.html", form=form, result=None)

    async def pools(role: str, province: str, helper: str) -> bool:
        """Whether `province` runs the pooled model (SPEC §3b): there a would-pay 共济 is the family
        account's, and Diagnose's balance is that account's, not the helper's own."""
        try:
            await console.backend.registry(role, province, "GetFamilyAccount", fpb.GetFamilyAccountRequest(
                id_number=helper))
        except Refusal as exc:
            if exc.reason != "MODEL_NOT_POOLED":
                raise
            return False
        return True

    async def diagnose(request: web.Request) -> web.Response:
        form = await read_form(request, "diagnose")
        form.errors.pop("", None)  # a read: no request id needed
        member = console.ref_field(form, "member_ref", "member") if form.v("member_ref") else id_field(form, "member")
        if form.errors.get("member"):
            form.values.pop("member_ref", None)  # a reference not this console's: the number is typed instead
        helper = id_field(form, "helper")
        if member and helper and member == helper:
            form.errors["helper"] = rules.refusal_text("SELF_BINDING")
        result: Any = None
        role = console.operator(request).role
        if form.errors:  # the numbers as checked: one that is none is not logged
            console.audit(request, "diagnose", "INPUT_INVALID", member=member, helper=helper)
        else:
            try:
                province = await diagnosed_in(console, request, member, helper)
                r = await console.backend.registry(role, province, "Diagnose", rpb.DiagnoseRequest(
                    member_id_number=member, helper_id_number=helper))
                kind = enum_short(rpb.BindingKind, "BINDING_KIND_", r.binding_kind)
                pooled = r.would_pay and await pools(role, province, helper)
                result = {"would_pay": r.would_pay, "kind": kind, "helper_balance_fen": r.helper_balance_fen,
                          "pooled": pooled,
                          "findings": [(f.code, rules.advice(f.code, f.message), f.message) for f in r.findings]}
                console.audit(request, "diagnose", "OK", member=member, helper=helper,
                              findings=",".join(f.code for f in r.findings))
                # Answered: the numbers are shown masked with the result, not left in clear in the form.
                form.values = {k: v for k, v in form.values.items() if k == "member_ref"}
            except Refusal as exc:
                console.audit(request, "diagnose", exc.reason, member=member, helper=helper)
                refuse(form, exc, DIAGNOSE_FIELDS)
        return console.render(request, "diagnose.html", status=200 if result else 422, form=form, result=result,
                              member=member, helper=helper)

    # --- 共济消费记录 (SPEC §4) ---------------------------------------------------------------------

    async def records_data(request: web.Request, action: str = "records") -> dict[str, Any]:
        """The 消费记录 of the page's person; read and logged as `action` (records_print: the sheet)."""
        pid, _ = await person_of(console, request)  # one the operator serves (`located`)
        role = console.operator(request).role
        month = rules.typed(request.query.get("month", ""))
        if month and not rules.valid_month(month):
            # Never every month as if none were asked for: the sheet would say 全部 for the one asked.
            console.audit(request, action, "INPUT_INVALID", id_number=pid)
            raise MonthInvalid(request.query.get("month", "")[:20])
        since, until = month_bounds(month) if month else (0, 0)

        async def listed(province: str) -> tuple[list[Any], bool]:
            """The registry's records, newest first, a page at a time up to RECORDS_CAP; and whether it
            holds more."""
            rows: list[Any] = []
            token = ""
            while True:
                size = min(RECORDS_PAGE, RECORDS_CAP - len(rows))  # `limit` too, for a registry without pages
                r = await console.backend.registry(role, province, "ListConsumptionRecords",
                                                   rpb.ListConsumptionRecordsRequest(
                                                       id_number=pid, page_size=size, limit=size, page_token=token,
                                                       since_unix_ms=since, until_unix_ms=until))
                rows += r.records
                token = r.next_page_token
                if not token or len(rows) >= RECORDS_CAP:
                    break
            # Each row's state is its settlement's now, as GetSettlement and 5203 give it (IN_PROGRESS while
            # a reversal, or the undoing of one, is unfinished), the same for the helper's row and the
            # member's: each side's own record changes at its own step of the reversal.
            sids = list(dict.fromkeys(x.settlement_id for x in rows))
            states = {}
            for i in range(0, len(sids), RECORDS_PAGE):  # a batch of ids is at most 512
                now = await console.backend.registry(role, province, "GetSettlements",
                                                     rpb.GetSettlementsRequest(settlement_ids=sids[i:i + RECORDS_PAGE]))
                states.update({x.settlement_id: x.result.state for x in now.settlements if x.found})
            for x in rows:
                x.state = states.get(x.settlement_id, x.state)
            return rows, bool(token)

        # A record stays in the registry of the province where the bill was settled: one the person moved
        # from keeps theirs (SPEC §5b), listed beside the new province's (Backend.in_each_province).
        loc, answers, unreachable = await console.backend.in_each_province(role, pid, listed)
        if loc is None:
            raise web.HTTPNotFound(text="未查询到该人员的参保信息")
        rows = sorted(((province, x) for province, (got, _) in answers for x in got),
                      key=lambda row: row[1].at_unix_ms, reverse=True)
        console.audit(request, action, "OK", id_number=pid, month=month)
        return {"p": person_view(loc), "ref": console.ref(pid), "month": month, "rows": rows,
                "unreachable": unreachable, "limit": RECORDS_CAP,
                # A registry that holds more than RECORDS_CAP: the list is cut there.
                "cut": sorted(province for province, (_, more) in answers if more),
                # What the person paid as 共济人 and what was paid for them as 被共济人: two sums, never one.
                "paid_fen": sum(x.mulaid_pay_fen for _, x in rows if x.state != "REVERSED" and x.role == "HELPER"),
                "received_fen": sum(x.mulaid_pay_fen for _, x in rows if x.state != "REVERSED" and x.role != "HELPER"),
                "category": lambda v: rules.CATEGORY_ZH.get(enum_short(cpb.Category, "CATEGORY_", v), "-"),
                "printed_at": rules.shanghai_time(console.clock.now_ms()),
                # The id its `console action` line is logged under: a printed sheet is found in the log by it.
                "request_id": http_request_id()}

    async def records(request: web.Request) -> web.Response:
        try:
            return console.render(request, "records.html", **await records_data(request))
        except MonthInvalid as exc:  # the page again, the month typed kept and its error next to it
            pid, loc = await person_of(console, request)
            return console.render(request, "records.html", status=400, p=person_view(loc), ref=console.ref(pid),
                                  month=exc.typed, month_error=MONTH_INVALID_TEXT)

    async def records_print(request: web.Request) -> web.Response:
        try:
            return console.render(request, "records_print.html", **await records_data(request, "records_print"))
        except MonthInvalid:
            raise web.HTTPBadRequest(text=MONTH_INVALID_TEXT) from None

    app.router.add_get("/", home)
    app.router.add_post("/lookup", lookup)
    app.router.add_get("/person", person)
    app.router.add_post("/person/reveal", reveal)
    app.router.add_get("/bindings", bindings)
    app.router.add_post("/bindings/bind", bind)
    app.router.add_post("/bindings/unbind", unbind)
    app.router.add_post("/bindings/proxy", proxy)
    app.router.add_post("/bindings/remove-proxy", remove_proxy)
    app.router.add_get("/diagnose", diagnose_page)
    app.router.add_post("/diagnose", diagnose)
    app.router.add_get("/records", records)
    app.router.add_get("/records/print", records_print)
