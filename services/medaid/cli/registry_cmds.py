"""Operator commands of a province registry: people, accounts, bindings, proxies, records, settlements."""

from __future__ import annotations

import argparse
from typing import Any

from medaid.cli.base import (
    CATEGORIES,
    DEADLINE_S,
    INSURANCE_TYPES,
    RELATIONS,
    STATUSES,
    Client,
    Result,
    enum_name,
    enum_value,
    event_time,
    face,
    id_number,
    month,
    parse_amount,
    province_of,
    relation,
    request_id,
    shanghai_time,
    wire_month,
    yuan,
)
from medaid.common.clock import month_bounds
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb


def _person_line(p: rpb.Person) -> str:
    itype = enum_name(cpb.InsuranceType, "INSURANCE_TYPE_", p.insurance_type)
    status = enum_name(cpb.PersonStatus, "PERSON_STATUS_", p.status)
    account = f"balance {yuan(p.balance_fen)}" if p.has_personal_account else "no personal account"
    moved = f", moved to {p.moved_to_province}" if p.moved_to_province else ""
    return f"{p.id_number} {p.name}: {itype} {status}{moved} in {p.pooling_region}, {account}"


def _binding_line(b: rpb.Binding) -> str:
    """The direction in words: a relation reads "the member is the helper's RELATION"."""
    ended = "" if b.active else f" (ended {shanghai_time(b.ended_at_unix_ms)}: {b.end_reason})"
    return (f"member {b.member_id_number} is the {relation(b.relation)} of helper {b.helper_id_number}"
            f"{ended}")


def enroll(args: argparse.Namespace, c: Client) -> Result:
    r = c.registry(args.region[:2]).EnrollPerson(rpb.EnrollPersonRequest(
        request_id=request_id(args), id_number=args.id_number, name=args.name,
        insurance_type=enum_value(cpb.InsuranceType, "INSURANCE_TYPE_", args.insurance_type),
        flexible_tier=args.tier, pooling_region=args.region), timeout=DEADLINE_S)
    return r, [f"enrolled {_person_line(r.person)}"]


def person(args: argparse.Namespace, c: Client) -> Result:
    r = c.registry(province_of(args, args.id_number, c)).GetPerson(
        rpb.GetPersonRequest(id_number=args.id_number), timeout=DEADLINE_S)
    return r, [_person_line(r.person)]


def status(args: argparse.Namespace, c: Client) -> Result:
    r = c.registry(province_of(args, args.id_number, c)).UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
        request_id=request_id(args), id_number=args.id_number,
        status=enum_value(cpb.PersonStatus, "PERSON_STATUS_", args.status),
        moved_to_province=args.moved_to or "", occurred_at_unix_ms=args.occurred_at or 0), timeout=DEADLINE_S)
    return r, [_person_line(r.person)] + [f"  ended: {_binding_line(b)}" for b in r.ended_bindings]


def credit(args: argparse.Namespace, c: Client) -> Result:
    r = c.registry(province_of(args, args.id_number, c)).CreditAccount(rpb.CreditAccountRequest(
        request_id=request_id(args), id_number=args.id_number, amount_fen=parse_amount(args.amount),
        kind=enum_value(rpb.CreditKind, "CREDIT_KIND_", args.kind), period=wire_month(args.period or "")),
        timeout=DEADLINE_S)
    return r, [f"credited {yuan(r.entry.amount_fen)}; balance {yuan(r.balance_fen)}"]


def account(args: argparse.Namespace, c: Client) -> Result:
    r = c.registry(province_of(args, args.id_number, c)).GetAccount(rpb.GetAccountRequest(
        id_number=args.id_number, ledger_limit=args.limit), timeout=DEADLINE_S)
    lines = [f"account of {r.id_number}: balance {yuan(r.balance_fen)} (credited {yuan(r.credited_total_fen)}, "
             f"debited {yuan(r.debited_total_fen)})"]
    lines += [f"  #{e.seq} {shanghai_time(e.at_unix_ms)} {e.kind} {yuan(e.amount_fen)} → {yuan(e.balance_after_fen)}"
              f" ({e.ref})" for e in r.entries]
    return r, lines


def bind(args: argparse.Namespace, c: Client) -> Result:
    req = rpb.BindMutualAidRequest(request_id=request_id(args), helper_id_number=args.helper,
                                   member_id_number=args.member,
                                   relation=enum_value(cpb.Relation, "RELATION_", args.relation),
                                   member_insured_admdvs=args.member_insured or "")
    if args.face:
        req.member_verification.CopyFrom(face(args.face))
    r = c.registry(province_of(args, args.helper, c)).BindMutualAid(req, timeout=DEADLINE_S)
    return r, [f"bound: {_binding_line(r.binding)}"]


def unbind(args: argparse.Namespace, c: Client) -> Result:
    r = c.registry(province_of(args, args.helper, c)).UnbindMutualAid(rpb.UnbindMutualAidRequest(
        request_id=request_id(args), helper_id_number=args.helper, member_id_number=args.member), timeout=DEADLINE_S)
    return r, [f"unbound: {_binding_line(r.binding)}"]


def bindings(args: argparse.Namespace, c: Client) -> Result:
    r = c.registry(province_of(args, args.id_number, c)).ListBindings(rpb.ListBindingsRequest(
        id_number=args.id_number, include_ended=args.all), timeout=DEADLINE_S)
    lines = [f"{args.id_number} helps {len(r.as_helper)}, is helped by {len(r.as_member)}"]
    lines += [f"  as helper: {_binding_line(b)}" for b in r.as_helper]
    lines += [f"  as member: {_binding_line(b)}" for b in r.as_member]
    return r, lines


def _proxy_line(p: rpb.ProxyBinding) -> str:
    return (f"relative {p.relative_id_number} is the {relation(p.relation)} of holder {p.holder_id_number}"
            f" (亲情账户: the relative's own account pays)")


def proxy(args: argparse.Namespace, c: Client) -> Result:
    req = rpb.BindProxyRequest(request_id=request_id(args), holder_id_number=args.holder,
                               relative_id_number=args.relative,
                               relation=enum_value(cpb.Relation, "RELATION_", args.relation))
    if args.face:
        req.relative_verification.CopyFrom(face(args.face))
    r = c.registry(province_of(args, args.holder, c)).BindProxy(req, timeout=DEADLINE_S)
    return r, [f"proxy bound: {_proxy_line(r.proxy)}"]


def proxies(args: argparse.Namespace, c: Client) -> Result:
    r = c.registry(province_of(args, args.id_number, c)).ListProxyBindings(
        rpb.ListProxyBindingsRequest(id_number=args.id_number), timeout=DEADLINE_S)
    lines = [f"{args.id_number} holds {len(r.as_holder)}, is held by {len(r.as_relative)}"]
    lines += [f"  as holder: {_proxy_line(p)}" for p in r.as_holder]
    lines += [f"  as relative: {_proxy_line(p)}" for p in r.as_relative]
    return r, lines


def diagnose(args: argparse.Namespace, c: Client) -> Result:
    req = rpb.DiagnoseRequest(member_id_number=args.member, helper_id_number=args.helper,
                              member_insured_admdvs=args.member_insured or "")
    if args.category:
        req.category = enum_value(cpb.Category, "CATEGORY_", args.category)
    # The helper's registry holds the binding and the helper's account, and finds a member insured in
    # another province itself (原因四), as for `bind` and `unbind`.
    r = c.registry(province_of(args, args.helper, c)).Diagnose(req, timeout=DEADLINE_S)
    kind = enum_name(rpb.BindingKind, "BINDING_KIND_", r.binding_kind)
    lines = [f"helper {args.helper} would pay for member {args.member}: {'yes' if r.would_pay else 'no'}; "
             f"binding {kind}; helper balance {yuan(r.helper_balance_fen)}"]
    lines += [f"  {f.code}: {f.message}" for f in r.findings]
    return r, lines


def records(args: argparse.Namespace, c: Client) -> Result:
    since, until = month_bounds(args.month) if args.month else (0, 0)
    r = c.registry(province_of(args, args.id_number, c)).ListConsumptionRecords(rpb.ListConsumptionRecordsRequest(
        id_number=args.id_number, limit=args.limit, since_unix_ms=since, until_unix_ms=until,
        page_token=args.page_token), timeout=DEADLINE_S)
    lines = [f"共济 consumption records of {args.id_number}{' in ' + args.month if args.month else ''}: "
             f"{len(r.records)}"]
    lines += [f"  {shanghai_time(x.at_unix_ms)} {x.settlement_id} {x.state}: helper {x.helper_id_number} paid "
              f"{yuan(x.mulaid_pay_fen)} for member {x.member_id_number} "
              f"({enum_name(cpb.Category, 'CATEGORY_', x.category)} at {x.institution_code}; this person is the "
              f"{x.role})" for x in r.records]
    if r.next_page_token:
        lines.append(f"older records: the same command with --page-token {r.next_page_token}")
    return r, lines


def settlement(args: argparse.Namespace, c: Client) -> Result:
    r = c.registry(province_of(args, args.psn_no, c)).GetSettlement(
        rpb.GetSettlementRequest(settlement_id=args.setl_id), timeout=DEADLINE_S)
    s = r.result
    helper = f" by helper {s.helper_id_number}" if s.helper_id_number else ""
    return r, [f"settlement {s.settlement_id} {s.state} of {s.patient_id_number} at {s.institution_code}, "
               f"{shanghai_time(s.settled_at_unix_ms)}: {yuan(s.amount_fen)}",
               f"  acct_pay {yuan(s.acct_pay_fen)} | wallet_pay {yuan(s.wallet_pay_fen)} | mulaid_pay "
               f"{yuan(s.mulaid_pay_fen)}{helper} | cash_pay {yuan(s.cash_pay_fen)}"]


def move_region(args: argparse.Namespace, c: Client) -> Result:
    r = c.registry(province_of(args, args.id_number, c)).MovePoolingRegion(rpb.MovePoolingRegionRequest(
        request_id=request_id(args), id_number=args.id_number, pooling_region=args.region,
        occurred_at_unix_ms=args.occurred_at or 0), timeout=DEADLINE_S)
    return r, [f"{r.person.id_number} is now insured in {r.person.pooling_region}; {len(r.ended_bindings)} "
               f"bindings ended; {yuan(r.wallet_returned_fen)} of wallet quota went home"]


def record_death(args: argparse.Namespace, c: Client) -> Result:
    r = c.registry(province_of(args, args.id_number, c)).RecordDeath(rpb.RecordDeathRequest(
        request_id=request_id(args), id_number=args.id_number, heir_id_number=args.heir, date_of_death=args.date),
        timeout=DEADLINE_S)
    return r, [f"death recorded; {yuan(r.paid_out_fen)} paid out to the heir {r.person.heir_id_number}"]


def remove_proxy(args: argparse.Namespace, c: Client) -> Result:
    r = c.registry(province_of(args, args.holder, c)).RemoveProxy(rpb.RemoveProxyRequest(
        request_id=request_id(args), holder_id_number=args.holder, relative_id_number=args.relative,
        requested_by_id_number=args.by or args.holder), timeout=DEADLINE_S)
    return r, [f"亲情账户 removed: {_proxy_line(r.proxy)}"]


def _province_opt(sp: argparse.ArgumentParser, who: str) -> None:
    sp.add_argument("--province", help=f"2-digit registry to ask (default: the one the person directory names for "
                                       f"the {who}, else the first two digits of the {who}'s id number)")


def _occurred_at_opt(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--occurred-at", type=event_time, metavar="TIME",
                    help="when the event happened in the province's system, ISO 8601 (2026-11-22T09:30:00+08:00; "
                         "no offset: Beijing time); one dated before the newest dated event taken for the person is "
                         "refused EVENT_OUT_OF_ORDER (default: undated, taken as it arrives)")


def register(add: Any) -> None:
    ids = "ID_NUMBER: 18-character id number (a final x is read as X; `medaid testid` makes test ones)"
    sp = add("enroll", enroll, "参保登记: enroll a person in the registry of REGION's province")
    sp.add_argument("id_number", type=id_number, metavar="ID_NUMBER", help=ids)
    sp.add_argument("name")
    sp.add_argument("insurance_type", metavar="INSURANCE_TYPE", help=" | ".join(INSURANCE_TYPES))
    sp.add_argument("region", metavar="REGION", help="6-digit 统筹区 admdvs code, e.g. 130100 (河北 石家庄)")
    sp.add_argument("--tier", type=int, default=0, help="FLEXIBLE only: 1 (no personal account) or 2")

    sp = add("person", person, "a person's registry record")
    sp.add_argument("id_number", type=id_number, metavar="ID_NUMBER", help=ids)
    _province_opt(sp, "person")

    sp = add("status", status, "change a person's insurance status (TERMINATED and moves end their bindings)")
    sp.add_argument("id_number", type=id_number, metavar="ID_NUMBER", help=ids)
    sp.add_argument("status", metavar="STATUS", help=" | ".join(STATUSES))
    sp.add_argument("--moved-to", help="2-digit province the person moved to (STATUS must be TERMINATED)")
    _occurred_at_opt(sp)
    _province_opt(sp, "person")

    sp = add("credit", credit, "月度划入: credit a personal account")
    sp.add_argument("id_number", type=id_number, metavar="ID_NUMBER", help=ids)
    sp.add_argument("amount", metavar="AMOUNT", help="yuan (500.00) or fen (50000f)")
    sp.add_argument("--kind", default="MONTHLY_CONTRIBUTION", help="MONTHLY_CONTRIBUTION (default) | ADJUSTMENT")
    sp.add_argument("--period", type=month, metavar="MONTH", help="contribution month YYYY-MM (YYYYMM also read)")
    _province_opt(sp, "person")

    sp = add("account", account, "a personal account: balance, totals and newest ledger entries")
    sp.add_argument("id_number", type=id_number, metavar="ID_NUMBER", help=ids)
    sp.add_argument("--limit", type=int, default=0, help="ledger entries (0 = 50, at most 500)")
    _province_opt(sp, "person")

    pair = "HELPER first, then MEMBER (the person whose bills the helper pays)"
    sp = add("bind", bind, f"家庭共济: bind a helper to a member; {pair}; RELATION reads "
                           "'MEMBER is HELPER's RELATION'")
    sp.add_argument("helper", type=id_number, metavar="HELPER")
    sp.add_argument("member", type=id_number, metavar="MEMBER")
    sp.add_argument("relation", metavar="RELATION", help="MEMBER is HELPER's …: " + " | ".join(RELATIONS))
    sp.add_argument("--face", metavar="ATTESTATION", help="the member's face-verification attestation id; "
                                                          "required when the member is 16 or older")
    sp.add_argument("--member-insured", metavar="ADMDVS", help="where the member is insured, when known")
    _province_opt(sp, "helper")

    sp = add("unbind", unbind, f"end a 家庭共济 binding; {pair}")
    sp.add_argument("helper", type=id_number, metavar="HELPER")
    sp.add_argument("member", type=id_number, metavar="MEMBER")
    _province_opt(sp, "helper")

    sp = add("bindings", bindings, "a person's 家庭共济 bindings, as helper and as member")
    sp.add_argument("id_number", type=id_number, metavar="ID_NUMBER", help=ids)
    sp.add_argument("--all", action="store_true", help="include ended bindings")
    _province_opt(sp, "person")

    sp = add("proxy", proxy, "亲情账户: let HOLDER present RELATIVE's 医保码 (moves no money); RELATION reads "
                             "'RELATIVE is HOLDER's RELATION'")
    sp.add_argument("holder", type=id_number, metavar="HOLDER")
    sp.add_argument("relative", type=id_number, metavar="RELATIVE")
    sp.add_argument("relation", metavar="RELATION", help="RELATIVE is HOLDER's …: " + " | ".join(RELATIONS))
    sp.add_argument("--face", metavar="ATTESTATION", help="the relative's face-verification attestation id (16 or "
                                                          "older), or the attestation for an under-16 relative")
    _province_opt(sp, "holder")

    sp = add("remove-proxy", remove_proxy, "remove a 亲情账户, HOLDER first, then RELATIVE (either side may ask)")
    sp.add_argument("holder", type=id_number, metavar="HOLDER")
    sp.add_argument("relative", type=id_number, metavar="RELATIVE")
    sp.add_argument("--by", type=id_number, metavar="ID_NUMBER", help="who asks: HOLDER or RELATIVE (default HOLDER)")
    _province_opt(sp, "holder")

    sp = add("move-region", move_region, "move a person to another 统筹区 of the province")
    sp.add_argument("id_number", type=id_number, metavar="ID_NUMBER", help=ids)
    sp.add_argument("region", metavar="REGION", help="6-digit 统筹区 admdvs code of the same province")
    _occurred_at_opt(sp)
    _province_opt(sp, "person")

    sp = add("record-death", record_death, "record a death: bindings end, quota they sent goes home, the account "
                                           "is paid out to HEIR")
    sp.add_argument("id_number", type=id_number, metavar="ID_NUMBER", help=ids)
    sp.add_argument("heir", type=id_number, metavar="HEIR")
    sp.add_argument("date", metavar="DATE", help="date of death, YYYYMMDD")
    _province_opt(sp, "person")

    sp = add("proxies", proxies, "a person's 亲情账户 proxy bindings, as holder and as relative")
    sp.add_argument("id_number", type=id_number, metavar="ID_NUMBER", help=ids)
    _province_opt(sp, "person")

    sp = add("diagnose", diagnose, f"why 共济 would or would not pay; {pair}")
    sp.add_argument("helper", type=id_number, metavar="HELPER")
    sp.add_argument("member", type=id_number, metavar="MEMBER")
    sp.add_argument("--category", help="also check a category: " + " | ".join(CATEGORIES))
    sp.add_argument("--member-insured", metavar="ADMDVS", help="where the member is insured, when known")
    _province_opt(sp, "member")

    sp = add("records", records, "共济消费记录: settlements where the person paid as helper or was paid for")
    sp.add_argument("id_number", type=id_number, metavar="ID_NUMBER", help=ids)
    sp.add_argument("--limit", type=int, default=0, help="records a page (0 = 50, at most 500)")
    sp.add_argument("--page-token", default="", help="the next page: the token the page before printed")
    sp.add_argument("--month", type=month, default=None, help="only the month YYYY-MM (YYYYMM also read), Beijing "
                                                             "time")
    _province_opt(sp, "person")

    sp = add("settlement", settlement, "one settlement as the patient's registry holds it")
    sp.add_argument("psn_no", type=id_number, metavar="PSN_NO", help="the patient's id number")
    sp.add_argument("setl_id", metavar="SETL_ID", help="the settlement id (the 2207 msgid)")
    _province_opt(sp, "patient")
