"""The settlement record and the consumption record (共济消费记录): one type and one format each.

A settlement record is one Redis hash on the patient's slot, written by every path (the atomic
script on one Redis, the staged steps, the recovery loop) from `SettlementRecord.fields()`, and
read back by `SettlementRecord.parse`. Its states:

    OPEN       the patient's own account is debited; wallet and helper steps may be outstanding
    SETTLED    every step is done or has fallen to cash (the answer is final)
    REVERSING  a reversal is returning the money
    REVERSED   every fen is back where it came from
    RESTORING  a 冲正 (2601) of the reversal is taking the money back (undo.py); it ends SETTLED,
               or REVERSED again when a source no longer covers its share

Money moves of a settlement are marked once per `ref` on every account they touch: the settlement
id at first; after an undoing of a reversal succeeds, that undo's own money ref
(`undo.new_attempt_ref`; `<sid>:u<n>` in a record written before such refs were digests), so that
the next reversal and the next undo each have marks of their own.

The wallet is one service for every province's registry, and a settlement id is the request id of
one registry's client: the wallet's spend of a settlement is made under `wallet_ref`, a digest of
the province and the settlement id (`wallet_ref_of`), so that two provinces' settlements with the
same id are two spends. A record written before has none: its spend is the settlement id.

Helper charges are kept as `id:amount:balance_after` items joined by ',' (balance -1 while the
charge is still outstanding).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any

from medaid.common.rpc import derived_id
from medaid.common.values import text
from medaid.registry.v1 import registry_pb2 as pb

FINAL_STATES = frozenset({"SETTLED", "REVERSING", "REVERSED"})


def wallet_ref_of(province: str, sid: str) -> str:
    """The id under which the wallet spends a settlement's share (see the module doc)."""
    return derived_id("setl", province, sid)


@dataclass(frozen=True)
class ChargeDone:
    helper_id: str
    amount: int
    balance_after: int = -1  # -1: not applied yet

    def encode(self) -> str:
        return f"{self.helper_id}:{self.amount}:{self.balance_after}"

    @classmethod
    def decode(cls, item: str) -> ChargeDone:
        hid, amount, after = item.split(":")
        return cls(hid, int(amount), int(after))


def encode_charges(charges: tuple[ChargeDone, ...]) -> str:
    return ",".join(c.encode() for c in charges)


def decode_charges(raw: str) -> tuple[ChargeDone, ...]:
    return tuple(ChargeDone.decode(x) for x in raw.split(",") if x)


@dataclass(frozen=True)
class SettlementRecord:
    sid: str
    patient: str
    amount: int
    acct_pay: int
    wallet_pay: int
    charges: tuple[ChargeDone, ...]
    cash_pay: int
    helper_reason: str
    wallet_reason: str
    category: int
    institution: str
    place: str
    region: str
    at: int
    state: str = "OPEN"
    own_bal_after: int = -1  # -1: the patient has no personal account
    wallet_bal_after: int = 0
    reversal_id: str = ""
    reversed_at: int = 0
    rev_own_bal_after: int = -1
    # Each charge's helper (contributor) balance after the reversal returned it, in `charges` order;
    # () for a record reversed before the reversal kept them (or never reversed).
    rev_helper_afters: tuple[int, ...] = ()
    money_ref: str = ""  # '': the settlement id (see the module doc)
    restores: int = 0  # attempts to undo a reversal, counting the one in progress
    restore_id: str = ""
    restore_ref: str = ""  # the money ref of the undo in progress (or the last one); see undo.attempt_ref
    restored_at: int = 0
    restore_refused: str = ""  # why the undo in progress (or the last one) gave up
    wallet_ref: str = ""  # the wallet spend's id (`wallet_ref_of`); '': the settlement id

    # POOLED_ACCOUNT: the family account that paid; `charges` then name its contributors, each with
    # their unspent share after (SPEC §3b).
    family_id: str = ""
    # When the reversal in progress (or the last one) began (reverse_begin.lua writes it; not in
    # `fields`, which no script may write back over it): the reversal's time, its record's
    # `reversed_at`, whenever the reversal is finished.
    reversal_started_at: int = 0
    # The 2601 冲正 of the settlement itself that reversed it, or found it reversed (reverse_begin.lua
    # writes it, once; not in `fields`): it stays reversed for good, no undo of a reversal restores it.
    cancelled_by: str = ""

    @property
    def ref(self) -> str:
        """The id the money now charged by this settlement was moved under."""
        return self.money_ref or self.sid

    @property
    def wallet_spend(self) -> str:
        """The id of the wallet's spend of the money now charged (the one a reversal refunds)."""
        return self.money_ref or self.wallet_ref or self.sid

    @property
    def mulaid_pay(self) -> int:
        return sum(c.amount for c in self.charges)

    def fields(self) -> dict[str, str]:
        """The hash fields, as every script writes them."""
        return {
            "state": self.state, "sid": self.sid, "patient": self.patient, "amount": str(self.amount),
            "acct_pay": str(self.acct_pay), "wallet_pay": str(self.wallet_pay),
            "charges": encode_charges(self.charges), "cash_pay": str(self.cash_pay),
            "helper_reason": self.helper_reason, "wallet_reason": self.wallet_reason,
            "category": str(self.category), "institution": self.institution, "place": self.place,
            "region": self.region, "at": str(self.at), "own_bal_after": str(self.own_bal_after),
            "wallet_bal_after": str(self.wallet_bal_after), "reversal_id": self.reversal_id,
            "reversed_at": str(self.reversed_at), "rev_own_bal_after": str(self.rev_own_bal_after),
            "rev_helper_afters": ",".join(str(x) for x in self.rev_helper_afters),
            "money_ref": self.money_ref, "restores": str(self.restores), "restore_id": self.restore_id,
            "restore_ref": self.restore_ref, "restored_at": str(self.restored_at),
            "restore_refused": self.restore_refused, "wallet_ref": self.wallet_ref,
            "family": self.family_id,
        }

    def args(self, *, without: tuple[str, ...] = ()) -> list[str]:
        """The fields as a flat field, value … list for a script's ARGV."""
        fields = self.fields()
        for name in without:
            fields.pop(name, None)
        return list(chain.from_iterable(fields.items()))

    @classmethod
    def parse(cls, raw: dict[Any, Any]) -> SettlementRecord | None:
        """The record read with HGETALL (None for an empty hash)."""
        if not raw:
            return None
        h = {text(k): text(v) for k, v in raw.items()}
        return cls(
            sid=h["sid"], patient=h["patient"], amount=int(h["amount"]), acct_pay=int(h["acct_pay"]),
            wallet_pay=int(h["wallet_pay"]), charges=decode_charges(h.get("charges", "")),
            cash_pay=int(h["cash_pay"]), helper_reason=h["helper_reason"], wallet_reason=h["wallet_reason"],
            category=int(h["category"]), institution=h["institution"], place=h["place"], region=h["region"],
            at=int(h["at"]), state=h["state"], own_bal_after=int(h.get("own_bal_after", "-1")),
            wallet_bal_after=int(h.get("wallet_bal_after", "0")), reversal_id=h.get("reversal_id", ""),
            reversed_at=int(h.get("reversed_at", "0") or 0),
            rev_own_bal_after=int(h.get("rev_own_bal_after", "-1") or -1),
            rev_helper_afters=tuple(int(x) for x in h.get("rev_helper_afters", "").split(",") if x),
            money_ref=h.get("money_ref", ""), restores=int(h.get("restores", "0") or 0),
            restore_id=h.get("restore_id", ""), restore_ref=h.get("restore_ref", ""),
            restored_at=int(h.get("restored_at", "0") or 0),
            restore_refused=h.get("restore_refused", ""), wallet_ref=h.get("wallet_ref", ""),
            family_id=h.get("family", ""), reversal_started_at=int(h.get("reversal_started_at", "0") or 0),
            cancelled_by=h.get("cancelled_by", ""),
        )

    def settled(self, *, wallet_pay: int, wallet_after: int, wallet_reason: str,
                charges: tuple[ChargeDone, ...], helper_reason: str) -> SettlementRecord:
        """The record once the wallet and helper steps are done; what they could not pay is cash."""
        cash = self.amount - self.acct_pay - wallet_pay - sum(c.amount for c in charges)
        out = replace(self, state="SETTLED", wallet_pay=wallet_pay, wallet_bal_after=wallet_after,
                      wallet_reason=wallet_reason, charges=charges, helper_reason=helper_reason, cash_pay=cash)
        out.check()
        return out

    def check(self) -> None:
        parts = (self.acct_pay, self.wallet_pay, self.mulaid_pay, self.cash_pay)
        if min(parts) < 0 or sum(parts) != self.amount:
            raise AssertionError(f"settlement {self.sid} does not add up: {parts} vs {self.amount}")

    def result(self) -> pb.SettlementResult:
        """The answer of Settle and of its replays (SETTLED even after a reversal: a replay returns
        the first answer), built from the record only. GetSettlement reports the state now."""
        first = self.charges[0] if self.charges else None
        return pb.SettlementResult(
            settlement_id=self.sid, patient_id_number=self.patient, amount_fen=self.amount,
            acct_pay_fen=self.acct_pay, wallet_pay_fen=self.wallet_pay, mulaid_pay_fen=self.mulaid_pay,
            helper_id_number=first.helper_id if first else "", cash_pay_fen=self.cash_pay,
            balance_after_fen=max(self.own_bal_after, 0), wallet_balance_after_fen=self.wallet_bal_after,
            helper_balance_after_fen=max(first.balance_after, 0) if first else 0,
            helper_reason=self.helper_reason, wallet_reason=self.wallet_reason,
            category=self.category,  # type: ignore[arg-type]
            institution_code=self.institution, settled_at_unix_ms=self.at,
            state="SETTLED",
            helper_charges=[pb.HelperCharge(helper_id_number=c.helper_id, amount_fen=c.amount,
                                            balance_after_fen=max(c.balance_after, 0)) for c in self.charges],
            insured_region=self.region, settled_place=self.place, family_id=self.family_id,
        )


def charge_marks(sid: str, charges: tuple[ChargeDone, ...]) -> list[str]:
    """The mark under which each charge of a record is taken from its helper's account, once: the
    settlement id for a helper's first charge. A helper whose charge could not be taken (the mark is
    VOID for good) and who is asked again for what they still hold (staged.py) is charged under a
    mark of its own per ask, a digest of the settlement id and the ask's number."""
    seen: dict[str, int] = {}
    marks = []
    for c in charges:
        n = seen.get(c.helper_id, 0)
        seen[c.helper_id] = n + 1
        marks.append(sid if n == 0 else derived_id("setlask", sid, str(n)))
    return marks


def consumption_field(sid: str, helper_id: str) -> str:
    """A consumption record's name in a person's consumption hash and index (one per helper)."""
    return f"{sid}|{helper_id}"


# json.dumps with separators of its own builds an encoder per call: one, made once, writes the same text.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def consumption_json(rec: SettlementRecord, charge: ChargeDone, role: str, state: str) -> str:
    """The consumption record kept for the helper (role HELPER) and the member (role MEMBER)."""
    return _COMPACT.encode({
        "sid": rec.sid, "role": role, "helper": charge.helper_id, "member": rec.patient, "mulaid": charge.amount,
        "category": rec.category, "institution": rec.institution, "at": rec.at, "state": state,
    })


def consumption_pb(raw: Any) -> pb.ConsumptionRecord:
    d = json.loads(text(raw))
    return pb.ConsumptionRecord(
        settlement_id=d["sid"], role=d["role"], helper_id_number=d["helper"], member_id_number=d["member"],
        mulaid_pay_fen=d["mulaid"], category=d["category"], institution_code=d["institution"],
        at_unix_ms=d["at"], state=d["state"],
    )
