"""The money verdict: conservation across every service, to the fen, read from Redis.

    credits in  ==  Σ registry balances + Σ wallet balances
                  + settled to institutions (account side, net of reversals)
                  + spent from wallets (net of refunds)
                  + paid out to heirs (a deceased person's account, SPEC §5b)
                  + in flight (transfers debited but neither accepted nor returned; lots released
                    but not yet credited back)

Family accounts (SPEC §3b) and 代缴 premiums (§4b) count too: family balances sit beside the
registry balances, a family account's history is its ledger (划拨 in, shares returned, spent,
reversed), premiums paid (net of cancellations) are spent like settlements, and a 划拨 debited but
not yet credited, or a share taken out but not yet credited back, is in flight.

Balances are read from the account/wallet hashes; flows from the ledgers. A balance changed
without its ledger entry, a fen debited twice, or a lot credited without its debit all show up as
drift. Each account's ledger must also replay to its balance, no balance may be negative, and
the harness's own tallies (what it credited and what settlements reported) must match.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.cluster

from medaid.common.redis_client import scan_keys
from medaid.registry.premium_refs import is_money_ref


@dataclass
class MoneyReport:
    credits_in_fen: int = 0
    registry_balances_fen: int = 0
    family_balances_fen: int = 0
    wallet_balances_fen: int = 0
    settled_net_fen: int = 0
    premiums_net_fen: int = 0
    wallet_spent_net_fen: int = 0
    # Personal accounts paid out to heirs on death (SPEC §5b): an outflow, like spending.
    paid_out_fen: int = 0
    in_flight_fen: int = 0
    drift_fen: int = 0
    negative_balances: int = 0
    ledger_mismatches: int = 0
    accounts: int = 0
    family_accounts: int = 0
    wallets: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    tally_mismatches: list[str] = field(default_factory=list)

    @property
    def conserved(self) -> bool:
        return (self.drift_fen == 0 and self.negative_balances == 0 and self.ledger_mismatches == 0
                and self.in_flight_fen >= 0 and not self.tally_mismatches)

    def as_dict(self) -> dict[str, Any]:
        return {
            "conserved": self.conserved, "drift_fen": self.drift_fen, "negative_balances": self.negative_balances,
            "ledger_mismatches": self.ledger_mismatches, "credits_in_fen": self.credits_in_fen,
            "registry_balances_fen": self.registry_balances_fen, "family_balances_fen": self.family_balances_fen,
            "wallet_balances_fen": self.wallet_balances_fen, "settled_net_fen": self.settled_net_fen,
            "premiums_net_fen": self.premiums_net_fen, "wallet_spent_net_fen": self.wallet_spent_net_fen,
            "paid_out_fen": self.paid_out_fen,
            "in_flight_fen": self.in_flight_fen, "accounts": self.accounts, "family_accounts": self.family_accounts,
            "wallets": self.wallets,
            "ledger_kinds_fen": self.kinds, "tally_mismatches": self.tally_mismatches,
        }


def _entries(r: redis.Redis | redis.cluster.RedisCluster, key: bytes) -> list[dict[str, Any]]:
    return [json.loads(x) for x in r.lrange(key, 0, -1)]


def check(r: redis.Redis | redis.cluster.RedisCluster, *, expected_credits_fen: int | None = None,
          expected_settled_fen: int | None = None, before: MoneyReport | None = None) -> MoneyReport:
    """The verdict over everything in Redis. The harness's tallies (what it credited, what its
    settlements reported) are compared with what the ledgers gained since `before` (a check taken
    before the run; none: since the start)."""
    rep = MoneyReport()
    kinds: Counter[str] = Counter()
    for acct_key in scan_keys(r, "reg:*:acct"):  # every master of a cluster
        rep.accounts += 1
        bal = int(r.hget(acct_key, "bal") or 0)
        rep.registry_balances_fen += bal
        if bal < 0:
            rep.negative_balances += 1
        ledger_key = acct_key[: -len(b"acct")] + b"ledger"
        replay = 0
        for e in _entries(r, ledger_key):
            replay += int(e["amount"])
            kinds[str(e["kind"])] += int(e["amount"])
        if replay != bal:
            rep.ledger_mismatches += 1
    for wallet_key in scan_keys(r, "wal:*:wallet"):
        rep.wallets += 1
        bal = int(r.hget(wallet_key, "bal") or 0)
        rep.wallet_balances_fen += bal
        if bal < 0:
            rep.negative_balances += 1
        base = wallet_key[: -len(b"wallet")]
        replay = 0
        for e in _entries(r, base + b"entries"):
            replay += int(e["amount"])
            kinds["WALLET_" + str(e["kind"])] += int(e["amount"])
        lots_remaining = 0
        for raw in r.hvals(base + b"lots"):
            lot = json.loads(raw)
            if int(lot["rem"]) < 0:
                rep.negative_balances += 1
            lots_remaining += int(lot["rem"])
        if replay != bal or lots_remaining != bal:
            rep.ledger_mismatches += 1
    _families(r, rep, kinds)
    rep.kinds = dict(kinds)
    rep.credits_in_fen = sum(v for k, v in kinds.items() if k.startswith("CREDIT_"))
    rep.settled_net_fen = -(kinds["SETTLE_OWN"] + kinds["SETTLE_HELPER"] + kinds["REVERSE_OWN"]
                            + kinds["REVERSE_HELPER"])
    # Family accounts: spent on bills (net of what reversals put back in, or sent to a contributor).
    rep.settled_net_fen += -(kinds["FAMILY_SPENT"] + kinds["FAMILY_REVERSED_IN"] + kinds["FAMILY_REVERSED_OUT"])
    rep.premiums_net_fen = -(kinds["PREMIUM_PAID"] + kinds["PREMIUM_REFUND"] + kinds["FAMILY_PREMIUM"]
                             + kinds["FAMILY_PREMIUM_BACK_IN"] + kinds["FAMILY_PREMIUM_BACK_OUT"])
    family_in_flight = (-(kinds["FAMILY_TRANSFER_OUT"] + kinds["FAMILY_TRANSFER_REFUND"]) - kinds["FAMILY_IN"]
                        - kinds["FAMILY_RETURNED"] - kinds["FAMILY_RETURN"]
                        + kinds["FAMILY_REVERSED_OUT"] + kinds["FAMILY_PREMIUM_BACK_OUT"]
                        - kinds["FAMILY_REVERSAL"] - kinds["FAMILY_PREMIUM_REFUND"])
    rep.wallet_spent_net_fen = -(kinds["WALLET_SPEND"] + kinds["WALLET_PREMIUM"] + kinds["WALLET_SPEND_REFUND"])
    # Onward transfers leave a wallet (XFER_OUT) and come back to it (XFER_BACK) or land as LOT_IN.
    transfers_in_flight = -(kinds["TRANSFER_OUT"] + kinds["TRANSFER_RETURN"] + kinds["WALLET_LOT_IN"]
                            + kinds["WALLET_XFER_OUT"] + kinds["WALLET_XFER_BACK"])
    returns_in_flight = -(kinds["WALLET_LOT_RELEASE"] + kinds["LOT_RETURN"])
    rep.in_flight_fen = transfers_in_flight + returns_in_flight + family_in_flight
    if transfers_in_flight < 0 or returns_in_flight < 0 or family_in_flight < 0:
        rep.tally_mismatches.append("more arrived than was sent (in-flight negative)")
    rep.paid_out_fen = -kinds["INHERITANCE_PAYOUT"]
    rep.drift_fen = (rep.registry_balances_fen + rep.family_balances_fen + rep.wallet_balances_fen
                     + rep.settled_net_fen + rep.premiums_net_fen + rep.wallet_spent_net_fen + rep.paid_out_fen
                     + rep.in_flight_fen) - rep.credits_in_fen
    credits = rep.credits_in_fen - (before.credits_in_fen if before else 0)
    spent = rep.settled_net_fen + rep.wallet_spent_net_fen
    spent -= (before.settled_net_fen + before.wallet_spent_net_fen) if before else 0
    if expected_credits_fen is not None and expected_credits_fen != credits:
        rep.tally_mismatches.append(f"credits: harness {expected_credits_fen} vs ledgers {credits}")
    if expected_settled_fen is not None and expected_settled_fen != spent:
        rep.tally_mismatches.append(f"settled: harness {expected_settled_fen} vs ledgers {spent}")
    return rep


def _families(r: redis.Redis | redis.cluster.RedisCluster, rep: MoneyReport, kinds: Counter[str]) -> None:
    """Family accounts: their balances, and their history read as a ledger (it must replay to the
    balance). A charge whose ref is a premium's money ref (premium_refs.money_ref) is a 代缴, not a bill."""
    for key in scan_keys(r, "reg:*:{fam}:f:*"):
        rep.family_accounts += 1
        bal = int(r.hget(key, "bal") or 0)
        rep.family_balances_fen += bal
        if bal < 0:
            rep.negative_balances += 1
        replay = 0
        for e in _entries(r, key.replace(b":f:", b":hist:", 1)):
            amount, kind, premium = int(e["amount"]), str(e["kind"]), is_money_ref(str(e["ref"]))
            if kind == "TRANSFER_IN":
                kinds["FAMILY_IN"] += amount
                replay += amount
            elif kind in ("RETURNED", "WITHDRAWN"):
                kinds["FAMILY_RETURNED"] -= amount
                replay -= amount
            elif kind == "SPENT":
                kinds["FAMILY_PREMIUM" if premium else "FAMILY_SPENT"] -= amount
                replay -= amount
            elif kind == "REVERSED":
                out = sum(int(part.split(":")[1]) for part in str(e["detail"]).split(",") if part.endswith(":A"))
                kinds["FAMILY_PREMIUM_BACK_IN" if premium else "FAMILY_REVERSED_IN"] += amount
                kinds["FAMILY_PREMIUM_BACK_OUT" if premium else "FAMILY_REVERSED_OUT"] += out
                replay += amount
        if replay != bal:
            rep.ledger_mismatches += 1
