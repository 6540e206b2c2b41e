"""An institution's transactions through the settlement router (1101 / 2206 / 2207 / 2208)."""

from __future__ import annotations

import argparse
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from medaid.cli.base import (
    CATEGORIES,
    DEADLINE_S,
    Client,
    Result,
    enum_name,
    enum_value,
    id_number,
    new_msgid,
    parse_amount,
    relation,
    yuan,
)
from medaid.common import rpc
from medaid.common.v1 import common_pb2 as cpb
from medaid.router.v1 import router_pb2 as pb


def _inst(args: argparse.Namespace) -> pb.Institution:
    return pb.Institution(fixmedins_code=args.fixmedins, mdtrtarea_admvs=args.area)


def _msgid(args: argparse.Namespace) -> str:
    if not args.msgid:  # kept, so that a call without an answer can name it
        args.msgid = new_msgid(args.fixmedins)
    return str(args.msgid)


def _settle_input(args: argparse.Namespace) -> pb.SettleInput:
    return pb.SettleInput(psn_no=args.psn_no, insuplc_admdvs=args.insuplc or "",
                          psn_part_amt_fen=parse_amount(args.amount), acct_used_flag="0" if args.cash_only else "1",
                          category=enum_value(cpb.Category, "CATEGORY_", args.category))


def lookup(args: argparse.Namespace, c: Client) -> Result:
    r = c.router().QueryPerson(pb.QueryPersonRequest(
        msgid=_msgid(args), institution=_inst(args), mdtrt_cert_type="02", mdtrt_cert_no=args.psn_no,
        insuplc_admdvs=args.insuplc or ""), timeout=DEADLINE_S)
    b = r.baseinfo
    lines = [f"{b.psn_name} {b.psn_no} gend={b.gend} brdy={b.brdy} age={b.age}"]
    for i in r.insuinfo:
        lines.append(f"insured at {i.insuplc_admdvs}: {enum_name(cpb.InsuranceType, 'INSURANCE_TYPE_', i.insutype)} "
                     f"{enum_name(cpb.PersonStatus, 'PERSON_STATUS_', i.psn_insu_stas)} balc={yuan(i.balc_fen)}")
        lines.append("wallet: " + (f"{yuan(i.wallet_balc_fen)} at {i.wallet_use_place_admdvs}" if i.wallet_opened
                                   else f"unknown ({i.wallet_reason})" if i.wallet_reason else "none"))
    lines.append(f"helpers: {len(r.helpers)}")
    lines += [f"  {h.psn_no}: {b.psn_no} is this helper's {relation(h.relation)}" for h in r.helpers]
    return r, lines


def _setl_lines(title: str, s: pb.SetlInfo) -> list[str]:
    helper = f" by helper {s.mulaid_helper_psn_no}" if s.mulaid_helper_psn_no else ""
    reasons = "".join(f" | {k} {v}" for k, v in (("mulaid_reason", s.mulaid_reason),
                                                  ("wallet_reason", s.wallet_reason)) if v)
    return [f"{title}: {yuan(s.psn_part_amt_fen)}",
            f"  acct_pay {yuan(s.acct_pay_fen)} | wallet_pay {yuan(s.wallet_pay_fen)} | acct_mulaid_pay "
            f"{yuan(s.acct_mulaid_pay_fen)}{helper} | psn_cash_pay {yuan(s.psn_cash_pay_fen)}",
            f"  balc {yuan(s.balc_fen)}{reasons}"]


def presettle(args: argparse.Namespace, c: Client) -> Result:
    r = c.router().PreSettle(pb.PreSettleRequest(msgid=_msgid(args), institution=_inst(args),
                                                 input=_settle_input(args)), timeout=DEADLINE_S)
    return r, _setl_lines("2206 pre-settlement (nothing moved)", r.setlinfo)


def settle(args: argparse.Namespace, c: Client) -> Result:
    r = c.router().Settle(pb.SettleRequest(msgid=_msgid(args), institution=_inst(args), input=_settle_input(args)),
                          timeout=DEADLINE_S)
    return r, _setl_lines(f"2207 settlement {r.setlinfo.setl_id}", r.setlinfo)


def reverse(args: argparse.Namespace, c: Client) -> Result:
    r = c.router().ReverseSettlement(pb.ReverseSettlementRequest(
        msgid=_msgid(args), institution=_inst(args), setl_id=args.setl_id, psn_no=args.psn_no,
        insuplc_admdvs=args.insuplc or ""), timeout=DEADLINE_S)
    return r, [f"2208 reversed {r.setl_id}: acct {yuan(r.acct_refund_fen)}, wallet {yuan(r.wallet_refund_fen)}, "
               f"共济 {yuan(r.mulaid_refund_fen)}; balc {yuan(r.balc_fen)}"]


# How long `health` waits for one service's health check when it asks them itself (the router's own wait).
HEALTH_CHECK_S = 1.0
# The router's answers that say it is not there to ask (rather than a refusal of the caller).
_ROUTER_DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _checked_here(c: Client) -> list[pb.DownstreamHealth]:
    """Every registry and the wallet the CLI has an address for, each replica asked at once for its
    health check: the router's view when the router is not there to give it."""
    # Named as the router names them: one line per replica of a replicated service (registry-13#1 …).
    numbered = [(f"{name}#{i}" if len(reps) > 1 else name, rep) for name, address in sorted(c.addresses.items())
                if name == "wallet" or name.startswith("registry-")
                for reps in [rpc.replicas(address)] for i, rep in enumerate(reps, 1)]
    calls = [rpc.health_check(c.channel_to(address)).future(health_pb2.HealthCheckRequest(), timeout=HEALTH_CHECK_S)
             for _, address in numbered]
    rows = []
    for (name, address), call in zip(numbered, calls, strict=True):
        try:
            up = call.result().status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            up = False
        rows.append(pb.DownstreamHealth(name=name, address=address, serving=up))
    return rows


def _serving(channel: grpc.Channel) -> bool:
    try:
        answer = rpc.health_check(channel)(health_pb2.HealthCheckRequest(), timeout=HEALTH_CHECK_S)
    except grpc.RpcError:
        return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def health(args: argparse.Namespace, c: Client) -> Result:
    """The router and every registry and wallet it reaches, one line each; when the router does not
    answer, it is listed DOWN and the others are asked from here. Any not serving: exit status 1."""
    router = pb.DownstreamHealth(name="router", address=c.addresses.get("router", ""), serving=True)
    try:
        downstream = list(c.router().GetDownstreamHealth(pb.GetDownstreamHealthRequest(),
                                                         timeout=DEADLINE_S).downstream)
        notes = []
        # Answering that is not serving: a router whose Redis does not answer refuses every 2207 and
        # says so on its own health check, as it does to Kubernetes and `make status`.
        if not _serving(c.channel_to(router.address, "router")):
            router.serving = False
            notes = ["router: its own health check is not SERVING (its Redis does not answer)"]
    except grpc.RpcError as exc:
        if exc.code() not in _ROUTER_DOWN:  # it answered, and refused the caller: that is the answer
            raise
        router.serving = False
        downstream = _checked_here(c)
        notes = [f"router: no answer ({exc.code().name}); the others were asked from here"]
    r = pb.GetDownstreamHealthResponse(downstream=[router, *downstream])
    if not all(d.serving for d in r.downstream):
        c.status = 1
    return r, [f"{d.name:<14} {d.address:<22} {'SERVING' if d.serving else 'DOWN'}" for d in r.downstream] + notes


def _institution(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--fixmedins", default="H13010100001", help="12-character fixmedins_code (default H13010100001)")
    sp.add_argument("--area", default="130100", help="mdtrtarea_admvs of the institution (default 130100)")
    sp.add_argument("--msgid", help="default: fixmedins_code + 18 random letters and digits (30 in all)")
    sp.add_argument("--insuplc", help="insuplc_admdvs, when known")


def register(add: Any) -> None:
    patient = "the patient's 18-character id number"
    sp = add("lookup", lookup, "1101 person and insurance info, with the person's 共济 helpers")
    sp.add_argument("psn_no", type=id_number, metavar="PSN_NO", help=patient)
    _institution(sp)
    sp.set_defaults(read_only=True)  # nothing to repeat after no answer (main's resend hint)
    for name, fn, what in (("presettle", presettle, "2206 pre-settlement: the split, nothing moves"),
                           ("settle", settle, "2207 settlement: own account, own wallet, one helper, cash")):
        sp = add(name, fn, what)
        sp.add_argument("psn_no", type=id_number, metavar="PSN_NO", help=patient)
        sp.add_argument("amount", metavar="AMOUNT", help="the personally borne part: yuan (128.50) or fen (12850f)")
        sp.add_argument("--category", default="OUTPATIENT", help="default OUTPATIENT: " + " | ".join(CATEGORIES))
        sp.add_argument("--cash-only", action="store_true", help="acct_used_flag 0: the accounts pay nothing")
        _institution(sp)
        sp.set_defaults(read_only=name == "presettle")  # 2206: nothing moves
    sp = add("reverse", reverse, "2208 reversal of a settlement, from the institution that settled it")
    sp.add_argument("psn_no", type=id_number, metavar="PSN_NO", help=patient)
    sp.add_argument("setl_id", metavar="SETL_ID", help="the 2207's setl_id (its msgid)")
    _institution(sp)
    add("health", health, "the router and which registries and wallet it reaches (the router down: asked "
        "from here); exit 1 when any is down")
