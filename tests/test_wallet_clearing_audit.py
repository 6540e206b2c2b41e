"""A province clearing team's audit of the 医保钱包 (SPEC §5 monthly clearing, §7 conservation).

One month's mixed activity across the November/December boundary: transfers from 河北 and 甘肃
personal accounts to 北京 wallets, an onward transfer on to a 甘肃 wallet, spends at 北京 and 甘肃
institutions (2207 settlements and direct wallet spends), refunds in the same and the next month
(2208 and RefundWalletSpend), a transfer sent back at its 06:00 deadline, a relationship ended by
its sender, and a 代缴 premium paid from a wallet. Then, to the fen:

* each month's clearing lines (sending province → spending province) equal the sum of the individual
  movements the services answered with (spend parts, minus refunds in the refund's month);
* every fen that left a funding employee's personal account is in a wallet lot of that origin, was
  spent (cleared, net of refunds, over all months), or came back.

Same fixtures and people as tests/test_wallet.py.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from medaid.bench import money
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import RESIDENT, rid
from test_wallet import Env, at, settle_bj

INITIAL = {"13": 300_000, "62": 200_000}


@pytest.fixture
def env(national: Any, rdb: Any) -> Env:
    return Env(national, rdb)


class Audit:
    """The individual movements as the services answered them, by clearing month."""

    def __init__(self) -> None:
        self.lines: dict[str, Counter[str]] = {}
        self.counts: dict[str, Counter[str]] = {}
        self.spends: dict[str, tuple[str, str, list[tuple[str, int]]]] = {}

    def spent(self, month: str, spend_id: str, where: str, parts: list[tuple[str, int]]) -> None:
        self.spends[spend_id] = (month, where, parts)
        self._count(month, where, parts, 1)

    def refunded(self, month: str, spend_id: str) -> None:
        _, where, parts = self.spends[spend_id]
        self._count(month, where, parts, -1)

    def _count(self, month: str, where: str, parts: list[tuple[str, int]], sign: int) -> None:
        lines = self.lines.setdefault(month, Counter())
        counts = self.counts.setdefault(month, Counter())
        for origin, fen in parts:
            lines[f"{origin}>{where}"] += sign * fen
        for origin in {o for o, _ in parts}:
            counts[f"{origin}>{where}"] += sign

    def expected(self, month: str) -> list[tuple[str, str, int, int]]:
        lines, counts = self.lines.get(month, Counter()), self.counts.get(month, Counter())
        return sorted((k[:2], k[3:], lines[k], counts[k]) for k in set(lines) | set(counts)
                      if lines[k] or counts[k])


def report(env: Env, month: str) -> list[tuple[str, str, int, int]]:
    r = env.clearing(month)
    lines = sorted((x.sending_province, x.spending_province, x.amount_fen, x.spend_count) for x in r.lines)
    assert r.total_fen == sum(x[2] for x in lines)
    return lines


def parts(resp: Any) -> list[tuple[str, int]]:
    return [(p.sender_province, p.amount_fen) for p in resp.parts]


def new_spend(env: Env, owner: str, audit: Audit) -> tuple[str, dict[str, Any]]:
    """The one spend of `owner`'s wallet the audit has not seen yet (a registry's spend, by its own id)."""
    spends = {k.decode(): json.loads(v) for k, v in env.rdb.hgetall(f"wal:{{w:{owner}}}:spends").items()}
    new = [(k, v) for k, v in spends.items() if k not in audit.spends]
    assert len(new) == 1, new
    return new[0]


def lots_by_origin(env: Env, owners: list[str]) -> Counter[str]:
    held: Counter[str] = Counter()
    for owner in owners:
        for lot in env.wallet(owner).lots:
            held[lot.sender_province] += lot.remaining_fen
    return held


def test_a_month_of_wallet_activity_clears_to_the_fen_and_conserves_every_fen(env, national):
    audit = Audit()
    son = env.person("13", bal=INITIAL["13"])                     # 河北 employee, the 13 funder
    daughter = env.person("62", bal=INITIAL["62"])                # 甘肃 employee, the 62 funder
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    father = env.person("11", itype=RESIDENT, birth="19530101", wallet=True)
    grandchild = env.person("62", itype=RESIDENT, birth="20100101", wallet=False)
    wallets = [son, daughter, mother, father]

    # --- 29 November: funding ------------------------------------------------------------------
    env.clock.set(at(29, 10))
    env.fund(daughter, "62", mother, 40_000, relation=cpb.RELATION_PARENT)
    env.fund(son, "13", mother, 150_000)
    env.fund(son, "13", father, 20_000)
    # The mother passes 70,000 on to her daughter's 甘肃 wallet: her oldest lots, 甘肃's 40,000 then 河北's 30,000.
    onward = env.w.CreateTransfer(wpb.CreateTransferRequest(
        request_id=rid("onward"), sender_id_number=mother, sender_province="11", recipient_id_number=daughter,
        relation=cpb.RELATION_CHILD, amount_fen=70_000, source=wpb.TRANSFER_SOURCE_WALLET,
        verification=env.xfer_req(son, "13", mother, 1).verification)).transfer
    env.accept(onward.transfer_id, daughter)

    # --- 30 November: spends at 北京 and 甘肃, one refunded the same day -----------------------
    env.clock.set(at(30, 11))
    nov_settle = settle_bj(env, mother, 45_000)  # a 2207 at a 北京 hospital: wallet share 45,000
    assert nov_settle.wallet_pay_fen == 45_000
    sid = nov_settle.settlement_id
    share_id, share = new_spend(env, mother, audit)
    assert share["amount"] == 45_000
    audit.spent("202611", share_id, "11", [(p[1], p[2]) for p in share["parts"]])
    s = env.spend(mother, 12_000, request_id="nov-mother-2")
    audit.spent("202611", "nov-mother-2", "11", parts(s))
    for n, fen in ((1, 5_000), (2, 6_000)):
        s = env.spend(father, fen, request_id=f"nov-father-{n}")
        audit.spent("202611", f"nov-father-{n}", "11", parts(s))
    s = env.spend(daughter, 8_000, place="620100", request_id="nov-daughter-1")
    audit.spent("202611", "nov-daughter-1", "62", parts(s))
    env.w.RefundWalletSpend(wpb.RefundWalletSpendRequest(request_id=rid("ref"), spend_id="nov-father-1",
                                                         owner_id_number=father))
    audit.refunded("202611", "nov-father-1")
    # A transfer the father never accepts: back to the son by 06:00 on 1 December.
    env.clock.set(at(30, 15))
    late = env.send(son, "13", father, 7_000)
    env.clock.set(at(30, 23, 59, 59))
    s = env.spend(daughter, 4_000, place="620100", request_id="nov-daughter-2")
    audit.spent("202611", "nov-daughter-2", "62", parts(s))

    # --- December ------------------------------------------------------------------------------
    env.clock.set(at(1, 7, month=12))
    env.maintain()
    assert env.transfer(late.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    # The November 2207 reversed in December (a 2208): counted out of December.
    env.reg("11").ReverseSettlement(rpb.ReverseSettlementRequest(request_id=rid("2208"), settlement_id=sid))
    audit.refunded("202612", share_id)
    # A November wallet spend refunded in December.
    env.w.RefundWalletSpend(wpb.RefundWalletSpendRequest(request_id=rid("ref"), spend_id="nov-daughter-2",
                                                         owner_id_number=daughter))
    audit.refunded("202612", "nov-daughter-2")
    env.clock.set(at(1, 10, month=12))
    s = env.spend(mother, 20_000, request_id="dec-mother-1")
    audit.spent("202612", "dec-mother-1", "11", parts(s))
    # 代缴 from the daughter's wallet (quota her mother passed on) for her resident child.
    premium = env.reg("62").PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=rid("prem"), payer_id_number=daughter, payee_id_number=grandchild, relation=cpb.RELATION_CHILD,
        year="2027", source=ppb.PREMIUM_SOURCE_WALLET)).premium
    prem_id, prem = new_spend(env, daughter, audit)
    assert prem["amount"] == premium.amount_fen > 0
    audit.spent("202612", prem_id, prem["sprov"], [(p[1], p[2]) for p in prem["parts"]])
    # Relationships end: the daughter's with her mother (nothing of it left), the son's with the
    # father (his 河北 lot goes home), then bound again by a new transfer, and ended again.
    env.clock.set(at(2, 10, month=12))
    env.w.EndWalletRelationship(wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=daughter, holder_id_number=mother, requested_by_id_number=daughter))
    env.w.EndWalletRelationship(wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=son, holder_id_number=father, requested_by_id_number=father))
    env.fund(son, "13", father, 9_000)
    s = env.spend(father, 2_000, request_id="dec-father-1")
    audit.spent("202612", "dec-father-1", "11", parts(s))
    # Refunding a spend after its lot's relationship ended: the share goes home, the spend is counted out.
    env.w.RefundWalletSpend(wpb.RefundWalletSpendRequest(request_id=rid("ref"), spend_id="nov-father-2",
                                                         owner_id_number=father))
    audit.refunded("202612", "nov-father-2")
    env.w.EndWalletRelationship(wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=son, holder_id_number=father, requested_by_id_number=son))
    s = env.spend(mother, 3_000, request_id="dec-mother-2")
    audit.spent("202612", "dec-mother-2", "11", parts(s))
    env.maintain()

    # --- The audit ----------------------------------------------------------------------------
    for month in ("202611", "202612"):
        assert report(env, month) == audit.expected(month), month
    cleared: Counter[str] = Counter()
    for month in ("202611", "202612"):
        for src, _, fen, _ in report(env, month):
            cleared[src] += fen
    held = lots_by_origin(env, wallets)
    funders = {"13": son, "62": daughter}
    for prov, funder in funders.items():
        left = INITIAL[prov] - env.bal(prov, funder)
        assert left == held[prov] + cleared[prov], (prov, left, held[prov], cleared[prov])
    assert (held, cleared) == ({"13": 107_000}, {"13": 45_000, "62": 40_000})  # the scenario did what it says
    # The father's relationship ended twice: nothing of it is left in his wallet.
    assert env.wbal(father) == 0
    report_ = money.check(env.rdb)
    assert report_.conserved and report_.in_flight_fen == 0, report_.as_dict()
