"""Commands of the national 医保钱包: wallets, transfers, premiums, clearing, maintenance."""

from __future__ import annotations

import argparse
from typing import Any

from medaid.cli.base import (
    DEADLINE_S,
    RELATIONS,
    Client,
    Result,
    enum_name,
    enum_value,
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
from medaid.common.v1 import common_pb2 as cpb
from medaid.wallet.v1 import wallet_pb2 as wpb


def _transfer_line(t: wpb.Transfer) -> str:
    state = enum_name(wpb.TransferState, "TRANSFER_STATE_", t.state)
    line = (f"transfer {t.transfer_id}: {yuan(t.amount_fen)} from sender {t.sender_id_number} ({t.sender_province}) "
            f"to recipient {t.recipient_id_number}, the sender's {relation(t.relation)}: {state}")
    if t.failure_reason:
        line += f" ({t.failure_reason})"
    elif state == "PENDING_ACCEPT":
        line += f", accept before {shanghai_time(t.expires_at_unix_ms)} Beijing time"
    return line


def open_wallet(args: argparse.Namespace, c: Client) -> Result:
    req = wpb.OpenWalletRequest(request_id=request_id(args), owner_id_number=args.owner,
                                province=args.use_place[:2], use_place_admdvs=args.use_place,
                                real_name=face(args.face))
    if args.opened_by:
        req.opened_by_id_number = args.opened_by
        req.opened_by_relation = enum_value(cpb.Relation, "RELATION_", args.opened_by_relation or "")
    r = c.wallet().OpenWallet(req, timeout=DEADLINE_S)
    return r, [f"wallet opened for {r.wallet.owner_id_number}, use-place {r.wallet.use_place_admdvs}"]


def wallet(args: argparse.Namespace, c: Client) -> Result:
    r = c.wallet().GetWallet(wpb.GetWalletRequest(owner_id_number=args.owner), timeout=DEADLINE_S)
    lines = [f"wallet of {r.wallet.owner_id_number} at {r.wallet.use_place_admdvs}: {yuan(r.wallet.balance_fen)}"]
    lines += [f"  lot {lot.transfer_id} from {lot.sender_id_number} ({lot.sender_province}): "
              f"{yuan(lot.remaining_fen)} left of {yuan(lot.amount_fen)}" for lot in r.lots]
    return r, lines


def wallet_entries(args: argparse.Namespace, c: Client) -> Result:
    r = c.wallet().ListWalletEntries(wpb.ListWalletEntriesRequest(owner_id_number=args.owner, limit=args.limit,
                                                                  page_token=args.page_token), timeout=DEADLINE_S)
    return r, [f"wallet entries of {args.owner}: {len(r.entries)}"] + [
        f"  #{e.seq} {shanghai_time(e.at_unix_ms)} {e.kind} {yuan(e.amount_fen)} → {yuan(e.balance_after_fen)}"
        f" ({e.ref})" for e in r.entries] + _next_page("entries", r.next_page_token)


def transfer(args: argparse.Namespace, c: Client) -> Result:
    r = c.wallet().CreateTransfer(wpb.CreateTransferRequest(
        request_id=request_id(args), sender_id_number=args.sender, sender_province=province_of(args, args.sender, c),
        recipient_id_number=args.recipient, relation=enum_value(cpb.Relation, "RELATION_", args.relation),
        amount_fen=parse_amount(args.amount), verification=face(args.face),
        source=wpb.TRANSFER_SOURCE_WALLET if args.from_wallet else wpb.TRANSFER_SOURCE_PERSONAL_ACCOUNT),
        timeout=DEADLINE_S)
    return r, [_transfer_line(r.transfer)]


def accept(args: argparse.Namespace, c: Client) -> Result:
    r = c.wallet().AcceptTransfer(wpb.AcceptTransferRequest(
        request_id=request_id(args), transfer_id=args.transfer_id, recipient_id_number=args.recipient),
        timeout=DEADLINE_S)
    return r, [_transfer_line(r.transfer), f"wallet balance {yuan(r.wallet.balance_fen)}"]


def transfers_in(args: argparse.Namespace, c: Client) -> Result:
    r = c.wallet().ListIncomingTransfers(wpb.ListIncomingTransfersRequest(
        recipient_id_number=args.recipient, limit=args.limit, page_token=args.page_token), timeout=DEADLINE_S)
    return r, ([_transfer_line(t) for t in r.transfers] or [f"no transfers to {args.recipient}"]) + \
        _next_page("transfers", r.next_page_token)


def transfers_out(args: argparse.Namespace, c: Client) -> Result:
    r = c.wallet().ListOutgoingTransfers(wpb.ListOutgoingTransfersRequest(
        sender_id_number=args.sender, limit=args.limit, page_token=args.page_token), timeout=DEADLINE_S)
    return r, ([_transfer_line(t) for t in r.transfers] or [f"no transfers from {args.sender}"]) + \
        _next_page("transfers", r.next_page_token)


def _next_page(what: str, token: str) -> list[str]:
    return [f"older {what}: the same command with --page-token {token}"] if token else []


def transfer_status(args: argparse.Namespace, c: Client) -> Result:
    r = c.wallet().GetTransfer(wpb.GetTransferRequest(transfer_id=args.transfer_id), timeout=DEADLINE_S)
    return r, [_transfer_line(r.transfer)]


def premium(args: argparse.Namespace, c: Client) -> Result:
    r = c.wallet().PayPremium(wpb.PayPremiumRequest(
        request_id=request_id(args), owner_id_number=args.owner, amount_fen=parse_amount(args.amount),
        category=enum_value(cpb.Category, "CATEGORY_", args.category), period=args.period), timeout=DEADLINE_S)
    return r, [f"paid {yuan(r.paid_fen)} {args.category.upper()} {args.period} from the wallet; "
               f"balance {yuan(r.balance_after_fen)}"]


def clearing(args: argparse.Namespace, c: Client) -> Result:
    r = c.wallet().GetClearingReport(wpb.GetClearingReportRequest(month=wire_month(args.month)), timeout=DEADLINE_S)
    lines = [f"clearing {r.month}: total {yuan(r.total_fen)}"]
    lines += [f"  {x.sending_province} → {x.spending_province}: {yuan(x.amount_fen)} ({x.spend_count} spends)"
              for x in r.lines]
    return r, lines


def use_place(args: argparse.Namespace, c: Client) -> Result:
    r = c.wallet().ChangeUsePlace(wpb.ChangeUsePlaceRequest(
        request_id=request_id(args), owner_id_number=args.owner, use_place_admdvs=args.use_place),
        timeout=DEADLINE_S)
    return r, [f"use-place of {r.wallet.owner_id_number} is now {r.wallet.use_place_admdvs}"]


def end_relationship(args: argparse.Namespace, c: Client) -> Result:
    r = c.wallet().EndWalletRelationship(wpb.EndWalletRelationshipRequest(
        request_id=request_id(args), sender_id_number=args.sender, holder_id_number=args.holder,
        requested_by_id_number=args.by or args.holder), timeout=DEADLINE_S)
    return r, [f"relationship ended: {yuan(r.returned_fen)} home to the sender, "
               f"{r.transfers_returned} transfers returned"]


def maintenance(args: argparse.Namespace, c: Client) -> Result:
    r = c.wallet().RunMaintenance(wpb.RunMaintenanceRequest(), timeout=DEADLINE_S)
    if not r.ran:
        return r, ["another wallet replica holds the sweeper lock; nothing ran here"]
    deferred = f", {r.deferred} left for a later pass (the wallet's warning lines say why)" if r.deferred else ""
    return r, [f"maintenance: {r.expired} transfers returned after their deadline, {r.recovered} recovered{deferred}"]


def register(add: Any) -> None:
    sp = add("open-wallet", open_wallet, "open a 医保钱包 (real-name verified) with its use-place")
    sp.add_argument("owner", type=id_number, metavar="OWNER")
    sp.add_argument("use_place", metavar="USE_PLACE", help="6-digit admdvs of the owner's insured province")
    sp.add_argument("--face", required=True, metavar="ATTESTATION", help="the owner's face-verification attestation")
    sp.add_argument("--opened-by", type=id_number, metavar="ID_NUMBER", help="a near-kin opening it for the owner")
    sp.add_argument("--opened-by-relation", metavar="RELATION",
                    help="with --opened-by: the opener is OWNER's …: " + " | ".join(RELATIONS))

    sp = add("wallet", wallet, "a wallet: balance and quota lots, oldest first")
    sp.add_argument("owner", type=id_number, metavar="OWNER")

    sp = add("wallet-entries", wallet_entries, "a wallet's entries, newest first (lots in, spends, premiums, returns)")
    sp.add_argument("owner", type=id_number, metavar="OWNER")
    sp.add_argument("--limit", type=int, default=0, help="entries a page (0 = 50, at most 500)")
    sp.add_argument("--page-token", default="", help="the next page: the token the page before printed")

    sp = add("transfer", transfer, "move account money into a near-kin's wallet in another province; SENDER first, "
                                   "then RECIPIENT; RELATION reads 'RECIPIENT is SENDER's RELATION'")
    sp.add_argument("sender", type=id_number, metavar="SENDER", help="an employee with a personal account")
    sp.add_argument("recipient", type=id_number, metavar="RECIPIENT", help="a near-kin with an open wallet")
    sp.add_argument("relation", metavar="RELATION", help="RECIPIENT is SENDER's …: " + " | ".join(RELATIONS))
    sp.add_argument("amount", metavar="AMOUNT", help="yuan (1000.00) or fen; at most 2,000.00 a transfer")
    sp.add_argument("--face", required=True, metavar="ATTESTATION",
                    help="the sender's face-verification attestation id")
    sp.add_argument("--province", help="the sender's registry (default: the one the person directory names, else "
                                       "the first two digits of SENDER)")
    sp.add_argument("--from-wallet", action="store_true",
                    help="an onward transfer: from SENDER's wallet instead of their personal account")

    sp = add("accept", accept, "the recipient accepts a transfer: it becomes a quota lot in their wallet")
    sp.add_argument("recipient", type=id_number, metavar="RECIPIENT")
    sp.add_argument("transfer_id", metavar="TRANSFER_ID")

    sp = add("transfers-in", transfers_in, "the transfers to RECIPIENT, newest first (pending ones to accept)")
    sp.add_argument("recipient", type=id_number, metavar="RECIPIENT")
    sp.add_argument("--limit", type=int, default=0, help="transfers a page (0 = 20, at most 100)")
    sp.add_argument("--page-token", default="", help="the next page: the token the page before printed")

    sp = add("transfers-out", transfers_out, "the transfers SENDER started, newest first, in whatever state")
    sp.add_argument("sender", type=id_number, metavar="SENDER")
    sp.add_argument("--limit", type=int, default=0, help="transfers a page (0 = 20, at most 100)")
    sp.add_argument("--page-token", default="", help="the next page: the token the page before printed")

    sp = add("transfer-status", transfer_status, "one transfer and its state")
    sp.add_argument("transfer_id", metavar="TRANSFER_ID")

    sp = add("premium", premium, "the owner's long-term-care premium from their wallet (a 居民医保 premium: "
             "premium-pay OWNER OWNER self YEAR --source wallet)")
    sp.add_argument("owner", type=id_number, metavar="OWNER")
    sp.add_argument("amount", metavar="AMOUNT", help="yuan or fen")
    sp.add_argument("--category", default="LONG_TERM_CARE_PREMIUM", help="LONG_TERM_CARE_PREMIUM")
    sp.add_argument("--period", required=True, help="contribution year YYYY")

    sp = add("clearing", clearing, "wallet clearing per (sending → spending province) for a month")
    sp.add_argument("month", type=month, metavar="MONTH", help="YYYY-MM (YYYYMM also read), Beijing time")

    sp = add("use-place", use_place, "使用地变更: change where OWNER's wallet pays, effective at once")
    sp.add_argument("owner", type=id_number, metavar="OWNER")
    sp.add_argument("use_place", metavar="USE_PLACE", help="6-digit admdvs of the owner's insured province")

    sp = add("end-relationship", end_relationship, "end a wallet relationship, SENDER first, then HOLDER: the "
                                                   "sender's unspent quota goes home")
    sp.add_argument("sender", type=id_number, metavar="SENDER")
    sp.add_argument("holder", type=id_number, metavar="HOLDER", help="the wallet holding SENDER's quota")
    sp.add_argument("--by", type=id_number, metavar="ID_NUMBER", help="who asks: SENDER or HOLDER (default HOLDER)")

    add("maintenance", maintenance, "run the wallet's expiry sweeper and recovery pass now")
