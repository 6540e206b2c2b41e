"""`medaid` — a CLI for integrators and operators against a running topology (`make up`).

Addresses come from build/run/topology.json (written by `make up`) unless given with
--router/--wallet/--registry. Amounts are yuan with at most two decimals ("128.50") or fen with
an `f` suffix ("12850f"); they are converted exactly (no float). `--json` prints the raw response
in the proto3 JSON mapping.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf import json_format

from medaid import cli_family
from medaid.common import rpc, tls
from medaid.common.errors import error_info
from medaid.common.idnumber import normalise_id_number
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc
from medaid.topology import STATE_FILE
from medaid.wallet.v1 import wallet_pb2 as wpb
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

EnumValue = TypeVar("EnumValue", bound=int)

DEADLINE_S = 10.0
_AMOUNT = re.compile(r"^(?:(\d{1,13})(?:\.(\d{1,2}))?|(\d{1,15})f)$")
_seq = itertools.count(1)


class UsageError(Exception):
    pass


def parse_amount(text: str) -> int:
    """'128.50' → 12850 fen; '12850f' → 12850 fen. More than two decimals is an error."""
    m = _AMOUNT.match(text.strip())
    if not m:
        raise UsageError(f"amount {text!r}: use yuan with at most 2 decimals (128.50) or fen (12850f)")
    if m.group(3):
        return int(m.group(3))
    return int(m.group(1)) * 100 + int((m.group(2) or "0").ljust(2, "0"))


def yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}¥{abs(fen) // 100:,}.{abs(fen) % 100:02d}"


def new_msgid(fixmedins: str) -> str:
    now = dt.datetime.now().strftime("%Y%m%d%H%M%S")
    return f"{fixmedins}{now}{(next(_seq) + dt.datetime.now().microsecond) % 10000:04d}"


def enum_value(enum_type: _EnumTypeWrapper[EnumValue], prefix: str, name: str) -> EnumValue:
    try:
        return enum_type.Value(prefix + name.upper())
    except ValueError:
        names = [n.removeprefix(prefix) for n in enum_type.keys() if not n.endswith("UNSPECIFIED")]
        raise UsageError(f"{name!r} is not one of {', '.join(names)}") from None


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        state: dict[str, Any] = {}
        if Path(args.topology).exists():
            state = json.loads(Path(args.topology).read_text())
        addresses: dict[str, str] = dict(state.get("addresses", {}))
        if args.router:
            addresses["router"] = args.router
        if args.wallet:
            addresses["wallet"] = args.wallet
        for item in args.registry or []:
            prov, _, addr = item.partition("=")
            addresses[f"registry-{prov}"] = addr
        self.addresses = addresses
        self._channels: list[grpc.Channel] = []
        # mTLS as `identity` (default operator) when a certificate folder is given (--tls-dir / MEDAID_TLS_DIR)
        self.tls = tls.load(args.identity, tls_dir=args.tls_dir) if args.tls_dir else None
        self.token = args.token

    def _channel(self, name: str) -> grpc.Channel:
        if name not in self.addresses:
            raise UsageError(f"no address for {name}: run `make up` or pass it on the command line")
        ch = rpc.sync_channel(self.addresses[name], tls=self.tls)
        self._channels.append(ch)
        return ch

    def router(self) -> pb_grpc.RouterServiceStub:
        ch = self._channel("router")
        if self.token:  # an institution's bearer token (README "Security")
            ch = grpc.intercept_channel(ch, _Bearer(self.token))
        return pb_grpc.RouterServiceStub(ch)

    def wallet(self) -> wpb_grpc.WalletServiceStub:
        return wpb_grpc.WalletServiceStub(self._channel("wallet"))

    def registry(self, province: str) -> rpb_grpc.RegistryServiceStub:
        return rpb_grpc.RegistryServiceStub(self._channel(f"registry-{province}"))

    def close(self) -> None:
        for ch in self._channels:
            ch.close()


class _Bearer(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._md = ("authorization", f"Bearer {token}")

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        new = details._replace(metadata=[*(details.metadata or []), self._md])
        return continuation(new, request)


def _face(attestation: str) -> cpb.Verification:
    return cpb.Verification(method=cpb.VERIFICATION_METHOD_FACE, attestation_id=attestation)


def _inst(args: argparse.Namespace) -> pb.Institution:
    return pb.Institution(fixmedins_code=args.fixmedins, mdtrtarea_admvs=args.area)


def _settle_input(args: argparse.Namespace) -> pb.SettleInput:
    return pb.SettleInput(psn_no=args.psn_no, insuplc_admdvs=args.insuplc or "",
                          psn_part_amt_fen=parse_amount(args.amount), acct_used_flag="0" if args.cash_only else "1",
                          category=enum_value(cpb.Category, "CATEGORY_", args.category))


def _province(args: argparse.Namespace, id_number: str) -> str:
    return str(args.province or id_number[:2])


def run(args: argparse.Namespace, c: Client) -> tuple[Any, list[str]]:
    """Call the service; return the response and readable lines."""
    cmd = args.command
    rid = args.request_id or f"cli-{cmd}-{dt.datetime.now().strftime('%Y%m%d%H%M%S%f')}"
    if cmd.startswith(("family", "premium")):
        return cli_family.run(args, c, rid)
    if cmd == "lookup":
        r = c.router().QueryPerson(pb.QueryPersonRequest(
            msgid=args.msgid or new_msgid(args.fixmedins), institution=_inst(args), mdtrt_cert_type="02",
            mdtrt_cert_no=args.psn_no, insuplc_admdvs=args.insuplc or ""), timeout=DEADLINE_S)
        i = r.insuinfo[0]
        lines = [f"{r.baseinfo.psn_name} {r.baseinfo.psn_no} gend={r.baseinfo.gend} brdy={r.baseinfo.brdy} "
                 f"age={r.baseinfo.age}",
                 f"insured at {i.insuplc_admdvs}: {cpb.InsuranceType.Name(i.insutype)} "
                 f"{cpb.PersonStatus.Name(i.psn_insu_stas)} balc={yuan(i.balc_fen)}",
                 "wallet: " + (f"{yuan(i.wallet_balc_fen)} at {i.wallet_use_place_admdvs}" if i.wallet_opened
                               else "none"),
                 "helpers: " + (", ".join(f"{h.psn_no} ({cpb.Relation.Name(h.relation)})" for h in r.helpers)
                                or "none")]
        return r, lines
    if cmd in ("presettle", "settle"):
        msgid = args.msgid or new_msgid(args.fixmedins)
        if cmd == "presettle":
            r = c.router().PreSettle(pb.PreSettleRequest(msgid=msgid, institution=_inst(args),
                                                         input=_settle_input(args)), timeout=DEADLINE_S)
        else:
            r = c.router().Settle(pb.SettleRequest(msgid=msgid, institution=_inst(args), input=_settle_input(args)),
                                  timeout=DEADLINE_S)
        s = r.setlinfo
        lines = [f"{'2206 pre-settlement' if cmd == 'presettle' else '2207 settlement ' + s.setl_id}: "
                 f"{yuan(s.psn_part_amt_fen)}",
                 f"  acct_pay {yuan(s.acct_pay_fen)} | wallet_pay {yuan(s.wallet_pay_fen)} | acct_mulaid_pay "
                 f"{yuan(s.acct_mulaid_pay_fen)}{' by ' + s.mulaid_helper_psn_no if s.mulaid_helper_psn_no else ''}"
                 f" | psn_cash_pay {yuan(s.psn_cash_pay_fen)}",
                 f"  balc {yuan(s.balc_fen)}"
                 + (f" | mulaid_reason {s.mulaid_reason}" if s.mulaid_reason else "")
                 + (f" | wallet_reason {s.wallet_reason}" if s.wallet_reason else "")]
        return r, lines
    if cmd == "reverse":
        r = c.router().ReverseSettlement(pb.ReverseSettlementRequest(
            msgid=args.msgid or new_msgid(args.fixmedins), institution=_inst(args), setl_id=args.setl_id,
            psn_no=args.psn_no, insuplc_admdvs=args.insuplc or ""), timeout=DEADLINE_S)
        return r, [f"2208 reversed {r.setl_id}: acct {yuan(r.acct_refund_fen)}, wallet {yuan(r.wallet_refund_fen)}, "
                   f"共济 {yuan(r.mulaid_refund_fen)}; balc {yuan(r.balc_fen)}"]
    if cmd == "enroll":
        itype = enum_value(cpb.InsuranceType, "INSURANCE_TYPE_", args.insurance_type)
        r = c.registry(args.region[:2]).EnrollPerson(rpb.EnrollPersonRequest(
            request_id=rid, id_number=args.id_number, name=args.name, insurance_type=itype,
            flexible_tier=args.tier, pooling_region=args.region), timeout=DEADLINE_S)
        return r, [f"enrolled {r.person.id_number} in {r.person.pooling_region} "
                   f"({cpb.InsuranceType.Name(r.person.insurance_type)})"]
    if cmd == "credit":
        r = c.registry(_province(args, args.id_number)).CreditAccount(rpb.CreditAccountRequest(
            request_id=rid, id_number=args.id_number, amount_fen=parse_amount(args.amount),
            kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION), timeout=DEADLINE_S)
        return r, [f"credited; balance {yuan(r.balance_fen)}"]
    if cmd == "bind":
        req = rpb.BindMutualAidRequest(request_id=rid, helper_id_number=args.helper, member_id_number=args.member,
                                       relation=enum_value(cpb.Relation, "RELATION_", args.relation))
        if args.face:
            req.member_verification.CopyFrom(_face(args.face))
        r = c.registry(_province(args, args.helper)).BindMutualAid(req, timeout=DEADLINE_S)
        return r, [f"bound {r.binding.helper_id_number} → {r.binding.member_id_number} "
                   f"({cpb.Relation.Name(r.binding.relation)})"]
    if cmd == "unbind":
        r = c.registry(_province(args, args.helper)).UnbindMutualAid(rpb.UnbindMutualAidRequest(
            request_id=rid, helper_id_number=args.helper, member_id_number=args.member), timeout=DEADLINE_S)
        return r, [f"unbound {r.binding.helper_id_number} → {r.binding.member_id_number}"]
    if cmd == "diagnose":
        r = c.registry(_province(args, args.member)).Diagnose(rpb.DiagnoseRequest(
            member_id_number=args.member, helper_id_number=args.helper), timeout=DEADLINE_S)
        lines = [f"would pay: {r.would_pay}; binding: {rpb.BindingKind.Name(r.binding_kind)}; "
                 f"helper balance {yuan(r.helper_balance_fen)}"]
        lines += [f"  {f.code}: {f.message}" for f in r.findings]
        return r, lines
    if cmd == "open-wallet":
        r = c.wallet().OpenWallet(wpb.OpenWalletRequest(
            request_id=rid, owner_id_number=args.owner, province=args.use_place[:2], use_place_admdvs=args.use_place,
            real_name=_face(args.face)), timeout=DEADLINE_S)
        return r, [f"wallet opened for {r.wallet.owner_id_number}, use-place {r.wallet.use_place_admdvs}"]
    if cmd == "transfer":
        r = c.wallet().CreateTransfer(wpb.CreateTransferRequest(
            request_id=rid, sender_id_number=args.sender, sender_province=_province(args, args.sender),
            recipient_id_number=args.recipient, relation=enum_value(cpb.Relation, "RELATION_", args.relation),
            amount_fen=parse_amount(args.amount), verification=_face(args.face)), timeout=DEADLINE_S)
        t = r.transfer
        return r, [f"transfer {t.transfer_id}: {yuan(t.amount_fen)} {wpb.TransferState.Name(t.state)}, "
                   f"accept before {dt.datetime.fromtimestamp(t.expires_at_unix_ms / 1000).isoformat()}"]
    if cmd == "accept":
        r = c.wallet().AcceptTransfer(wpb.AcceptTransferRequest(
            request_id=rid, transfer_id=args.transfer_id, recipient_id_number=args.recipient), timeout=DEADLINE_S)
        return r, [f"{wpb.TransferState.Name(r.transfer.state)}; wallet balance {yuan(r.wallet.balance_fen)}"]
    if cmd == "wallet":
        r = c.wallet().GetWallet(wpb.GetWalletRequest(owner_id_number=args.owner), timeout=DEADLINE_S)
        lines = [f"wallet of {r.wallet.owner_id_number} at {r.wallet.use_place_admdvs}: {yuan(r.wallet.balance_fen)}"]
        lines += [f"  lot {lot.transfer_id} from {lot.sender_id_number} ({lot.sender_province}): "
                  f"{yuan(lot.remaining_fen)} of {yuan(lot.amount_fen)}" for lot in r.lots]
        return r, lines
    if cmd == "clearing":
        r = c.wallet().GetClearingReport(wpb.GetClearingReportRequest(month=args.month), timeout=DEADLINE_S)
        lines = [f"clearing {r.month}: total {yuan(r.total_fen)}"]
        lines += [f"  {x.sending_province} → {x.spending_province}: {yuan(x.amount_fen)} ({x.spend_count} spends)"
                  for x in r.lines]
        return r, lines
    raise UsageError(f"unknown command {cmd}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medaid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topology", default=str(STATE_FILE), help="state file written by `make up`")
    p.add_argument("--router")
    p.add_argument("--wallet")
    p.add_argument("--registry", action="append", help="PROVINCE=host:port (repeatable)")
    p.add_argument("--json", action="store_true", help="print the response as proto3 JSON")
    p.add_argument("--request-id", help="request id for mutating registry/wallet calls (default: generated)")
    p.add_argument("--tls-dir", default=os.environ.get("MEDAID_TLS_DIR", ""),
                   help="certificate folder (make certs): call over mTLS (env MEDAID_TLS_DIR)")
    p.add_argument("--identity", default=os.environ.get("MEDAID_IDENTITY", "operator"),
                   help="whose certificate in --tls-dir to present: operator (default), or an institution's "
                        "fixmedins_code")
    p.add_argument("--token", default=os.environ.get("MEDAID_TOKEN", ""),
                   help="an institution's bearer token for router calls (env MEDAID_TOKEN)")
    sub = p.add_subparsers(dest="command", required=True)

    def institution(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--fixmedins", default="H13010100001", help="12-character fixmedins_code")
        sp.add_argument("--area", default="130100", help="mdtrtarea_admvs of the institution")
        sp.add_argument("--msgid", help="default: fixmedins_code + now + sequence")
        sp.add_argument("--insuplc", help="insuplc_admdvs, when known")

    sp = sub.add_parser("lookup", help="1101 person and insurance info")
    sp.add_argument("psn_no", type=normalise_id_number)
    institution(sp)
    for name in ("presettle", "settle"):
        sp = sub.add_parser(name, help="2206 pre-settlement" if name == "presettle" else "2207 settlement")
        sp.add_argument("psn_no", type=normalise_id_number)
        sp.add_argument("amount")
        sp.add_argument("--category", default="OUTPATIENT")
        sp.add_argument("--cash-only", action="store_true", help="acct_used_flag 0")
        institution(sp)
    sp = sub.add_parser("reverse", help="2208 reversal")
    sp.add_argument("setl_id")
    sp.add_argument("psn_no", type=normalise_id_number)
    institution(sp)
    sp = sub.add_parser("enroll")
    sp.add_argument("id_number", type=normalise_id_number)
    sp.add_argument("name")
    sp.add_argument("insurance_type", help="EMPLOYEE | FLEXIBLE | RESIDENT")
    sp.add_argument("region", help="6-digit 统筹区")
    sp.add_argument("--tier", type=int, default=0)
    sp = sub.add_parser("credit")
    sp.add_argument("id_number", type=normalise_id_number)
    sp.add_argument("amount")
    sp.add_argument("--province")
    for name in ("bind", "unbind"):
        sp = sub.add_parser(name)
        sp.add_argument("helper", type=normalise_id_number)
        sp.add_argument("member", type=normalise_id_number)
        if name == "bind":
            sp.add_argument("relation")
            sp.add_argument("--face", help="attestation id of the member's face verification")
        sp.add_argument("--province")
    sp = sub.add_parser("diagnose")
    sp.add_argument("member", type=normalise_id_number)
    sp.add_argument("helper", type=normalise_id_number)
    sp.add_argument("--province")
    sp = sub.add_parser("open-wallet")
    sp.add_argument("owner", type=normalise_id_number)
    sp.add_argument("use_place")
    sp.add_argument("--face", default="cli-face")
    sp = sub.add_parser("transfer")
    sp.add_argument("sender", type=normalise_id_number)
    sp.add_argument("recipient", type=normalise_id_number)
    sp.add_argument("relation")
    sp.add_argument("amount")
    sp.add_argument("--face", default="cli-face")
    sp.add_argument("--province")
    sp = sub.add_parser("accept")
    sp.add_argument("transfer_id")
    sp.add_argument("recipient", type=normalise_id_number)
    sp = sub.add_parser("wallet")
    sp.add_argument("owner", type=normalise_id_number)
    sp = sub.add_parser("clearing")
    sp.add_argument("month", help="YYYYMM")
    cli_family.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = Client(args)
    try:
        response, lines = run(args, client)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        info = error_info(exc)
        reason = info.reason if info is not None else ""
        if args.json:
            print(json.dumps({"error": {"code": exc.code().name, "reason": reason,
                                        "message": exc.details()}}, ensure_ascii=False))
        else:
            print(f"refused: {exc.code().name} {reason}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if args.json:
        print(json_format.MessageToJson(response, preserving_proto_field_name=True, ensure_ascii=False))
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
