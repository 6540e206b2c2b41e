"""`medaid family-…` — the pooled family account (家庭共济账户, SPEC §3b) from the command line:

    family-create CREATOR --promise ID [--initial AMOUNT]  创建 (the signed 承诺书's id)
    family-invite FAMILY CREATOR MEMBER RELATION    邀请 [--temporary: 福建 临时成员]
    family-respond FAMILY MEMBER accept|decline     [--face ATTESTATION] (16 and over)
    family-transfer FAMILY CONTRIBUTOR AMOUNT       划拨
    family-withdraw FAMILY CONTRIBUTOR              回拨 (where the province allows)
    family-leave FAMILY MEMBER | family-remove FAMILY CREATOR MEMBER | family-dissolve FAMILY CREATOR
    family FAMILY_OR_ID_NUMBER                      members, balance, shares, history
    premium-pay PAYER PAYEE RELATION|self YEAR      代缴 [--source account|family|wallet] [--family FAMILY]
    premium-cancel PAYER PAYEE YEAR                 撤销代缴, in the payer's registry
    premiums [--payer ID] [--payee ID] [--year YYYY]
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from medaid.cli.base import UsageError, enum_value, id_number, province_of, yuan
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb

if TYPE_CHECKING:
    from medaid.cli.base import Client

DEADLINE_S = 10.0


def _province(args: argparse.Namespace, c: Client, family_id: str = "", id_number: str = "") -> str:
    """--province, else the province in the family id (FA<pp>…), else the person's (base.province_of)."""
    if args.province:
        return str(args.province)
    if family_id.startswith("FA"):
        return family_id[2:4]
    return province_of(args, id_number, c)


def describe(a: fpb.FamilyAccount) -> list[str]:
    lines = [f"family account {a.family_id} ({a.state}) of {a.creator_id_number}: balance {yuan(a.balance_fen)}"]
    for m in a.members:
        extra = " creator" if m.creator else (" temporary" if m.temporary else "")
        lines.append(f"  member {m.id_number} {fpb.MembershipState.Name(m.state).removeprefix('MEMBERSHIP_STATE_')}"
                     f"{extra}{' ' + m.end_reason if m.end_reason else ''}")
    lines += [f"  share of {s.id_number}: {yuan(s.share_fen)}" for s in a.shares]
    lines += [f"  {e.kind} {e.id_number} {yuan(e.amount_fen)} {e.ref} {e.detail}".rstrip() for e in a.history[-10:]]
    return lines


def add_parsers(sub: Any) -> None:
    from medaid.cli.base import RELATIONS

    fam = "the family account's id (FA + the province's 2 digits + …, as family-create answers)"
    amount = "yuan with at most 2 decimals (128.50) or fen with an f suffix (12850f)"
    person = "18-character id number (a final x is read as X)"
    relations = " | ".join(RELATIONS)
    year = "the premium's year YYYY"
    sp = sub.add_parser("family-create", help="创建 a family account")
    sp.add_argument("creator", type=id_number, metavar="CREATOR", help=f"the creator's {person}")
    sp.add_argument("--initial", metavar="AMOUNT", help=f"initial 划拨 from the creator's personal account: {amount}")
    sp.add_argument("--promise", required=True, help="attestation id of the 承诺书 the creator signed (required: "
                    "creating the account needs it, SPEC §3b)")
    sp = sub.add_parser("family-invite", help="邀请 a near-kin; RELATION reads 'MEMBER is CREATOR's RELATION'")
    sp.add_argument("family_id", metavar="FAMILY", help=fam)
    sp.add_argument("creator", type=id_number, metavar="CREATOR", help=f"the creator's {person}")
    sp.add_argument("member", type=id_number, metavar="MEMBER", help=f"the invited near-kin's {person}")
    sp.add_argument("relation", metavar="RELATION", help=f"MEMBER is CREATOR's …: {relations}")
    sp.add_argument("--temporary", action="store_true", help="a 临时成员 (福建: where the province has them)")
    sp = sub.add_parser("family-respond", help="accept or decline an invitation")
    sp.add_argument("family_id", metavar="FAMILY", help=fam)
    sp.add_argument("member", type=id_number, metavar="MEMBER", help=f"the invited member's {person}")
    sp.add_argument("answer", choices=["accept", "decline"], help="accept | decline")
    sp.add_argument("--face", metavar="ATTESTATION", help="attestation id of the member's face verification "
                                                          "(required to accept at 16 or older)")
    sp = sub.add_parser("family-transfer", help="划拨 into the family account")
    sp.add_argument("family_id", metavar="FAMILY", help=fam)
    sp.add_argument("contributor", type=id_number, metavar="CONTRIBUTOR", help=f"a member's {person}; their "
                                                                               "personal account pays")
    sp.add_argument("amount", metavar="AMOUNT", help=amount)
    sp = sub.add_parser("family-withdraw", help="回拨 a contributor's unspent share")
    sp.add_argument("family_id", metavar="FAMILY", help=fam)
    sp.add_argument("contributor", type=id_number, metavar="CONTRIBUTOR", help=f"the contributor's {person}")
    sp = sub.add_parser("family-leave", help="退出: a member leaves; their unspent share goes home")
    sp.add_argument("family_id", metavar="FAMILY", help=fam)
    sp.add_argument("member", type=id_number, metavar="MEMBER", help=f"the leaving member's {person}")
    sp = sub.add_parser("family-remove", help="the creator removes a member; the member's share goes home")
    sp.add_argument("family_id", metavar="FAMILY", help=fam)
    sp.add_argument("creator", type=id_number, metavar="CREATOR", help=f"the creator's {person}")
    sp.add_argument("member", type=id_number, metavar="MEMBER", help=f"the removed member's {person}")
    sp = sub.add_parser("family-dissolve", help="解散: every contributor's unspent share goes home")
    sp.add_argument("family_id", metavar="FAMILY", help=fam)
    sp.add_argument("creator", type=id_number, metavar="CREATOR", help=f"the creator's {person}")
    sp = sub.add_parser("family", help="show a family account (by its id or a member's id number)")
    sp.add_argument("family_or_id", metavar="FAMILY_OR_ID_NUMBER", help=f"{fam}, or a member's {person}")
    sp = sub.add_parser("premium-pay", help="代缴 a near-kin's 城乡居民医保 premium (or, with PAYER = PAYEE, "
                        "relation self and --source wallet, one's own from one's 医保钱包)")
    sp.add_argument("payer", type=id_number, metavar="PAYER", help=f"who pays: {person}")
    sp.add_argument("payee", type=id_number, metavar="PAYEE", help=f"whose premium is paid: {person}")
    sp.add_argument("relation", metavar="RELATION", help=f"PAYEE is PAYER's …: {relations} (self for one's own)")
    sp.add_argument("year", metavar="YEAR", help=year)
    sp.add_argument("--source", default="account", choices=["account", "family", "wallet"],
                    help="what pays: account (PAYER's personal account, default) | family (--family) | wallet "
                         "(PAYER's 医保钱包)")
    sp.add_argument("--family", default="", metavar="FAMILY", help=f"with --source family: {fam}")
    sp = sub.add_parser("premium-cancel", help="cancel a 代缴 inside the window (asked of PAYER's registry, "
                        "where the payment is, wherever PAYEE is insured now)")
    sp.add_argument("payer", type=id_number, metavar="PAYER", help=f"who paid: {person}")
    sp.add_argument("payee", type=id_number, metavar="PAYEE", help=f"whose premium was paid: {person}")
    sp.add_argument("year", metavar="YEAR", help=year)
    sp = sub.add_parser("premiums", help="list 代缴 payments (for the tax bureau)")
    sp.add_argument("--payer", type=id_number, metavar="ID_NUMBER", help=f"only those PAYER paid: {person}")
    sp.add_argument("--payee", type=id_number, metavar="ID_NUMBER", help=f"only those paid for PAYEE: {person}")
    sp.add_argument("--year", default="", help=f"only {year}")
    for name in ("family-create", "family-invite", "family-respond", "family-transfer", "family-withdraw",
                 "family-leave", "family-remove", "family-dissolve", "family", "premium-pay", "premium-cancel",
                 "premiums"):
        sub.choices[name].set_defaults(read_only=name in ("family", "premiums"))  # nothing to repeat
        sub.choices[name].add_argument("--province", help="2-digit registry to ask (default: the family id's "
                                                          "province, else the one the person directory names for "
                                                          "the person, else the person's id number's)")


def _id_number(text: str) -> str:
    """FAMILY_OR_ID_NUMBER that is no family id: an id number, checked like every other before the call."""
    try:
        return id_number(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(str(exc)) from None


def premium_line(p: ppb.ResidentPremium) -> str:
    source = ppb.PremiumSource.Name(p.source).removeprefix("PREMIUM_SOURCE_")
    return (f"{p.premium_id}: {p.payer_id_number} → {p.payee_id_number} {p.year} {yuan(p.amount_fen)} from {source}"
            f"{' ' + p.family_id if p.family_id else ''} {p.state}")


def _payers_registry(args: argparse.Namespace, c: Client) -> Any:
    """A 代缴 is paid, kept and cancelled in the payer's registry, where the payer's money is (SPEC §4b),
    as the console's 代缴 page does: it finds a payee insured in another province itself (CROSS_PROVINCE),
    and keeps the payment there when the payee moves later. The payee's registry knows no payer."""
    return c.registry(_province(args, c, id_number=args.payer))


def run_premium(args: argparse.Namespace, c: Client, rid: str) -> tuple[Any, list[str]]:
    cmd = args.command
    if cmd == "premium-pay":
        source = {"account": ppb.PREMIUM_SOURCE_ACCOUNT, "family": ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT,
                  "wallet": ppb.PREMIUM_SOURCE_WALLET}[args.source]
        r: Any = _payers_registry(args, c).PayResidentPremium(ppb.PayResidentPremiumRequest(
            request_id=rid, payer_id_number=args.payer, payee_id_number=args.payee,
            relation=(cpb.RELATION_UNSPECIFIED if args.relation.lower() == "self"
                      else enum_value(cpb.Relation, "RELATION_", args.relation)),
            year=args.year, source=source,
            family_id=args.family), timeout=DEADLINE_S)
        return r, [premium_line(r.premium)]
    if cmd == "premium-cancel":
        r = _payers_registry(args, c).CancelResidentPremium(ppb.CancelResidentPremiumRequest(
            request_id=rid, payer_id_number=args.payer, payee_id_number=args.payee, year=args.year),
            timeout=DEADLINE_S)
        return r, [premium_line(r.premium)]
    who = args.payee or args.payer or ""
    if not args.province and not who:
        raise UsageError("premiums --year needs --province")
    r = c.registry(_province(args, c, id_number=who)).ListResidentPremiums(ppb.ListResidentPremiumsRequest(
        payer_id_number=args.payer or "", payee_id_number=args.payee or "", year=args.year), timeout=DEADLINE_S)
    return r, [premium_line(p) for p in r.premiums] or ["no premiums"]


def run(args: argparse.Namespace, c: Client, rid: str) -> tuple[Any, list[str]]:
    from medaid.cli import parse_amount

    cmd = args.command
    if cmd.startswith("premium"):
        return run_premium(args, c, rid)
    fid = getattr(args, "family_id", "")
    key = getattr(args, "family_or_id", "")
    if key.startswith("FA"):
        fid = key
    elif key:
        key = _id_number(key)
    if cmd == "family-create":
        r: Any = c.registry(_province(args, c, id_number=args.creator)).CreateFamilyAccount(
            fpb.CreateFamilyAccountRequest(
                request_id=rid, creator_id_number=args.creator,
                commitment=cpb.Verification(method=cpb.VERIFICATION_METHOD_FACE, attestation_id=args.promise),
                initial_transfer_fen=parse_amount(args.initial) if args.initial else 0), timeout=DEADLINE_S)
        return r, describe(r.account)
    reg = c.registry(_province(args, c, fid, key))
    if cmd == "family-invite":
        r = reg.InviteMember(fpb.InviteMemberRequest(
            request_id=rid, family_id=fid, creator_id_number=args.creator, member_id_number=args.member,
            relation=enum_value(cpb.Relation, "RELATION_", args.relation), temporary=args.temporary),
            timeout=DEADLINE_S)
    elif cmd == "family-respond":
        req = fpb.RespondToInvitationRequest(request_id=rid, family_id=fid, member_id_number=args.member,
                                             accept=args.answer == "accept")
        if args.face:
            req.verification.CopyFrom(cpb.Verification(method=cpb.VERIFICATION_METHOD_FACE,
                                                       attestation_id=args.face))
        r = reg.RespondToInvitation(req, timeout=DEADLINE_S)
    elif cmd == "family-transfer":
        r = reg.TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(
            request_id=rid, family_id=fid, contributor_id_number=args.contributor,
            amount_fen=parse_amount(args.amount)), timeout=DEADLINE_S)
        return r, [f"划拨 done; personal account {yuan(r.balance_after_fen)}", *describe(r.account)]
    elif cmd == "family-withdraw":
        r = reg.WithdrawContribution(fpb.WithdrawContributionRequest(
            request_id=rid, family_id=fid, contributor_id_number=args.contributor), timeout=DEADLINE_S)
        return r, [f"回拨 {yuan(r.returned_fen)}", *describe(r.account)]
    elif cmd == "family-leave":
        r = reg.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(
            request_id=rid, family_id=fid, member_id_number=args.member), timeout=DEADLINE_S)
        return r, [f"left; returned {yuan(r.returned_fen)}", *describe(r.account)]
    elif cmd == "family-remove":
        r = reg.RemoveMember(fpb.RemoveMemberRequest(
            request_id=rid, family_id=fid, creator_id_number=args.creator, member_id_number=args.member),
            timeout=DEADLINE_S)
        return r, [f"removed; returned {yuan(r.returned_fen)}", *describe(r.account)]
    elif cmd == "family-dissolve":
        r = reg.DissolveFamilyAccount(fpb.DissolveFamilyAccountRequest(
            request_id=rid, family_id=fid, creator_id_number=args.creator), timeout=DEADLINE_S)
        return r, [*(f"returned {yuan(s.share_fen)} to {s.id_number}" for s in r.returned), *describe(r.account)]
    else:
        req_get = (fpb.GetFamilyAccountRequest(family_id=key) if key.startswith("FA")
                   else fpb.GetFamilyAccountRequest(id_number=key))
        r = reg.GetFamilyAccount(req_get, timeout=DEADLINE_S)
    return r, describe(r.account)


def register(add: Any) -> None:
    """The family and 代缴 commands in the CLI's command table (each a subcommand of its own)."""

    class _Table:
        choices: dict[str, argparse.ArgumentParser] = {}

        def add_parser(self, name: str, help: str = "", **_: Any) -> argparse.ArgumentParser:  # noqa: A002
            parser: argparse.ArgumentParser = add(name, _handle, help)
            self.choices[name] = parser
            return parser

    add_parsers(_Table())


def _handle(args: argparse.Namespace, c: Client) -> tuple[Any, list[str]]:
    from medaid.cli.base import request_id

    return run(args, c, request_id(args))
